//! A Git repository of manifests for `tend run` on this machine: a bare
//! repository (the remote), a work clone to commit from, and python3
//! http.server services on the local host; and what a test asks the running
//! controller about it.

use super::http::{eventually, free_port, get_json, http, idle_reconcile, post_as, trigger_burst};
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tend::config::Config;
use tend::controller::Running;

/// A schedule that never fires during a test: reconciles come from triggers.
pub const NEVER: &str = "0 0 1 1 *";
/// The API token [`Repo::config`] writes.
pub const TOKEN: &str = "e2e-token-0123456789";

/// Runs git in `dir` as a fixed author, without the machine's config; its stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "e2e")
        .env("GIT_AUTHOR_EMAIL", "e2e@example.org")
        .env("GIT_COMMITTER_NAME", "e2e")
        .env("GIT_COMMITTER_EMAIL", "e2e@example.org")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare repository with a fleet of `python3 -m http.server` services on
/// one local host, a work clone to commit from, and the host's root.
pub struct Repo {
    pub tmp: tempfile::TempDir,
    pub host: String,
    pub services: BTreeMap<String, u16>,
}

impl Repo {
    pub fn new(host: &str, services: &[&str]) -> Repo {
        let tmp = tempfile::tempdir().unwrap();
        let services = services
            .iter()
            .map(|s| (s.to_string(), free_port()))
            .collect();
        let f = Repo {
            tmp,
            host: host.into(),
            services,
        };
        std::fs::create_dir_all(f.bare()).unwrap();
        git(&f.bare(), &["init", "--bare", "-q", "-b", "main"]);
        git(
            f.tmp.path(),
            &["clone", "-q", f.bare().to_str().unwrap(), "work"],
        );
        git(&f.work(), &["checkout", "-q", "-b", "main"]);
        f
    }

    pub fn bare(&self) -> PathBuf {
        self.tmp.path().join("fleet.git")
    }
    pub fn work(&self) -> PathBuf {
        self.tmp.path().join("work")
    }
    pub fn root(&self) -> PathBuf {
        self.tmp.path().join("host")
    }

    /// Manifests with every service at `version`; `extra` is appended to each
    /// service's spec (indented already).
    pub fn manifests(&self, version: &str, extra: &str) -> String {
        let mut m = format!(
            "apiVersion: tend/v1\nkind: Host\nmetadata: {{name: {h}, labels: {{role: e2e}}}}\n\
spec:\n  address: local\n  root: {root}\n",
            h = self.host,
            root = self.root().display()
        );
        for (name, port) in &self.services {
            m.push_str(&format!(
                "---\napiVersion: tend/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  host: {h}\n  runtime: process\n  version: \"{version}\"\n  command: [python3, -m, http.server, --bind, 127.0.0.1, \"{port}\"]\n  ports: [{port}]\n  health: {{http: {{port: {port}, path: /}}, interval: 1s, timeout: 20s}}\n{extra}",
                h = self.host
            ));
        }
        m
    }

    /// Commits `contents` as `fleet/fleet.yaml` and pushes; the new revision.
    pub fn commit(&self, contents: &str, msg: &str) -> String {
        self.commit_and_push(contents, msg, &["push", "-q", "origin", "main"])
    }

    /// As [`Repo::commit`], force-pushed (after a reset: history rewritten).
    pub fn commit_forced(&self, contents: &str, msg: &str) -> String {
        self.commit_and_push(contents, msg, &["push", "-q", "-f", "origin", "main"])
    }

