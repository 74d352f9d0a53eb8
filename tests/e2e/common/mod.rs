//! The e2e tests' shared set-up: the tend binary, manifests of a test fleet
//! on disk, a pool that notices a dead link quickly; `checks` holds what
//! every fault ends with, `http` the requests to a controller or service,
//! `repo` the Git repository `tend run` watches.

pub mod checks;
pub mod http;
pub mod repo;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;
use tend::apply::ApplyOptions;
use tend::transport::pool::{Pool, PoolOptions};
use tend_e2e::testbed::{skip_unless_e2e, Fleet, TestHost};

/// target/debug/tend, next to this test's binary (target/debug/deps/e2e-*),
/// built once per run so it matches the library under test.
pub fn tend_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("current exe");
        let bin = exe
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("tend"))
            .expect("target dir");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "tend", "--bin", "tend"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build runs");
        assert!(status.success(), "cargo build -p tend failed");
        assert!(bin.exists(), "{} missing", bin.display());
        bin
    })
    .clone()
}

pub fn fleet(test: &str, n: usize) -> Option<Fleet> {
    if !skip_unless_e2e(test) {
        return None;
    }
    Some(Fleet::start(n).expect("fleet starts"))
}

/// `dir/known_hosts` naming `hosts` (and no other).
pub fn known_hosts(dir: &Path, hosts: &[&TestHost]) -> PathBuf {
    let kh = dir.join("known_hosts");
    let lines: String = hosts.iter().map(|h| h.known_hosts_line() + "\n").collect();
    std::fs::write(&kh, lines).expect("write known_hosts");
    kh
}

/// The OpenSSH client, strict about host keys and nothing from the
/// machine's config: `command` as root at `ip`.
pub fn openssh(known_hosts: &Path, key: &Path, ip: &str, command: &str) -> Output {
    Command::new("ssh")
        .args(["-F", "/dev/null", "-o", "BatchMode=yes"])
        .args(["-o", "StrictHostKeyChecking=yes", "-o"])
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .arg("-i")
        .arg(key)
        .arg(format!("root@{ip}"))
        .arg(command)
        .output()
        .expect("ssh runs")
}

/// Runs `cmd` to its end: (exit code, stdout then stderr).
pub fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().expect("the command runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The pool the transport and plan tests use: quick to connect, keepalive
/// 5 s, scripts bounded by `exec`.
pub fn test_pool(exec: Duration) -> Pool {
    Pool::new(PoolOptions {
        connect_timeout: Duration::from_secs(3),
        exec_timeout: Some(exec),
        keepalive: Some(Duration::from_secs(5)),
        default_identity: None,
        known_hosts: None,
        max_channels: 8,
    })
}

/// A pool that gives up on a dead link within seconds (keepalive 1 s), not
/// the production minute.
pub fn fast_pool() -> Pool {
    Pool::new(PoolOptions {
        connect_timeout: Duration::from_secs(3),
        exec_timeout: Some(Duration::from_secs(60)),
        keepalive: Some(Duration::from_secs(1)),
        ..PoolOptions::default()
    })
}

pub fn fast_opts() -> ApplyOptions {
    ApplyOptions {
        observe_timeout: Duration::from_secs(15),
        ..ApplyOptions::default()
    }
}

/// One busybox httpd service in a manifests dir.
#[derive(Debug, Clone)]
pub struct Svc {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub version: String,
    pub after: Vec<String>,
    pub install: String,
}

impl Svc {
    pub fn new(name: &str, host: &str, port: u16, version: &str) -> Svc {
        Svc {
            name: name.into(),
            host: host.into(),
            port,
            version: version.into(),
            after: Vec::new(),
            install: "true".into(),
        }
    }
    /// What `GET /health` answers once this version runs.
    pub fn body(&self) -> String {
        format!("{} {}\n", self.name, self.version)
    }
}

/// Write `fleet.yaml` (every host of `f`, then `svcs`) and each service's
/// source (`services/<name>/www/health` = [`Svc::body`]) into `dir`.
pub fn write_manifests(dir: &Path, f: &Fleet, svcs: &[Svc]) {
    let mut y = hosts_yaml(f);
    for s in svcs {
        let src = dir.join("services").join(&s.name).join("www");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("health"), s.body()).unwrap();
        y.push_str(&format!(
            "apiVersion: tend/v1\nkind: Service\nmetadata: {{name: {n}}}\nspec:\n  host: {h}\n  runtime: process\n  version: \"{v}\"\n  source: {{path: services/{n}}}\n  install: [\"{i}\"]\n  command: [busybox, httpd, -f, -p, \"{p}\", -h, www]\n  ports: [{p}]\n  memory: 32MiB\n  health: {{http: {{port: {p}, path: /health}}, interval: 300ms, timeout: 2s, retries: 10}}\n  dependsOn: [{a}]\n---\n",
            n = s.name,
            h = s.host,
            v = s.version,
            i = s.install,
            p = s.port,
            a = s.after.join(", ")
        ));
    }
    std::fs::write(dir.join("fleet.yaml"), y).unwrap();
}

/// A `Host` document for every host of `f`, each ending in `---`.
pub fn hosts_yaml(f: &Fleet) -> String {
    let mut y = String::new();
    for h in f.hosts() {
        y.push_str(&format!(
            "apiVersion: tend/v1\nkind: Host\nmetadata: {{name: {}}}\nspec:\n  address: {}\n  port: {}\n  user: root\n  identity: {}\n  hostKeys: [\"{}\"]\n---\n",
            h.name,
            h.ip,
            h.port,
            f.ed25519_key().display(),
            h.host_key_line
        ));
    }
    y
}

/// Wait until `path` exists (a script on a host says it got there), for at
/// most two minutes: a bound, not a measurement.
pub async fn wait_for_file(path: &Path, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
