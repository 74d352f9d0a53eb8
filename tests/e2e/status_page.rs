//! The HTML status page, as a browser renders it: a controller over a local
//! host with one service that runs and one that cannot pass its health check,
//! read back with headless Chromium's `--dump-dom`.
//!
//! Needs Chromium (Debian's `chromium`), not root: the host is the machine
//! itself (`address: local`) with its root in a temp dir.

use super::deploy::tool;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// GET over plain HTTP/1.0: the body, when the answer is 200.
pub(crate) fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?;
    (code == "200").then(|| body.to_string())
}

/// Poll `/status` until `done` holds; waiting is bounded, not asserted on.
fn wait_status(
    addr: SocketAddr,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = serde_json::Value::Null;
    while Instant::now() < deadline {
        if let Some(body) = get(addr, "/status") {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
                if done(&v) {
                    return v;
                }
                last = v;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("/status never showed {what}; last:\n{last:#}");
}

fn service<'a>(st: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    st["hosts"]
        .as_array()?
        .iter()
        .flat_map(|h| h["services"].as_array().into_iter().flatten())
        .find(|s| s["name"] == name)
}

/// The DOM after Chromium loaded and rendered `url`.
fn dump_dom(chromium: &Path, profile: &Path, url: &str, screenshot: Option<&Path>) -> String {
    let mut args: Vec<String> = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    match screenshot {
        Some(p) => {
            args.push("--window-size=1280,900".into());
            args.push(format!("--screenshot={}", p.display()));
        }
        None => args.push("--dump-dom".into()),
    }
    args.push(url.into());
    let mut child = Command::new(chromium)
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", chromium.display()));
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    // A browser that hangs must not hang the test run.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish loading {url}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let dom = reader.join().unwrap();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(status.success(), "chromium: {status}\n{err}");
    dom
}

/// The `<tr …>…</tr>` of the element with `id`.
fn row<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element {id} in the page:\n{dom}"));
    let start = dom[..at].rfind("<tr").expect("the element is a table row");
    let end = at + dom[at..].find("</tr>").expect("the row ends");
    &dom[start..end]
}

