//! What the VM tests share: a manifests dir of process, systemd and podman
//! services for one VM, the `tend` binary run against it, and checks read on
//! the VM itself.

use super::common::tend_bin;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tend_e2e::testbed::VmHost;

pub const ROOT: &str = "/var/lib/tend";
/// Every service's limit; the hogs allocate far past it.
pub const LIMIT: u64 = 48 << 20;

/// (name, runtime, port) of the services every VM test converges.
pub const SERVICES: &[(&str, &str, u16)] = &[
    ("web-proc", "process", 18001),
    ("web-sd", "systemd", 18002),
    ("web-pod", "podman", 18003),
    ("hog-proc", "process", 18004),
    ("hog-sd", "systemd", 18005),
];

/// A python HTTP server: `/health` answers, `/eat` allocates (and touches)
/// 256 MiB, far past the limit.
const HOG: &str = r#"import http.server, sys
hoard = []
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/eat":
            hoard.append(b"\x01" * (256 << 20))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok\n")
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

pub fn service_doc(name: &str, runtime: &str, port: u16, host: &str) -> String {
    // A container's PID 1 gets no default action for SIGTERM: without a
    // handler, systemd waits 90 s for it at every shutdown (seen on the VMs).
    let (delivery, command) = match (runtime, name.starts_with("hog")) {
        ("podman", _) => (
            "image: rootfs:/srv/rootfs".to_string(),
            format!(
                "[/bin/sh, -c, 'httpd -f -p {port} -h /www & p=$!; trap \"kill $p; exit 0\" TERM; wait $p']"
            ),
        ),
        (_, true) => (
            "source: {path: services/hog}".into(),
            format!("[/usr/bin/python3, hog.py, \"{port}\"]"),
        ),
        (_, false) => (
            "source: {path: services/web}".into(),
            format!("[/bin/busybox, httpd, -f, -p, \"{port}\", -h, www]"),
        ),
    };
    format!(
        "apiVersion: tend/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  host: {host}\n  runtime: {runtime}\n  version: \"1\"\n  {delivery}\n  command: {command}\n  ports: [{port}]\n  memory: 48MiB\n  health: {{http: {{port: {port}, path: /health}}, interval: 500ms, timeout: 5s, retries: 60}}\n"
    )
}

/// The manifests dir: the VM and every service of [`SERVICES`].
pub fn manifests(vm: &VmHost) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    std::fs::create_dir_all(p.join("services/web/www")).expect("mkdir");
    std::fs::write(p.join("services/web/www/health"), "ok\n").expect("write");
    std::fs::create_dir_all(p.join("services/hog")).expect("mkdir");
    std::fs::write(p.join("services/hog/hog.py"), HOG).expect("write");
    let mut y = vm.host_doc();
    for (name, rt, port) in SERVICES {
        y.push_str("---\n");
        y.push_str(&service_doc(name, rt, *port, &vm.name));
    }
    std::fs::write(p.join("fleet.yaml"), y).expect("write fleet.yaml");
    dir
}

/// The podman rootfs: the guest's static busybox, httpd and a health file.
pub fn prepare(vm: &VmHost) {
    vm.exec_ok(concat!(
        "set -e; r=/srv/rootfs; mkdir -p $r/bin $r/www $r/tmp $r/proc $r/sys $r/dev $r/etc; ",
        "cp /bin/busybox $r/bin/busybox; for a in sh httpd cat sleep; do ln -sf busybox $r/bin/$a; done; ",
        "echo ok > $r/www/health"
    ))
    .unwrap_or_else(|e| panic!("rootfs: {e:#}\n{}", vm.diagnostics()));
}

/// `tend <args> DIR`: exit code and both streams.
pub fn tend(args: &[&str], dir: &Path) -> (i32, String) {
    let started = Instant::now();
    let out = Command::new(tend_bin())
        .args(&args[..1])
        .arg(dir)
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .expect("tend runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "tend {} took {:.1} s",
        args.join(" "),
        started.elapsed().as_secs_f64()
    );
    (out.status.code().unwrap_or(-1), text)
}

/// `tend apply --yes` must converge (exit 0) and the plan after be clean.
pub fn apply_clean(vm: &VmHost, dir: &Path, when: &str) {
    let (code, text) = tend(&["apply", "--yes"], dir);
    assert_eq!(
        code,
        0,
        "{when}: apply did not converge:\n{text}\n{}",
        vm.diagnostics()
    );
    let (code, text) = tend(&["plan"], dir);
    assert_eq!(code, 0, "{when}: plan not clean after apply:\n{text}");
}

