//! `tend run` against 200 sshd hosts: every host observed and converged,
//! one SSH login each across the startup converge and later reconciles,
//! and /metrics and /status well-formed at that size. Not timed: speed at
//! this size is BENCHMARKS.md's.

use super::common::http::{eventually, get_json, http};
use super::common::{fleet, hosts_yaml};
use std::time::Duration;
use tend::config::Config;
use tend::controller;
use tend::controller::coalesce::Trigger;

const HOSTS: usize = 200;
const PORT: u16 = 19901;

#[tokio::test(flavor = "multi_thread")]
async fn tend_run_over_200_hosts_observes_each_over_one_connection_and_reports_them_all() {
    let Some(f) = fleet("tend_run_over_200_hosts", HOSTS) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut y = hosts_yaml(&f);
    // One small service per host; a quarter of them behind one selector.
    for (i, h) in f.hosts().iter().enumerate() {
        y.push_str(&format!(
            "apiVersion: tend/v1\nkind: Service\nmetadata: {{name: s{i}}}\nspec:\n  host: {h}\n  runtime: process\n  version: \"1\"\n  command: [busybox, httpd, -f, -p, \"{PORT}\", -h, /]\n  ports: [{PORT}]\n  memory: 16MiB\n---\n",
            h = h.name
        ));
    }
    std::fs::create_dir_all(dir.path().join("m")).unwrap();
    std::fs::write(dir.path().join("m/fleet.yaml"), y).unwrap();
    let config = Config {
        repository: dir.path().display().to_string(),
        path: "m".into(),
        schedule: "0 0 1 1 *".into(),
        listen: "127.0.0.1:0".into(),
        cache_dir: dir.path().join("cache"),
        ident: "e2e-scale".into(),
        concurrency: 64,
        host_timeout: Duration::from_secs(120),
        ..Config::default()
    };
    let r = controller::spawn(config).await.expect("tend run starts");
    let st = eventually(600, "the startup converge of 200 hosts", || async {
        let st = get_json(r.addr, "/status").await;
        let done = st["reconciles"].as_array().is_some_and(|a| !a.is_empty());
        done.then_some(st)
    })
    .await;
    let last = &st["reconciles"][0];
    assert_eq!(last["result"], "success", "{last:#}");

    // Two more reconciles: a no-op, then a repair of one killed service.
    let mut ours = serde_json::Value::Null;
    for k in 0..2 {
        if k == 1 {
            f.host(7)
                // Until the pid is gone or a zombie: SIGKILL lands asynchronously.
                .exec_ok(
                    "p=$(sed -n 's/^pid=//p' /var/lib/tend/records/s7.rec); kill -9 $p; \
                     while [ -e /proc/$p ] && [ \"$(cut -d' ' -f3 /proc/$p/stat 2>/dev/null)\" != Z ]; \
                     do sleep 0.05; done",
                )
                .unwrap();
        }
        // Wait for the reconcile that answers this trigger: an earlier one
        // may still be running and would have observed host 7 before the kill.
        let ticket = r.ctx.trigger(Trigger::Api);
        ours = eventually(300, "the next reconcile", || async {
            let st = get_json(r.addr, "/status").await;
            let all = st["reconciles"].as_array().cloned().unwrap_or_default();
            all.into_iter()
                .find(|x| x["id"].as_u64() == Some(ticket.id))
        })
        .await;
    }
    assert_eq!(ours["result"], "success", "{ours:#}");
    let acts = ours["actions"].as_array().cloned().unwrap_or_default();
    assert_eq!(acts.len(), 1, "{acts:#?}");
    assert_eq!(acts[0]["service"], "s7");

    // Every host observed, up, its service in sync.
    let st = get_json(r.addr, "/status").await;
    let hosts = st["hosts"].as_array().cloned().unwrap_or_default();
    assert_eq!(hosts.len(), HOSTS);
    for h in &hosts {
        assert_eq!(h["up"], true, "{h:#}");
        let svcs = h["services"].as_array().cloned().unwrap_or_default();
        assert_eq!(svcs.len(), 1, "{h:#}");
        assert_eq!(svcs[0]["status"], "in_sync", "{h:#}");
    }
    // One SSH login per host for the startup converge and both reconciles.
    for h in f.hosts() {
        assert_eq!(h.accepted_logins(), 1, "{}: {}", h.name, h.sshd_log());
    }

    // /metrics: a series per host and per service, and promtool accepts it.
    let (code, text) = http(r.addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(code, 200);
    let up = text
        .lines()
        .filter(|l| l.starts_with("tend_host_up{"))
        .count();
    let in_sync = text
        .lines()
        .filter(|l| l.starts_with("tend_service_in_sync{"))
        .count();
    assert_eq!((up, in_sync), (HOSTS, HOSTS));
    if let Some(promtool) = super::deploy::tool("promtool", "prometheus", "scale metrics") {
        use std::io::Write;
        let mut child = std::process::Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let plain = r.ctx.metrics.encode_prometheus();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(plain.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        // promtool lints (e.g. counters without _total) print but pass.
        assert!(out.status.success(), "promtool: {err}");
    }
    // The page renders every host.
    let (code, page) = http(r.addr, "GET", "/", &[], b"").await;
    assert_eq!(code, 200);
    assert_eq!(page.matches("<h3 id=\"host-").count(), HOSTS);
    r.stop().await;
    // The services outlive the controller; these are the test's.
    for h in f.hosts() {
        let _ = h.exec("kill -9 $(sed -n 's/^pid=//p' /var/lib/tend/records/*.rec) 2>/dev/null");
    }
}
