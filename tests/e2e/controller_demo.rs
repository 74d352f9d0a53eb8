//! The README's first command, `cargo run -p tend -- run`, on a fresh copy of the
//! repository: the embedded demo starts, converges, follows an edit of a demo
//! manifest, and stops on SIGTERM. No root, no servers.

use super::common::http::{eventually, free_port, get_json, http};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Exactly what the README tells a new user to type (the test only adds
/// `--manifest-path`, so it builds in the workspace it runs from).
const FIRST_COMMAND: &[&str] = &["run", "-p", "tend", "--", "run"];

const DEMO_SERVICES: &[&str] = &["demo-api", "demo-store", "demo-web"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        let n = name.to_string_lossy();
        if n == "target" || n.starts_with('.') {
            continue;
        }
        let ty = e.file_type().unwrap();
        if ty.is_dir() {
            copy_tree(&e.path(), &to.join(&name));
        } else if ty.is_file() {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

/// Kills the demo's services (they outlive the controller by design) and the
/// controller itself if the test failed half-way.
struct Cleanup {
    root: PathBuf,
    child: Option<std::process::Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let Ok(dir) = std::fs::read_dir(self.root.join(".tend-demo/records")) else {
            return;
        };
        for e in dir.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            if let Some(pid) = text
                .lines()
                .find_map(|l| l.strip_prefix("pid="))
                .and_then(|p| p.parse::<i32>().ok())
            {
                // SAFETY: kill has no memory preconditions; the pid is the demo's.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

async fn in_sync(addr: SocketAddr) -> Option<serde_json::Value> {
    let (code, body) = http(addr, "GET", "/status", &[], b"").await;
    if code != 200 {
        return None;
    }
    let st: serde_json::Value = serde_json::from_str(&body).ok()?;
    let services: Vec<&serde_json::Value> = st["hosts"]
        .as_array()?
        .iter()
        .flat_map(|h| h["services"].as_array().into_iter().flatten())
        .collect();
    let all = DEMO_SERVICES.iter().all(|n| {
        services
            .iter()
            .any(|s| s["name"] == *n && s["status"] == "in_sync")
    });
    (st["ready"] == true && all).then_some(st)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_demo_starts_converges_follows_an_edit_and_stops() {
    if Command::new("python3").arg("--version").output().is_err() {
        panic!("the demo services need python3");
    }
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("tend");
    copy_tree(&workspace(), &repo);
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let manifest = workspace().join("Cargo.toml");
    let child = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .arg(FIRST_COMMAND[0])
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(&manifest)
        .args(&FIRST_COMMAND[1..])
        .current_dir(&repo)
        .env("TEND_LISTEN", addr.to_string())
        .env_remove("TEND_CONFIG")
        .stdin(Stdio::null())
        .spawn()
        .expect("cargo run");
    let mut guard = Cleanup {
        root: repo.clone(),
        child: Some(child),
    };

    let st = {
        let child = guard.child.as_mut().unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(900);
        loop {
            if let Some(st) = in_sync(addr).await {
                break st;
            }
            if let Ok(Some(exit)) = child.try_wait() {
                panic!(
                    "`cargo {}` exited with {exit} before the demo converged",
                    FIRST_COMMAND.join(" ")
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gave up waiting for the demo to converge"
            );
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
    };
    assert_eq!(st["source"]["kind"], "dir");
    assert_eq!(st["source"]["manifests_valid"], true);
    let (code, page) = http(addr, "GET", "/", &[], b"").await;
    assert_eq!(code, 200);
    assert!(page.contains("demo-web"));
    let (_, m) = http(addr, "GET", "/metrics", &[], b"").await;
    assert!(
        m.contains("tend_service_in_sync{host=\"demo\",service=\"demo-web\"} 1"),
        "{m}"
    );
    let web: SocketAddr = "127.0.0.1:18083".parse().unwrap();
    let (_, hello) = http(web, "GET", "/", &[], b"").await;
    assert!(hello.contains("hello from tend"), "{hello}");

    // The clients: `tend trigger` (token from the demo's .tend/token) and `tend status`.
    let url = format!("http://{addr}");
    let tend = |args: &[&str]| {
        let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["run", "--quiet", "--manifest-path"])
            .arg(&manifest)
            .args(["-p", "tend", "--"])
            .args(args)
            .current_dir(&repo)
            .output()
            .expect("cargo run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = tend(&["trigger", "--wait", "--url", &url]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("queued reconcile #"), "{out}");
    assert!(out.contains(": success in "), "{out}");
    let (code, out) = tend(&["status", "--url", &url]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("demo") && l.contains("demo-web") && l.contains("in sync")),
        "{out}"
    );

    // Edit a demo manifest: the watcher (or the next tick) converges it.
    let file = repo.join("manifests/demo/demo.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("GREETING: hello from tend"));
    std::fs::write(
        &file,
        text.replace("GREETING: hello from tend", "GREETING: hello from an edit"),
    )
    .unwrap();
    let hello = eventually(300, "demo-web answers with the new greeting", || async {
        let (code, body) = http(web, "GET", "/", &[], b"").await;
        (code == 200 && body.contains("hello from an edit")).then_some(body)
    })
    .await;
    assert!(hello.contains("demo-web"));
    let st = eventually(120, "in sync after the edit", || in_sync(addr)).await;
    let last = st["hosts"][0]["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "demo-web")
        .map(|s| s["last_action"].clone())
        .unwrap();
    assert_eq!(last["result"], "succeeded", "{last}");
    assert_eq!(
        get_json(addr, "/status").await["source"]["manifests_valid"],
        true
    );

    // SIGTERM: the controller finishes what it does and exits cleanly.
    let mut child = guard.child.take().unwrap();
    // SAFETY: kill has no memory preconditions; the pid is our child (cargo
    // execs the binary, so it is tend itself).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "tend run exited with {status}");
}
