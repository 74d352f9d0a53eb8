//! `tend run` end to end: a real Git repository (git CLI), the controller in
//! this process, real services (python3 http.server) on the local transport,
//! a real Prometheus. No root needed: the point is the loop itself.

use super::common::http::{eventually, free_port, get_json, http, post_as};
use super::common::repo::{
    burst_while_one_runs, converged, metrics, service, trigger_and_wait, Repo, NEVER, TOKEN,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;
use tend::config::{Config, NotificationSink, SinkKind};
use tend::controller;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_converges_after_a_trigger_and_after_the_next_tick_without_one() {
    let fleet = Repo::new("ctl-commit", &["alpha", "beta"]);
    fleet.commit(&fleet.manifests("1", ""), "v1");
    let r = controller::spawn(fleet.config(NEVER)).await.unwrap();
    converged(&r, &fleet, "1").await;

    let rev2 = fleet.commit(&fleet.manifests("2", ""), "v2");
    let answer = trigger_and_wait(&r).await;
    assert_eq!(answer["reconcile"]["revision"], rev2.as_str(), "{answer}");
    let st = converged(&r, &fleet, "2").await;
    assert_eq!(st["source"]["revision"], rev2.as_str());
    let last = &service(&st, "alpha").unwrap()["last_action"];
    assert_eq!(last["kind"], "upgrade", "{last}");
    assert_eq!(last["result"], "succeeded", "{last}");
    r.stop().await;

    // Now on a schedule: a commit and no trigger.
    let r = controller::spawn(fleet.config("*/2 * * * * *"))
        .await
        .unwrap();
    converged(&r, &fleet, "2").await;
    let rev3 = fleet.commit(&fleet.manifests("3", ""), "v3");
    let st = converged(&r, &fleet, "3").await;
    assert_eq!(st["source"]["revision"], rev3.as_str());
    let by = st["reconciles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["revision"] == rev3.as_str() && !x["actions"].as_array().unwrap().is_empty())
        .expect("the reconcile that applied v3");
    assert_eq!(by["trigger"], "schedule", "{by}");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_commit_keeps_the_last_good_revision_and_says_why() {
    let fleet = Repo::new("ctl-invalid", &["gamma"]);
    let good = fleet.commit(&fleet.manifests("1", ""), "v1");
    let r = controller::spawn(fleet.config(NEVER)).await.unwrap();
    converged(&r, &fleet, "1").await;
    assert!(metrics(&r).await.contains("tend_manifests_valid 1"));

    // Version 2 with a misspelt field: refused as a whole.
    let bad = fleet.commit(&fleet.manifests("2", "  prots: [1]\n"), "typo");
    let answer = trigger_and_wait(&r).await;
    assert_eq!(answer["reconcile"]["revision"], good.as_str(), "{answer}");
    let st = get_json(r.addr, "/status").await;
    let src = &st["source"];
    assert_eq!(src["manifests_valid"], false, "{src}");
    assert_eq!(src["revision"], good.as_str());
    assert_eq!(src["newest"], bad.as_str());
    let err = src["errors"][0].as_str().unwrap_or_default();
    assert!(
        err.starts_with("fleet/fleet.yaml:") && err.contains("prots"),
        "{src}"
    );
    let line: usize = err
        .split(':')
        .nth(1)
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    assert!(line > 1, "{err}");
    let m = metrics(&r).await;
    assert!(m.contains("tend_manifests_valid 0"), "{m}");
    assert!(
        m.contains(&format!("tend_source_info{{revision=\"{good}\"")),
        "{m}"
    );
    // Still running the good revision's version.
    let g = service(&st, "gamma").unwrap();
    assert_eq!(
        (g["status"].as_str(), g["observed_version"].as_str()),
        (Some("in_sync"), Some("1"))
    );

    let fixed = fleet.commit(&fleet.manifests("2", ""), "fix");
    trigger_and_wait(&r).await;
    let st = converged(&r, &fleet, "2").await;
    assert_eq!(st["source"]["revision"], fixed.as_str());
    assert!(metrics(&r).await.contains("tend_manifests_valid 1"));
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_killed_by_hand_is_restarted_on_the_next_tick() {
    let fleet = Repo::new("ctl-kill", &["delta"]);
    fleet.commit(&fleet.manifests("1", ""), "v1");
    let r = controller::spawn(fleet.config("* * * * * *"))
        .await
        .unwrap();
    converged(&r, &fleet, "1").await;
    let pid = fleet.pid("delta").expect("recorded pid");
    let seen = get_json(r.addr, "/status").await["reconciles"][0]["id"]
        .as_u64()
        .unwrap();
    // SAFETY: kill has no memory preconditions; the pid is the test's service.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let by = eventually(120, "a scheduled reconcile that restarts delta", || async {
        let st = get_json(r.addr, "/status").await;
        st["reconciles"]
            .as_array()?
            .iter()
            .find(|x| {
                x["id"].as_u64().unwrap_or(0) > seen
                    && x["actions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|a| a["service"] == "delta")
            })
            .cloned()
    })
    .await;
    assert_eq!(by["trigger"], "schedule", "{by}");
    assert_eq!(by["actions"][0]["result"], "succeeded", "{by}");
    let st = converged(&r, &fleet, "1").await;
    assert_ne!(fleet.pid("delta"), Some(pid));
    assert_eq!(service(&st, "delta").unwrap()["running"], true);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_without_the_token_gets_401_and_a_forged_webhook_403() {
    let fleet = Repo::new("ctl-auth", &["eps"]);
    fleet.commit(&fleet.manifests("1", ""), "v1");
    let secret = fleet.tmp.path().join("hook-secret");
    std::fs::write(&secret, "hook-s3cret\n").unwrap();
    let cfg = Config {
        webhook_secret_file: Some(secret),
        ..fleet.config(NEVER)
    };
    let r = controller::spawn(cfg).await.unwrap();
    let (code, _) = http(r.addr, "POST", "/reconcile", &[], b"").await;
    assert_eq!(code, 401);
    let (code, _) = post_as(r.addr, "/reconcile", "Bearer nope").await;
    assert_eq!(code, 401);
    let (code, body) = post_as(r.addr, "/reconcile", &format!("Bearer {TOKEN}")).await;
    assert_eq!(code, 202, "{body}");

    let payload = br#"{"ref":"refs/heads/main"}"#;
    let (code, _) = http(
        r.addr,
        "POST",
        "/webhook",
        &[("X-Hub-Signature-256", "sha256=00ff")],
        payload,
    )
    .await;
    assert_eq!(code, 403);
    let sig = hmac_sha256_hex(b"hook-s3cret", payload);
    let gh = format!("sha256={sig}");
    let (code, body) = http(
        r.addr,
        "POST",
        "/webhook",
        &[("X-Hub-Signature-256", &gh)],
        payload,
    )
    .await;
    assert_eq!(code, 202, "{body}");
    let (code, body) = http(
        r.addr,
        "POST",
        "/webhook",
        &[("X-Gitea-Signature", &sig)],
        payload,
    )
    .await;
    assert_eq!(code, 202, "{body}");
    r.stop().await;
}

/// HMAC-SHA256 from Python's standard library: the server is checked against
/// an independent implementation.
fn hmac_sha256_hex(key: &[u8], msg: &[u8]) -> String {
    let script = format!(
        "import hmac,hashlib,sys; print(hmac.new({:?}.encode(), sys.stdin.buffer.read(), hashlib.sha256).hexdigest())",
        std::str::from_utf8(key).unwrap()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(msg)?;
            c.wait_with_output()
        })
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_triggers_in_a_burst_cause_at_most_two_reconciles() {
    let fleet = Repo::new("ctl-burst", &["zeta"]);
    fleet.commit(&fleet.manifests("1", ""), "v1");
    let r = controller::spawn(fleet.config(NEVER)).await.unwrap();
    converged(&r, &fleet, "1").await;
    // The held reconcile's install step keeps the whole burst in one wait.
    let (ids, ran) = burst_while_one_runs(&r, &fleet, 9, 111).await;
    assert_eq!(
        ids.len(),
        1,
        "the burst joined one pending reconcile: {ids:?}"
    );
    assert!(ran <= 2, "{ran} reconciles for 1000 triggers");
    assert!(metrics(&r)
        .await
        .contains("tend_triggers_total{trigger=\"api\"} 1000"));
    converged(&r, &fleet, "2").await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_in_sync_for_every_service() {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        if std::env::var("TEND_E2E").as_deref() == Ok("required") {
            panic!("prometheus is not installed");
        }
        println!("skipped: prometheus is not installed");
        return;
    }
    let fleet = Repo::new("ctl-prom", &["eta", "theta"]);
    fleet.commit(&fleet.manifests("1", ""), "v1");
    let r = controller::spawn(fleet.config(NEVER)).await.unwrap();
    converged(&r, &fleet, "1").await;
    let dir = fleet.tmp.path().join("prom");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: tend\n    static_configs: [{{targets: ['{}']}}]\n",
            r.addr
        ),
    )
    .unwrap();
    let port = free_port();
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start prometheus");
    let paddr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let found = eventually(
        120,
        "prometheus has tend_service_in_sync for every service",
        || async {
            let (code, body) = match tokio::net::TcpStream::connect(paddr).await {
                Ok(_) => {
                    http(
                        paddr,
                        "GET",
                        "/api/v1/query?query=tend_service_in_sync",
                        &[],
                        b"",
                    )
                    .await
                }
                Err(_) => return None,
            };
            if code != 200 {
                return None;
            }
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let got: BTreeMap<String, String> = v["data"]["result"]
                .as_array()?
                .iter()
                .map(|x| {
                    (
                        x["metric"]["service"].as_str().unwrap_or("").to_string(),
                        x["value"][1].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect();
            fleet
                .services
                .keys()
                .all(|s| got.contains_key(s))
                .then_some(got)
        },
    )
    .await;
    let _ = prom.kill();
    let _ = prom.wait();
    for s in fleet.services.keys() {
        assert_eq!(found[s], "1", "{found:?}");
    }
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_reach_a_local_receiver_without_secrets() {
    let var = "TEND_E2E_NOTIFY_SECRET";
    let secret_value = "sup3r-s3cret-value-42";
    std::env::set_var(var, secret_value);
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", receiver.local_addr().unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = receiver.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
                            let _ = tx.send(body.to_string());
                            break;
                        }
                    }
                }
            });
        }
    });

    let fleet = Repo::new("ctl-notify", &["iota"]);
    let extra = format!("  env: {{API_KEY: {{fromEnv: {var}}}}}\n");
    fleet.commit(&fleet.manifests("1", &extra), "v1");
    let cfg = Config {
        notifications: vec![NotificationSink {
            kind: SinkKind::Generic,
            url,
        }],
        ..fleet.config(NEVER)
    };
    let r = controller::spawn(cfg).await.unwrap();
    converged(&r, &fleet, "1").await;
    let body = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let b = rx.recv().await.expect("receiver");
            let v: serde_json::Value = serde_json::from_str(&b).unwrap();
            if v["kind"] == "applied" {
                return (b, v);
            }
        }
    })
    .await
    .expect("an applied notification");
    let (raw, v) = body;
    assert_eq!(v["actions"][0]["service"], "iota", "{v}");
    assert_eq!(v["actions"][0]["result"], "succeeded", "{v}");
    assert!(!raw.contains(secret_value), "{raw}");
    let (_, status) = http(r.addr, "GET", "/status", &[], b"").await;
    assert!(!status.contains(secret_value));
    assert!(!metrics(&r).await.contains(secret_value));
    let (_, page) = http(r.addr, "GET", "/", &[], b"").await;
    assert!(!page.contains(secret_value));
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_held_by_a_stranger_is_drifted_on_the_status_page() {
    let fleet = Repo::new("ctl-page", &["kappa"]);
    let port = fleet.services["kappa"];
    let mut stranger = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(fleet.tmp.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3");
    eventually(30, "the stranger listens", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    fleet.commit(&fleet.manifests("1", ""), "v1");
    let r = controller::spawn(fleet.config(NEVER)).await.unwrap();
    let st = eventually(120, "kappa reported drifted", || async {
        let st = get_json(r.addr, "/status").await;
        service(&st, "kappa")
            .is_some_and(|s| s["status"] == "drifted")
            .then_some(st)
    })
    .await;
    let k = service(&st, "kappa").unwrap();
    assert!(
        k["reasons"].as_array().unwrap().iter().any(|x| x == "port"),
        "{k}"
    );
    let (code, page) = http(r.addr, "GET", "/", &[], b"").await;
    assert_eq!(code, 200);
    assert!(
        page.contains("<tr class=\"drifted\" id=\"svc-ctl-page-kappa\""),
        "{page}"
    );
    let m = metrics(&r).await;
    assert!(
        m.contains("tend_service_in_sync{host=\"ctl-page\",service=\"kappa\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("tend_service_drift{host=\"ctl-page\",service=\"kappa\",reason=\"port\"} 1"),
        "{m}"
    );
    let _ = stranger.kill();
    let _ = stranger.wait();
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_never_answers_backs_off_and_does_not_hold_up_the_rest() {
    // A TCP port that accepts and then says nothing: an SSH handshake hangs.
    let tarpit = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tarpit_port = tarpit.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = tarpit.accept().await {
            held.push(s);
        }
    });
    let fleet = Repo::new("ctl-iso", &["lambda"]);
    let pin = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGnst4mKePMqZT/3w8l/8WAIgdmrLutHhTtjJNp63fL6";
    let hang = format!(
        "---\napiVersion: tend/v1\nkind: Host\nmetadata: {{name: ctl-iso-hang}}\nspec:\n  address: 127.0.0.1\n  port: {tarpit_port}\n  hostKeys: [\"{pin}\"]\n"
    );
    fleet.commit(&format!("{}{hang}", fleet.manifests("1", "")), "v1");
    let cfg = Config {
        host_timeout: Duration::from_secs(3),
        ..fleet.config(NEVER)
    };
    let r = controller::spawn(cfg).await.unwrap();
    let st = converged(&r, &fleet, "1").await;
    let hang = st["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "ctl-iso-hang")
        .unwrap()
        .clone();
    assert_eq!(hang["up"], false, "{hang}");
    assert!(hang["backoff_until"].is_number(), "{hang}");
    let m = metrics(&r).await;
    assert!(m.contains("tend_host_up{host=\"ctl-iso-hang\"} 0"), "{m}");
    assert!(m.contains("tend_host_up{host=\"ctl-iso\"} 1"), "{m}");
    assert!(
        m.contains("tend_reconciles_total{trigger=\"startup\",result=\"partial\"} 1"),
        "{m}"
    );
    r.stop().await;
}