    fn commit_and_push(&self, contents: &str, msg: &str, push: &[&str]) -> String {
        let dir = self.work().join("fleet");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("fleet.yaml"), contents).unwrap();
        git(&self.work(), &["add", "-A"]);
        git(&self.work(), &["commit", "-q", "-m", msg]);
        git(&self.work(), push);
        git(&self.work(), &["rev-parse", "HEAD"])
    }

    /// The `Authorization` header [`Repo::config`]'s token file grants.
    pub fn auth(&self) -> String {
        format!("Bearer {TOKEN}")
    }

    /// Paths and an install step that holds a reconcile until the test opens
    /// the gate: (started, gate, spec lines to append to each service).
    pub fn gated_install(&self) -> (PathBuf, PathBuf, String) {
        let (started, gate) = (
            self.tmp.path().join("started"),
            self.tmp.path().join("gate"),
        );
        let extra = format!(
            "  install: [\"touch {}; while [ ! -e {} ]; do sleep 0.1; done\"]\n",
            started.display(),
            gate.display()
        );
        (started, gate, extra)
    }

    pub fn config(&self, schedule: &str) -> Config {
        let token = self.tmp.path().join("token");
        std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        Config {
            repository: format!("file://{}", self.bare().display()),
            branch: "main".into(),
            path: "fleet".into(),
            schedule: schedule.into(),
            listen: "127.0.0.1:0".into(),
            token_file: Some(token),
            cache_dir: self.tmp.path().join("cache"),
            ident: format!("e2e-{}", self.host),
            host_timeout: Duration::from_secs(60),
            ..Config::default()
        }
    }

    /// The pid tend recorded for `service`.
    pub fn pid(&self, service: &str) -> Option<i32> {
        let rec =
            std::fs::read_to_string(self.root().join("records").join(format!("{service}.rec")))
                .ok()?;
        rec.lines()
            .find_map(|l| l.strip_prefix("pid="))
            .and_then(|p| p.trim().parse().ok())
    }
}

impl Drop for Repo {
    fn drop(&mut self) {
        // The services outlive the controller by design; the test's do not.
        for s in self.services.keys() {
            if let Some(pid) = self.pid(s) {
                // SAFETY: kill has no memory preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// `tend run` as a child process, killed when the test ends, however it ends.
pub struct Controller(pub std::process::Child);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn service<'a>(status: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    status["hosts"]
        .as_array()?
        .iter()
        .flat_map(|h| h["services"].as_array().into_iter().flatten())
        .find(|s| s["name"] == name)
}

/// Every service in sync at `version`.
pub async fn converged(r: &Running, fleet: &Repo, version: &str) -> serde_json::Value {
    eventually(
        120,
        &format!("all services in sync at {version}"),
        || async {
            let st = get_json(r.addr, "/status").await;
            fleet
                .services
                .keys()
                .all(|s| {
                    service(&st, s).is_some_and(|x| {
                        x["status"] == "in_sync" && x["observed_version"] == version
                    })
                })
                .then_some(st)
        },
    )
    .await
}

pub async fn trigger_and_wait(r: &Running) -> serde_json::Value {
    let (code, body) = post_as(r.addr, "/reconcile?wait=true", &format!("Bearer {TOKEN}")).await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

pub async fn metrics(r: &Running) -> String {
    let (code, body) = http(r.addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(code, 200);
    body
}

/// Commits version "2" with an install step that holds its reconcile, then,
/// while it is held, sends one trigger and `tasks` × `each` more at once,
/// and opens the gate. The distinct reconcile ids the burst was given, and
/// how many reconciles ran from before the first trigger until idle again.
pub async fn burst_while_one_runs(
    r: &Running,
    repo: &Repo,
    tasks: usize,
    each: usize,
) -> (BTreeSet<u64>, u64) {
    let idle = || idle_reconcile(r.addr);
    let before = eventually(120, "controller idle", idle).await;
    let (started, gate, extra) = repo.gated_install();
    repo.commit(&repo.manifests("2", &extra), "v2");
    let auth = repo.auth();
    let (code, first) = post_as(r.addr, "/reconcile", &auth).await;
    assert_eq!(code, 202, "{first}");
    eventually(120, "the install step runs", || async {
        started.exists().then_some(())
    })
    .await;
    let ids = trigger_burst(r.addr, &auth, tasks, each).await;
    std::fs::write(&gate, "").unwrap();
    let after = eventually(120, "controller idle after the burst", idle).await;
    (ids, after - before)
}