/// Stops what the test's services left running on this machine, by their
/// records (pid checked against its start time), and removes their cgroups.
struct Leftovers {
    root: PathBuf,
    services: Vec<String>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for svc in &self.services {
            let rec = std::fs::read_to_string(self.root.join(format!("records/{svc}.rec")))
                .unwrap_or_default();
            let field = |k: &str| {
                rec.lines()
                    .rev()
                    .find_map(|l| l.strip_prefix(k))
                    .map(str::to_string)
            };
            if let (Some(pid), Some(start)) = (field("pid="), field("start_time=")) {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                // Field 22, counted after the parenthesised command name.
                let started = stat
                    .rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().nth(19));
                if started == Some(start.as_str()) {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // SAFETY: kill(2) on a pid we just checked is our service.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                        let gone = Instant::now() + Duration::from_secs(10);
                        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < gone {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
            }
            let name = tend::runtime::cgroup_name(&self.root.to_string_lossy(), svc);
            for cg in [
                format!("/sys/fs/cgroup/memory/tend/{name}"),
                format!("/sys/fs/cgroup/tend/{name}"),
            ] {
                let _ = std::fs::remove_dir(cg);
            }
        }
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A controller in this process over one local host with two services:
/// `ok` runs, `bad` exits at once so its health check on its own port never
/// passes — every reconcile tries to start it and it stays drifted.
pub(crate) struct DriftedFleet {
    rt: tokio::runtime::Runtime,
    running: Option<tend::controller::Running>,
    pub addr: SocketAddr,
    pub host: String,
    pub ok: String,
    pub bad: String,
    pub manifests: PathBuf,
    _leftovers: Leftovers,
    // Last: the records must still be there when the leftovers are stopped.
    pub tmp: tempfile::TempDir,
}

impl DriftedFleet {
    /// `prefix` keeps names apart from other tests in this process (cgroups
    /// are named after services, machine-wide).
    pub fn start(prefix: &str) -> DriftedFleet {
        let tmp = tempfile::tempdir().unwrap();
        let id = std::process::id();
        let (host, ok, bad) = (
            format!("{prefix}-{id}"),
            format!("{prefix}-ok-{id}"),
            format!("{prefix}-drift-{id}"),
        );
        let root = tmp.path().join("hostroot");
        let manifests = tmp.path().join("repo/manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        let leftovers = Leftovers {
            root: root.clone(),
            services: vec![ok.clone(), bad.clone()],
        };
        let port = free_port();
        let fleet = [
            "apiVersion: tend/v1".to_string(),
            "kind: Host".into(),
            format!("metadata: {{name: {host}, labels: {{role: page}}}}"),
            format!("spec: {{address: local, root: {}}}", root.display()),
            "---".into(),
            "apiVersion: tend/v1".into(),
            "kind: Service".into(),
            format!("metadata: {{name: {ok}}}"),
            format!(
                "spec: {{host: {host}, runtime: process, version: '1', command: [sleep, '600']}}"
            ),
            "---".into(),
            "apiVersion: tend/v1".into(),
            "kind: Service".into(),
            format!("metadata: {{name: {bad}}}"),
            "spec:".into(),
            format!("  host: {host}"),
            "  runtime: process".into(),
            "  version: '1'".into(),
            "  command: [sh, -c, exit 3]".into(),
            format!("  ports: [{port}]"),
            format!("  health: {{tcp: {{port: {port}}}, interval: 1s, timeout: 2s}}"),
        ];
        std::fs::write(manifests.join("fleet.yaml"), fleet.join("\n") + "\n").unwrap();
        let cfg = tend::config::Config::parse(
            &format!(
                "repository: {}\npath: manifests\nschedule: '*/2 * * * * *'\nlisten: 127.0.0.1:0\n\
cache_dir: {}\nident: tend@{prefix}-test\n",
                tmp.path().join("repo").display(),
                tmp.path().join("cache").display()
            ),
            "tend.yaml",
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let running = rt.block_on(tend::controller::spawn(cfg)).unwrap();
        let addr = running.addr;
        DriftedFleet {
            rt,
            running: Some(running),
            addr,
            host,
            ok,
            bad,
            manifests,
            _leftovers: leftovers,
            tmp,
        }
    }

    /// `/status` once `ok` is in sync and `bad` drifted after a failed start.
    pub fn wait_drifted(&self) -> serde_json::Value {
        wait_status(
            self.addr,
            "one service in sync and one drifted after a failed start",
            |v| {
                service(v, &self.ok).is_some_and(|s| s["status"] == "in_sync")
                    && service(v, &self.bad).is_some_and(|s| {
                        s["status"] == "drifted" && s["last_action"]["result"] == "failed"
                    })
            },
        )
    }

    /// Add a manifest that does not validate; `/status` once it is refused.
    pub fn refuse_manifests(&self) -> serde_json::Value {
        std::fs::write(
            self.manifests.join("broken.yaml"),
            "apiVersion: tend/v1\nkind: Service\nmetadata: {name: x}\nspec: {nonsense: 1}\n",
        )
        .unwrap();
        wait_status(self.addr, "the newest revision refused", |v| {
            v["source"]["manifests_valid"] == false
        })
    }
}

impl Drop for DriftedFleet {
    fn drop(&mut self) {
        // Stop the controller first, or it would start what Leftovers stops.
        if let Some(r) = self.running.take() {
            self.rt.block_on(r.stop());
        }
    }
}

#[test]
fn the_status_page_renders_the_fleet_and_shows_a_drifted_service_as_drifted() {
    let test = "the_status_page_renders_the_fleet_and_shows_a_drifted_service_as_drifted";
    let Some(chromium) = tool("chromium", "chromium", test) else {
        return;
    };
    let fleet = DriftedFleet::start("page");
    let (addr, host, ok, bad) = (fleet.addr, &fleet.host, &fleet.ok, &fleet.bad);
    let st = fleet.wait_drifted();
    let reasons: Vec<String> = service(&st, bad).unwrap()["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    assert!(!reasons.is_empty());

    let profile = fleet.tmp.path().join("chromium");
    let url = format!("http://{addr}/");
    let dom = dump_dom(&chromium, &profile, &url, None);
    // The fleet: the host, up, with both services.
    assert!(dom.contains(&format!("id=\"host-{host}\"")), "{dom}");
    assert!(dom.contains("2 services"), "{dom}");
    assert!(dom.contains("1 drifted"), "{dom}");
    let ok_row = row(&dom, &format!("svc-{host}-{ok}"));
    assert!(ok_row.starts_with("<tr class=\"in_sync\""), "{ok_row}");
    assert!(ok_row.contains(">in sync<"), "{ok_row}");
    // The drifted one says so, with the reasons /status gives and its failed start.
    let bad_row = row(&dom, &format!("svc-{host}-{bad}"));
    assert!(bad_row.starts_with("<tr class=\"drifted\""), "{bad_row}");
    assert!(bad_row.contains(">drifted<"), "{bad_row}");
    for r in &reasons {
        assert!(
            bad_row.contains(r.as_str()),
            "reason {r} not shown: {bad_row}"
        );
    }
    assert!(bad_row.contains("start failed"), "{bad_row}");
    if let Some(dir) = std::env::var_os("TEND_SCREENSHOT_DIR") {
        let png = PathBuf::from(dir).join("status-page.png");
        dump_dom(&chromium, &profile, &url, Some(&png));
        println!("screenshot: {}", png.display());
    }

    // A refused revision: the page says so and the fleet stays as it was.
    fleet.refuse_manifests();
    let dom = dump_dom(&chromium, &profile, &url, None);
    let manifests_cell = row(&dom, "manifests");
    assert!(manifests_cell.contains("class=\"bad\""), "{manifests_cell}");
    assert!(manifests_cell.contains("refused"), "{manifests_cell}");
    assert!(
        dom.contains(&format!("id=\"svc-{host}-{ok}\"")),
        "the fleet vanished: {dom}"
    );
}
