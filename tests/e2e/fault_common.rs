//! Shared by the fault_*.rs tests: the tend binary, manifests on disk, a
//! pool that notices a dead link quickly, and the checks every fault ends
//! with: nothing half-installed, every record parses, one process per service.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;
use tend::apply::ApplyOptions;
use tend::record::Record;
use tend::transport::pool::{Pool, PoolOptions};
use tend_e2e::testbed::{Fleet, TestHost};

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

/// Every record under `root` on the host, parsed (a record that does not
/// parse fails the test).
pub fn all_records(h: &TestHost, root: &str) -> BTreeMap<String, Record> {
    let ls = h
        .exec_ok(&format!("ls -1 {root}/records 2>/dev/null || true"))
        .unwrap_or_default();
    let mut out = BTreeMap::new();
    for f in ls
        .lines()
        .filter(|f| f.ends_with(".rec") && !f.starts_with('.'))
    {
        let text = h
            .exec_ok(&format!("cat {root}/records/{f}"))
            .expect("read record");
        let rec = Record::parse(&text)
            .unwrap_or_else(|e| panic!("{}: record {f} does not parse ({e}):\n{text}", h.name));
        out.insert(f.trim_end_matches(".rec").to_string(), rec);
    }
    out
}

/// Leftovers of an interrupted action anywhere under `root` (temp release
/// dirs, staged records, temp env files and links).
pub fn leftovers(h: &TestHost, root: &str) -> Vec<String> {
    h.exec_ok(&format!("find {root} -name '.tmp-*' 2>/dev/null || true"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Processes on the host (the machine: there is no pid namespace) running
/// exactly this httpd command line.
pub fn httpds(h: &TestHost, port: u16) -> usize {
    let out = h
        .exec_ok(&format!(
            "pgrep -f -x 'busybox httpd -f -p {port} -h www' | wc -l"
        ))
        .unwrap_or_default();
    out.trim().parse().unwrap_or(usize::MAX)
}

/// The service's memory cgroup members (v1 or v2 hierarchy).
pub fn cgroup_procs(h: &TestHost, root: &str, svc: &str) -> usize {
    let cg = tend::runtime::cgroup_name(root, svc);
    let out = h
        .exec_ok(&format!(
            "cat /sys/fs/cgroup/memory/tend/{cg}/cgroup.procs /sys/fs/cgroup/tend/{cg}/cgroup.procs 2>/dev/null || true"
        ))
        .unwrap_or_default();
    out.lines().filter(|l| !l.trim().is_empty()).count()
}

/// After a converge: the service runs exactly once (one httpd on its port,
/// one process in its cgroup, the recorded pid alive), answers with `body`,
/// its record parses and names the release `current` points to, and nothing
/// temporary is left under the root.
pub fn assert_intact(h: &TestHost, root: &str, svc: &str, port: u16, version: &str, body: &str) {
    let recs = all_records(h, root);
    let rec = recs
        .get(svc)
        .unwrap_or_else(|| panic!("{}: no record of {svc}", h.name));
    assert_eq!(rec.version, version, "{}: {svc} version", h.name);
    assert_eq!(
        httpds(h, port),
        1,
        "{}: {svc}: exactly one httpd on {port}",
        h.name
    );
    assert_eq!(
        cgroup_procs(h, root, svc),
        1,
        "{}: {svc}: one process in its cgroup",
        h.name
    );
    let pid = rec.pid.expect("recorded pid");
    h.exec_ok(&format!("kill -0 {pid}"))
        .unwrap_or_else(|e| panic!("{svc}: recorded pid: {e}"));
    let current = h
        .exec_ok(&format!("readlink {root}/releases/{svc}/current"))
        .unwrap_or_default();
    assert_eq!(current.trim(), rec.release, "{}: {svc}: current", h.name);
    h.exec_ok(&format!(
        "test -f {root}/releases/{svc}/{}/.tend/complete",
        rec.release
    ))
    .unwrap_or_else(|e| panic!("{svc}: running release incomplete: {e}"));
    assert_eq!(
        super::apply::get(h, port, "/health").as_deref(),
        Some(body),
        "{}: {svc} answers",
        h.name
    );
    let left = leftovers(h, root);
    assert!(left.is_empty(), "{}: leftovers: {left:?}", h.name);
}
