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
    let fleet = Repo::new("gate-deny", &["alpha"]);
    fleet.commit(&fleet.manifests("1", ""), "v1");
    let r = controller::spawn(fleet.config(NEVER)).await.unwrap();
    trigger_and_wait(&r).await;
    converged(&r, &fleet, "1").await;
    r.stop().await;

    // Version 2 in Git while a deny window is open: a window that opened a
    // second ago for 30 s, reconciling every second.
    fleet.commit(&fleet.manifests("2", ""), "v2");
    let (cron, opened) = cron_fired_ago(1);
    let closes = opened + 30;
    let mut cfg = fleet.config("* * * * * *");
    cfg.windows = vec![deny("freeze", &cron, 30, false)];
    let r = controller::spawn(cfg).await.unwrap();

    let held = eventually(60, "alpha held by the deny window", || async {
        let st = get_json(r.addr, "/status").await;
        let s = service(&st, "alpha")?.clone();
        s["blocked"]
            .as_str()
            .is_some_and(|b| b.starts_with("held by deny window `freeze` until"))
            .then_some((s, st))
    })
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
        .find(|x| !x["actions"].as_array().unwrap().is_empty())
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
