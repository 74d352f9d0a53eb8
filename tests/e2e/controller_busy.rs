//! One host's long action does not hold the others: while an install on one
//! host blocks, a service killed on another is repaired by the same running
//! controller. Two local hosts (two roots), real processes, real Git.

use super::common::http::{eventually, free_port, get_json, http, post_as};
use super::common::repo::{Repo, TOKEN};
use std::path::{Path, PathBuf};
use tend::controller;

const NEVER: &str = "0 0 1 1 *";

fn host(name: &str, root: &Path) -> String {
    format!(
        "apiVersion: tend/v1\nkind: Host\nmetadata: {{name: {name}}}\nspec:\n  address: local\n  root: {}\n",
        root.display()
    )
}

fn service(name: &str, host: &str, port: u16, version: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: tend/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  host: {host}\n  runtime: process\n  version: \"{version}\"\n  command: [python3, -m, http.server, --bind, 127.0.0.1, \"{port}\"]\n  ports: [{port}]\n  health: {{http: {{port: {port}, path: /}}, interval: 1s, timeout: 20s}}\n{extra}"
    )
}

fn pid_in(root: &Path, service: &str) -> Option<i32> {
    let rec = std::fs::read_to_string(root.join("records").join(format!("{service}.rec"))).ok()?;
    rec.lines()
        .find_map(|l| l.strip_prefix("pid="))
        .and_then(|p| p.trim().parse().ok())
}

/// The second host's services die with the test (the Repo reaps its own).
struct Reap(PathBuf, &'static str);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(pid) = pid_in(&self.0, self.1) {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

async fn serves(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    http(addr, "GET", "/", &[], b"").await.0 == 200
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_killed_on_one_host_is_repaired_while_an_install_on_another_host_still_runs() {
    // Host "slow" is the Repo's own root; host "quick" has a second root.
    let fleet = Repo::new("slow", &["slowsvc"]);
    let slow_port = fleet.services["slowsvc"];
    let quick_root = fleet.tmp.path().join("quick-host");
    let quick_port = free_port();
    let _reap = Reap(quick_root.clone(), "quicksvc");
    let manifests = |slow_version: &str, extra: &str| {
        host("slow", &fleet.root())
            + "---\n"
            + &host("quick", &quick_root)
            + &service("slowsvc", "slow", slow_port, slow_version, extra)
            + &service("quicksvc", "quick", quick_port, "1", "")
    };
    fleet.commit(&manifests("1", ""), "v1");
    let r = controller::spawn(fleet.config(NEVER)).await.unwrap();
    let auth = format!("Bearer {}", TOKEN);
    eventually(120, "both services serve", || async {
        (serves(slow_port).await && serves(quick_port).await).then_some(())
    })
    .await;

    // v2 of the slow service installs until the test opens the gate.
    let started = fleet.tmp.path().join("install-started");
    let gate = fleet.tmp.path().join("install-gate");
    let extra = format!(
        "  install: [\"touch {}; while [ ! -e {} ]; do sleep 0.1; done\"]\n",
        started.display(),
        gate.display()
    );
    fleet.commit(&manifests("2", &extra), "v2");
    let (code, body) = post_as(r.addr, "/reconcile", &auth).await;
    assert_eq!(code, 202, "{body}");
    eventually(120, "the slow install runs", || async {
        started.exists().then_some(())
    })
    .await;

    // Kill the quick service; ask for a reconcile while the install blocks.
    let old = pid_in(&quick_root, "quicksvc").expect("quicksvc's pid");
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(old, libc::SIGKILL) };
    let (code, body) = post_as(r.addr, "/reconcile", &auth).await;
    assert_eq!(code, 202, "{body}");
    eventually(120, "quicksvc repaired", || async {
        let new = pid_in(&quick_root, "quicksvc");
        (new.is_some() && new != Some(old) && serves(quick_port).await).then_some(())
    })
    .await;
    // Not a timing claim: the gate is still shut, so the install is still
    // running, and the old slow release still serves.
    assert!(!gate.exists());
    assert!(
        serves(slow_port).await,
        "slowsvc v1 serves during its upgrade"
    );
    let st = get_json(r.addr, "/status").await;
    assert!(
        st["running"].is_object(),
        "the reconcile with the install is still running: {st}"
    );

    std::fs::write(&gate, "").unwrap();
    eventually(120, "slowsvc upgraded", || async {
        let st = get_json(r.addr, "/status").await;
        let up = st["hosts"].as_array().into_iter().flatten().any(|h| {
            h["services"].as_array().into_iter().flatten().any(|s| {
                s["name"] == "slowsvc" && s["observed_version"] == "2" && s["status"] == "in_sync"
            })
        });
        up.then_some(st)
    })
    .await;
    let st = get_json(r.addr, "/status").await;
    let with_both = st["reconciles"].as_array().unwrap().iter().any(|rec| {
        let acts = rec["actions"].as_array().cloned().unwrap_or_default();
        let has = |svc: &str| {
            acts.iter()
                .any(|a| a["service"] == svc && a["result"] == "succeeded")
        };
        has("slowsvc") && has("quicksvc")
    });
    assert!(with_both, "one reconcile did both: {st}");
    r.stop().await;
}