/// The recorded field of a service's record on the VM.
pub fn record_field(vm: &VmHost, svc: &str, key: &str) -> Option<String> {
    let rec = vm.exec_ok(&format!("cat {ROOT}/records/{svc}.rec")).ok()?;
    rec.lines()
        .rev()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
}

/// Every service answers `/health` on the VM, and exactly one process of
/// each listens on its port (no duplicate after a reboot or a repair).
pub fn assert_serving(vm: &VmHost, when: &str) {
    for (name, _, port) in SERVICES {
        let body = vm
            .exec_ok(&format!(
                "curl -fsS --max-time 10 http://127.0.0.1:{port}/health"
            ))
            .unwrap_or_else(|e| panic!("{when}: {name} does not serve: {e:#}"));
        assert_eq!(body.trim(), "ok", "{when}: {name}");
        let ps = vm.exec_ok("ps -eo comm=,args=").expect("ps");
        let n = ps
            .lines()
            .filter(|l| {
                let comm = l.split_whitespace().next().unwrap_or("");
                matches!(comm, "httpd" | "busybox" | "python3")
                    && (l.contains(&format!(" -p {port} "))
                        || l.ends_with(&format!("hog.py {port}")))
            })
            .count();
        assert_eq!(n, 1, "{when}: processes of {name}:\n{ps}");
    }
}

/// The memory limit in force for each service (read in its cgroup on the
/// VM) is the declared one, and no process is left in an ssh session.
pub fn assert_limits(vm: &VmHost, v1: bool) {
    for (name, _, _) in SERVICES {
        let pid = record_field(vm, name, "pid").unwrap_or_else(|| panic!("{name}: no pid"));
        let cgroups = vm
            .exec_ok(&format!("cat /proc/{pid}/cgroup"))
            .expect("cgroup");
        // systemd tracks processes in v2 (`0::`) and, on v1, `name=systemd`.
        let tracked = cgroups
            .lines()
            .filter(|l| l.starts_with("0::") || l.contains(":name=systemd:"));
        for l in tracked {
            assert!(!l.contains("session-"), "{name} in a session: {cgroups}");
        }
        let file = if v1 {
            let cg = cgroups
                .lines()
                .find_map(|l| l.split_once(":memory:").map(|(_, c)| c.to_string()))
                .unwrap_or_else(|| panic!("{name}: no memory cgroup: {cgroups}"));
            format!("/sys/fs/cgroup/memory{cg}/memory.limit_in_bytes")
        } else {
            let cg = cgroups
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .unwrap_or_else(|| panic!("{name}: no v2 cgroup: {cgroups}"));
            format!("/sys/fs/cgroup{cg}/memory.max")
        };
        let limit = vm.exec_ok(&format!("cat {file}")).expect("limit");
        assert_eq!(limit.trim(), LIMIT.to_string(), "{name}: {file}");
    }
}

/// Make a hog allocate past its limit; wait until the kernel killed it.
pub fn eat(vm: &VmHost, name: &str, port: u16) {
    let pid = record_field(vm, name, "pid").expect("hog pid");
    let _ = vm.exec(&format!(
        "curl -s --max-time 20 http://127.0.0.1:{port}/eat"
    ));
    let start = Instant::now();
    while vm.exec_ok(&format!("test -d /proc/{pid}")).is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{name} (pid {pid}) survived allocating past its limit"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Poll `cmd` on the VM every 0.5 s until it exits 0; past `limit`, fail
/// with `what` and the output of `diag`.
pub fn wait_ok(vm: &VmHost, cmd: &str, limit: Duration, what: &str, diag: &str) {
    let start = Instant::now();
    while vm.exec_ok(cmd).is_err() {
        assert!(
            start.elapsed() < limit,
            "{what}:\n{}",
            vm.exec(diag)
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The JSON plan's entry for `svc`.
pub fn plan_entry(dir: &Path, svc: &str) -> (i32, serde_json::Value) {
    let (code, text) = tend(&["plan", "--output", "json"], dir);
    let start = text.find('{').unwrap_or(0);
    let v: serde_json::Value =
        serde_json::from_str(&text[start..]).unwrap_or_else(|e| panic!("plan json: {e}: {text}"));
    let entry = v["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["service"] == svc).cloned())
        .unwrap_or_else(|| panic!("{svc} not in the plan: {text}"));
    (code, entry)
}
