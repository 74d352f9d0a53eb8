//! Gates on `tend run` end to end (issue 17): sync windows hold drift, the
//! ledger records what reconciles did. A real Git repository, the controller
//! in this process, python3 http.server services on the local transport.

use super::common::http::{eventually, get_json, http};
use super::common::repo::{converged, metrics, service, trigger_and_wait, Repo, NEVER, TOKEN};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tend::controller;
use tend::window::{WindowKind, WindowSpec};

/// A 6-field cron (seconds first, UTC) that fired `ago` seconds ago and
/// fires next a day later: a window that opened just now, deterministically.
fn cron_fired_ago(ago: u64) -> (String, u64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let t = now - ago;
    let (s, m, h) = (t % 60, (t / 60) % 60, (t / 3600) % 24);
    (format!("{s} {m} {h} * * *"), t)
}

fn deny(name: &str, schedule: &str, secs: u64, manual_override: bool) -> WindowSpec {
    WindowSpec {
        name: name.into(),
        kind: WindowKind::Deny,
        schedule: schedule.into(),
        duration: Duration::from_secs(secs),
        timezone: "UTC".into(),
        hosts: vec![],
        services: vec![],
        manual_override,
    }
}

async fn post_json(addr: std::net::SocketAddr, path: &str, body: &str) -> (u16, String) {
    let auth = format!("Bearer {TOKEN}");
    http(
        addr,
        "POST",
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_inside_a_deny_window_is_reported_not_acted_on_and_converges_when_it_ends() {
    let fleet = Repo::new("gate-deny", &["alpha", "beta"]);
    fleet.commit(&fleet.manifests("1", ""), "v1");
    let r = controller::spawn(fleet.config(NEVER)).await.unwrap();
    trigger_and_wait(&r).await;
    converged(&r, &fleet, "1").await;
    r.stop().await;

    // Version 2 in Git while a deny window for alpha is open: a window that
    // opened a second ago for 30 s, reconciling every second. beta, on the
    // same host, is not in it.
    fleet.commit(&fleet.manifests("2", ""), "v2");
    let (cron, opened) = cron_fired_ago(1);
    let closes = opened + 30;
    let mut cfg = fleet.config("* * * * * *");
    let mut window = deny("freeze", &cron, 30, false);
    window.services = vec!["alpha".into()];
    cfg.windows = vec![window];
    let r = controller::spawn(cfg).await.unwrap();

    let held = eventually(
        60,
        "alpha held by the deny window, beta upgraded",
        || async {
            let st = get_json(r.addr, "/status").await;
            let s = service(&st, "alpha")?.clone();
            let beta_done = service(&st, "beta")?["observed_version"] == "2";
            (beta_done
                && s["blocked"]
                    .as_str()
                    .is_some_and(|b| b.starts_with("held by deny window `freeze` until")))
            .then_some((s, st))
        },
    )
    .await;
    let (alpha, st) = held;
    assert_eq!(alpha["status"], "drifted", "{alpha}");
    assert_eq!(alpha["observed_version"], "1", "{alpha}");
    let w = &st["windows"][0];
    assert_eq!(
        (w["name"].as_str(), w["active"].as_bool()),
        (Some("freeze"), Some(true)),
        "{w}"
    );
    let m = metrics(&r).await;
    assert!(
        m.contains("tend_drift_held_by_window{window=\"freeze\"} 1"),
        "{m}"
    );
    // A manual override does not pass a window without `manual_override`.
    let (code, body) = post_json(
        r.addr,
        "/reconcile?wait=true",
        r#"{"override_window":true}"#,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let rec = &v["reconcile"];
    if (rec["started_at"].as_f64().unwrap_or(0.0) as u64) < closes {
        assert!(
            rec["actions"].as_array().is_some_and(|a| a.is_empty()),
            "{rec}"
        );
        assert!(rec.get("overrode").is_none(), "{rec}");
    }

    // Once the window has ended, the next scheduled reconcile converges it.
    let st = converged(&r, &fleet, "2").await;
    let by = st["reconciles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| {
            x["actions"]
                .as_array()
                .is_some_and(|a| a.iter().any(|a| a["service"] == "alpha"))
        })
        .expect("the reconcile that upgraded alpha")
        .clone();
    assert!(
        by["started_at"].as_f64().unwrap_or(0.0) + 1.0 >= closes as f64,
        "acted at {} inside the window that closed at {closes}",
        by["started_at"]
    );
    assert!(!metrics(&r).await.contains("tend_drift_held_by_window{"));
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_override_passes_a_window_that_allows_it_and_the_reconcile_records_it() {
    let fleet = Repo::new("gate-override", &["beta"]);
    fleet.commit(&fleet.manifests("1", ""), "v1");
    let (cron, _) = cron_fired_ago(1);
    let mut cfg = fleet.config(NEVER);
    cfg.windows = vec![deny("change-freeze", &cron, 3600, true)];
    let r = controller::spawn(cfg).await.unwrap();
    let st = trigger_and_wait(&r).await;
    assert!(
        st["reconcile"]["actions"]
            .as_array()
            .is_some_and(|a| a.is_empty()),
        "{st}"
    );
    let status = get_json(r.addr, "/status").await;
    let beta = service(&status, "beta").unwrap();
    assert!(
        beta["blocked"]
            .as_str()
            .is_some_and(|b| b.contains("`change-freeze`")),
        "{beta}"
    );

    let (code, body) = post_json(
        r.addr,
        "/reconcile?wait=true",
        r#"{"override_window":true}"#,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let overrode = v["reconcile"]["overrode"].to_string();
    assert!(
        overrode.contains("beta@gate-override past deny window `change-freeze`"),
        "{v}"
    );
    converged(&r, &fleet, "1").await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upgrade_is_in_the_ledger_with_its_output_tail_across_a_restart_and_no_secret() {
    let var = "TEND_E2E_LEDGER_SECRET";
    let secret = "l3dger-s3cret-value-77";
    std::env::set_var(var, secret);
    let fleet = Repo::new("gate-ledger", &["gamma"]);
    let env = format!("  env: {{API_KEY: {{fromEnv: {var}}}}}\n");
    fleet.commit(&fleet.manifests("1", &env), "v1");
    let cfg = fleet.config(NEVER);
    let file = cfg.ledger_path();
    let r = controller::spawn(cfg.clone()).await.unwrap();
    trigger_and_wait(&r).await;
    converged(&r, &fleet, "1").await;

    // Version 2's install prints the secret and a marker, then fails.
    let broken = format!(
        "{env}  install: [\"echo upgrade-broke-here key=$API_KEY; echo {secret}; exit 3\"]\n"
    );
    fleet.commit(&fleet.manifests("2", &broken), "v2 broken");
    trigger_and_wait(&r).await;
    let (code, raw) = http(r.addr, "GET", "/ledger?limit=10", &[], b"").await;
    assert_eq!(code, 200, "{raw}");
    assert!(!raw.contains(secret), "{raw}");
    let page: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let failed = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["actions"].as_array().into_iter().flatten())
        .find(|a| a["service"] == "gamma" && a["kind"] == "upgrade")
        .cloned()
        .unwrap_or_else(|| panic!("no upgrade of gamma in {page}"));
    assert_ne!(failed["result"], "succeeded", "{failed}");
    assert_eq!(failed["version_before"], "1", "{failed}");
    // The failed install ran and was timed.
    assert!(
        failed["duration_seconds"].as_f64().is_some_and(|d| d > 0.0),
        "{failed}"
    );
    assert!(
        failed["output"]
            .as_str()
            .is_some_and(|o| o.contains("upgrade-broke-here") && o.contains("<redacted>")),
        "{failed}"
    );
    let (_, html) = http(r.addr, "GET", "/", &[], b"").await;
    assert!(html.contains("upgrade gamma@gate-ledger 1 →"), "{html}");
    let seq_before = page["entries"][0]["seq"].as_u64().unwrap();
    r.stop().await;

    // The file outlives the controller; a new one carries on numbering.
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("upgrade-broke-here") && !text.contains(secret));
    let r = controller::spawn(cfg).await.unwrap();
    let page = get_json(r.addr, "/ledger").await;
    assert_eq!(
        page["entries"][0]["seq"].as_u64(),
        Some(seq_before),
        "{page}"
    );
    fleet.commit(&fleet.manifests("3", &env), "v3");
    trigger_and_wait(&r).await;
    converged(&r, &fleet, "3").await;
    let page = get_json(r.addr, "/ledger?limit=1").await;
    let newest = &page["entries"][0];
    assert!(newest["seq"].as_u64().unwrap() > seq_before, "{newest}");
    assert_eq!(newest["who"], "api token", "{newest}");
    assert_eq!(page["next_before"], newest["seq"], "{page}");
    r.stop().await;

    // `tend history SERVICE` reads the file.
    let out = std::process::Command::new(super::common::tend_bin())
        .args(["history", "gamma", "--file"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("upgrade gamma@gate-ledger 1 → 3: succeeded"),
        "{text}"
    );
    assert!(
        text.contains("upgrade-broke-here") && !text.contains(secret),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approve_mode_change_waits_is_applied_only_once_approved_and_a_stale_id_is_refused() {
    let fleet = Repo::new("gate-approve", &["delta", "zeta"]);
    fleet.commit(&fleet.manifests("1", ""), "v1");
    let mut cfg = fleet.config(NEVER);
    cfg.mode.services = [("delta".to_string(), tend::approval::Mode::Approve)].into();
    let r = controller::spawn(cfg).await.unwrap();
    trigger_and_wait(&r).await;
    let st = get_json(r.addr, "/status").await;
    let first = st["awaiting_approval"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no plan awaiting approval: {st}"))
        .to_string();
    let delta = service(&st, "delta").unwrap();
    assert_eq!(delta["status"], "drifted", "{delta}");
    assert!(
        delta["blocked"]
            .as_str()
            .is_some_and(|b| b.contains(&format!("awaiting approval of plan {first}"))),
        "{delta}"
    );
    assert_eq!(fleet.pid("delta"), None, "nothing ran before approval");
    assert_eq!(
        service(&st, "zeta").unwrap()["status"],
        "in_sync",
        "auto mode acts"
    );
    assert!(metrics(&r).await.contains("tend_plans_awaiting_approval 1"));
    let (_, html) = http(r.addr, "GET", "/", &[], b"").await;
    assert!(html.contains(&format!("tend approve {first}")), "{html}");

    // Git moves on: a new plan, and the first id is stale.
    fleet.commit(&fleet.manifests("2", ""), "v2");
    trigger_and_wait(&r).await;
    let st = get_json(r.addr, "/status").await;
    let second = st["awaiting_approval"]["id"].as_str().unwrap().to_string();
    assert_ne!(first, second);
    let (code, body) = post_json(r.addr, &format!("/plans/{first}/approve"), "").await;
    assert_eq!(code, 409, "{body}");
    assert!(body.contains(&second), "{body}");
    // `tend approve` says so too, with its own exit code.
    let out = std::process::Command::new(super::common::tend_bin())
        .args(["approve", &first, "--url", &format!("http://{}", r.addr)])
        .arg("--token-file")
        .arg(fleet.tmp.path().join("token"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("is not the current plan"), "{err}");
    assert_eq!(fleet.pid("delta"), None, "a stale approval runs nothing");

    let (code, body) = post_json(r.addr, &format!("/plans/{second}/approve?wait=true"), "").await;
    assert_eq!(code, 200, "{body}");
    let st = converged(&r, &fleet, "2").await;
    assert!(st["awaiting_approval"].is_null(), "{st}");
    assert!(metrics(&r).await.contains("tend_plans_awaiting_approval 0"));
    let page = get_json(r.addr, "/ledger?limit=1").await;
    assert_eq!(page["entries"][0]["plan"], second.as_str(), "{page}");
    let (code, body) = post_json(r.addr, &format!("/plans/{second}/approve"), "").await;
    assert_eq!(code, 409, "approved once, applied once: {body}");
    r.stop().await;
}
