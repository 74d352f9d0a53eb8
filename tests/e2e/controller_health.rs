//! `tend run` repairs a running service whose HTTP health check starts
//! failing: the loop's own HTTP checks (not only the apply stage's gate)
//! report it `unhealthy` in /status and /metrics, and it is restarted.
//! Real processes on the local transport, the controller in this process.

use super::common::http::{eventually, get_json, http};
use super::common::repo::Repo;
use std::path::Path;
use tend::controller;

const EVERY_SECOND: &str = "* * * * * *";

/// A demo-like service: GET /health answers 500 while the `--fail` file
/// exists (a fresh start removes it, so a restart repairs it). On SIGTERM it
/// waits while the `--hold` file exists, so the test can look at the
/// controller while the restart is under way (the runtime's own bound still
/// applies: it SIGKILLs after ~10 s).
const APP: &str = r#"import argparse, os, signal, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--fail", required=True)
p.add_argument("--hold", required=True)
a = p.parse_args()
try:
    os.remove(a.fail)
except FileNotFoundError:
    pass


class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        code = 500 if self.path == "/health" and os.path.exists(a.fail) else 200
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def term(*_):
    while os.path.exists(a.hold):
        time.sleep(0.05)
    os._exit(0)


signal.signal(signal.SIGTERM, term)
ThreadingHTTPServer(("127.0.0.1", a.port), Health).serve_forever()
"#;

fn manifests(fleet: &Repo, fail: &Path, hold: &Path) -> String {
    let port = fleet.services["mu"];
    format!(
        "apiVersion: tend/v1\nkind: Host\nmetadata: {{name: {h}, labels: {{role: e2e}}}}\n\
spec:\n  address: local\n  root: {root}\n\
---\napiVersion: tend/v1\nkind: Service\nmetadata: {{name: mu}}\nspec:\n  host: {h}\n  runtime: process\n  version: \"1\"\n  source: {{path: apps/mu}}\n  command: [python3, app.py, --port, \"{port}\", --fail, \"{fail}\", --hold, \"{hold}\"]\n  ports: [{port}]\n  health: {{http: {{port: {port}, path: /health}}, interval: 1s, timeout: 5s, retries: 2}}\n",
        h = fleet.host,
        root = fleet.root().display(),
        fail = fail.display(),
        hold = hold.display(),
    )
}

fn mu(status: &serde_json::Value) -> Option<serde_json::Value> {
    status["hosts"]
        .as_array()?
        .iter()
        .flat_map(|h| h["services"].as_array().into_iter().flatten())
        .find(|s| s["name"] == "mu")
        .cloned()
}

async fn metrics(r: &controller::Running) -> String {
    let (code, body) = http(r.addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(code, 200, "{body}");
    body
}

/// Value of the sample whose name and labels are exactly `series` (0 when absent).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

const RESTARTED: &str = "tend_actions_total{kind=\"restart\",result=\"succeeded\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_whose_health_starts_failing_is_reported_unhealthy_and_restarted() {
    let fleet = Repo::new("ctl-health", &["mu"]);
    let app = fleet.work().join("apps/mu");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("app.py"), APP).unwrap();
    let (fail, hold) = (
        fleet.tmp.path().join("mu-fail"),
        fleet.tmp.path().join("mu-hold"),
    );
    fleet.commit(&manifests(&fleet, &fail, &hold), "v1");
    let r = controller::spawn(fleet.config(EVERY_SECOND)).await.unwrap();
    let healthy_series = format!(
        "tend_service_healthy{{host=\"{}\",service=\"mu\"}}",
        fleet.host
    );

    // Running, checked by the loop, healthy.
    eventually(120, "mu in sync and healthy", || async {
        let s = mu(&get_json(r.addr, "/status").await)?;
        (s["status"] == "in_sync" && s["healthy"] == true).then_some(())
    })
    .await;
    let m = metrics(&r).await;
    assert!(m.contains(&format!("{healthy_series} 1")), "{m}");
    let restarts = sample(&m, RESTARTED);
    let pid = fleet.pid("mu").expect("recorded pid");

    // /health turns 500; the restart is held at its stop until we have looked.
    std::fs::write(&hold, "").unwrap();
    std::fs::write(&fail, "").unwrap();
    let seen = eventually(120, "mu reported unhealthy", || async {
        let s = mu(&get_json(r.addr, "/status").await)?;
        let unhealthy = s["reasons"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x == "unhealthy"));
        (unhealthy && s["status"] == "drifted").then_some(s)
    })
    .await;
    assert_eq!(seen["healthy"], false, "{seen}");
    assert_eq!(seen["running"], true, "{seen}");
    let m = metrics(&r).await;
    assert!(m.contains(&format!("{healthy_series} 0")), "{m}");
    assert!(
        m.contains(&format!(
            "tend_service_drift{{host=\"{}\",service=\"mu\",reason=\"unhealthy\"}} 1",
            fleet.host
        )),
        "{m}"
    );
    std::fs::remove_file(&hold).unwrap();

    // Restarted: a new process, healthy, in sync; one more successful restart.
    let st = eventually(120, "mu restarted, in sync and healthy", || async {
        let st = get_json(r.addr, "/status").await;
        let s = mu(&st)?;
        let repaired = s["status"] == "in_sync"
            && s["healthy"] == true
            && s["last_action"]["kind"] == "restart"
            && fleet.pid("mu").is_some_and(|p| p != pid);
        repaired.then_some(s)
    })
    .await;
    assert_eq!(st["last_action"]["result"], "succeeded", "{st}");
    assert!(!fail.exists(), "the new process removed the flag");
    let m = metrics(&r).await;
    assert!(sample(&m, RESTARTED) > restarts, "{m}");
    assert!(m.contains(&format!("{healthy_series} 1")), "{m}");
    r.stop().await;
}
