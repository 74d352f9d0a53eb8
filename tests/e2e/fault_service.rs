//! Faults of the services themselves: an upgrade that fails its health gate
//! (rolled back, the old release serves), a service killed by hand (restored
//! on the next run), a stranger on a declared port (drift `port`, the
//! stranger is left alone).

use super::apply::{desired, get, http_health, httpd, ROOT};
use super::common::checks::{all_records, assert_intact, httpds};
use super::common::fleet;
use super::common::{fast_opts, fast_pool};
use tend::apply::{self, ActionOutcome};
use tend::plan::DriftReason;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upgrade_is_rolled_back_and_the_old_release_keeps_serving() {
    let Some(f) = fleet("a_failed_upgrade_is_rolled_back", 1) else {
        return;
    };
    let h = f.host(0);
    let pool = fast_pool();
    let good = httpd("fr", &h.name, 19401, "1", "fr 1\n");
    let r = apply::converge(&desired(&f, vec![good]), &pool, &fast_opts(), None).await;
    assert!(r.converged(), "{:#?}", r.actions);
    let before = all_records(h, ROOT)["fr"].clone();

    // Version 2 listens on another port: its health gate never passes.
    let mut bad = httpd("fr", &h.name, 19401, "2", "fr 2\n");
    bad.command = ["busybox", "httpd", "-f", "-p", "19402", "-h", "www"]
        .map(String::from)
        .to_vec();
    bad.health = http_health(19401, 3);
    let r = apply::converge(&desired(&f, vec![bad]), &pool, &fast_opts(), None).await;
    assert!(!r.converged());
    match &r.actions[0].outcome {
        ActionOutcome::RolledBack(m) => assert!(m.contains("rolled back to 1"), "{m}"),
        o => panic!("expected a rollback, got {o:?}"),
    }
    assert_intact(h, ROOT, "fr", 19401, "1", "fr 1\n");
    let after = all_records(h, ROOT)["fr"].clone();
    assert_eq!(after.release, before.release);
    assert_eq!(after.failed_version.as_deref(), Some("2"));
    assert_eq!(httpds(h, 19402), 0, "the failed release is stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_killed_on_its_host_is_restored_by_the_next_run() {
    let Some(f) = fleet("a_service_killed_on_its_host_is_restored", 1) else {
        return;
    };
    let h = f.host(0);
    let pool = fast_pool();
    let d = desired(&f, vec![httpd("fk", &h.name, 19411, "1", "fk\n")]);
    assert!(apply::converge(&d, &pool, &fast_opts(), None)
        .await
        .converged());
    let pid = all_records(h, ROOT)["fk"].pid.expect("pid");
    h.exec_ok(&format!("kill -9 {pid}; i=0; while kill -0 {pid} 2>/dev/null; do i=$((i+1)); [ $i -gt 200 ] && exit 1; sleep 0.05; done"))
        .unwrap();
    assert_eq!(get(h, 19411, "/health"), None, "killed");

    let r = apply::converge(&d, &pool, &fast_opts(), None).await;
    assert!(r.converged(), "{:#?}", r.actions);
    assert_eq!(r.actions.len(), 1, "{:#?}", r.actions);
    assert_eq!(r.actions[0].action.service, "fk");
    assert_intact(h, ROOT, "fk", 19411, "1", "fk\n");
    assert_ne!(all_records(h, ROOT)["fk"].pid, Some(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_on_a_declared_port_is_drift_port_and_is_left_running() {
    let Some(f) = fleet("a_stranger_on_a_declared_port_is_left_running", 1) else {
        return;
    };
    let h = f.host(0);
    h.exec_ok("mkdir -p /srv/stranger && echo stranger > /srv/stranger/health")
        .unwrap();
    let mut stranger = h
        .command("cd /srv/stranger && exec busybox httpd -f -p 19421 -h .")
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("stranger starts");
    h.exec_ok("i=0; while ! wget -q -O /dev/null http://127.0.0.1:19421/health; do i=$((i+1)); [ $i -gt 200 ] && exit 1; sleep 0.05; done")
        .unwrap();

    let pool = fast_pool();
    let d = desired(&f, vec![httpd("fs", &h.name, 19421, "1", "fs\n")]);
    let r = apply::converge(&d, &pool, &fast_opts(), None).await;
    assert!(!r.converged());
    let sp = r
        .plan
        .services
        .iter()
        .find(|s| s.service == "fs")
        .expect("fs planned");
    assert!(sp.reasons.contains(&DriftReason::Port), "{sp:?}");
    assert!(
        sp.blocked.as_deref().unwrap_or("").contains("19421"),
        "{sp:?}"
    );
    assert!(
        r.actions.iter().all(|a| a.action.service != "fs"),
        "{:#?}",
        r.actions
    );
    // Left alone: same process, still serving its own content; tend put nothing there.
    assert!(
        stranger.try_wait().unwrap().is_none(),
        "the stranger was killed"
    );
    assert_eq!(get(h, 19421, "/health").as_deref(), Some("stranger\n"));
    assert!(all_records(h, ROOT).is_empty());
    let _ = stranger.kill();
    let _ = stranger.wait();
}
