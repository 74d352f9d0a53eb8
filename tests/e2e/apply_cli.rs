//! The `tend apply` binary against real sshd hosts: a second apply while one
//! runs names the holder of the lock; an apply SIGKILLed mid-way is finished
//! by the next, with nothing lost or duplicated.

use super::apply::{get, procs, record, ROOT};
use super::common::fleet;
use super::common::{self, tend_bin};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use tend_e2e::testbed::Fleet;

/// A manifests dir: every test host, and `services` (YAML documents).
fn manifests(f: &Fleet, services: &[(&str, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut y = common::hosts_yaml(f);
    for (name, doc) in services {
        let src = dir.path().join("services").join(name).join("www");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("health"), format!("{name}\n")).unwrap();
        y.push_str(doc);
        y.push_str("---\n");
    }
    std::fs::write(dir.path().join("fleet.yaml"), y).unwrap();
    dir
}

fn httpd_doc(name: &str, host: &str, port: u16, install: &str, after: &[&str]) -> String {
    format!(
        "apiVersion: tend/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  host: {host}\n  runtime: process\n  version: \"1\"\n  source: {{path: services/{name}}}\n  install: [\"{install}\"]\n  command: [busybox, httpd, -f, -p, \"{port}\", -h, www]\n  ports: [{port}]\n  memory: 32MiB\n  health: {{http: {{port: {port}, path: /health}}, interval: 500ms, timeout: 2s, retries: 6}}\n  dependsOn: [{}]\n",
        after.join(", ")
    )
}

fn apply_cmd(bin: &Path, dir: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(bin);
    c.arg("apply").arg(dir).args(extra).stdin(Stdio::null());
    c
}

/// Start `tend apply --yes` and read its progress until a line contains `until`.
fn start_until(bin: &Path, dir: &Path, until: &str) -> (Child, Vec<String>) {
    let mut child = apply_cmd(bin, dir, &["--yes"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("tend apply starts");
    let mut seen = Vec::new();
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) => {
                let hit = l.contains(until);
                seen.push(l);
                if hit {
                    break;
                }
            }
            _ => panic!("tend apply ended before {until:?}: {seen:#?}"),
        }
    }
    // Keep draining so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, seen)
}

fn run(bin: &Path, dir: &Path, extra: &[&str]) -> (i32, String) {
    common::run(&mut apply_cmd(bin, dir, extra))
}

#[test]
fn a_second_apply_while_one_runs_names_the_holder_of_the_lock() {
    let Some(f) = fleet(
        "a_second_apply_while_one_runs_names_the_holder_of_the_lock",
        1,
    ) else {
        return;
    };
    let bin = tend_bin();
    let h = f.host(0).name.clone();
    let dir = manifests(
        &f,
        &[("slow", httpd_doc("slow", &h, 19010, "sleep 3", &[]))],
    );
    let (mut first, _) = start_until(&bin, dir.path(), "slow: start started");
    let (code, text) = run(&bin, dir.path(), &["--yes"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("locked by controller="), "{text}");
    assert!(text.contains(&format!("pid={}", first.id())), "{text}");
    assert!(first.wait().unwrap().success(), "the first apply converges");
    let (code, text) = run(&bin, dir.path(), &["--dry-run"]);
    assert_eq!(code, 0, "in sync after: {text}");
}

#[test]
fn a_refused_apply_without_yes_on_a_pipe_changes_nothing() {
    let Some(f) = fleet("a_refused_apply_without_yes_on_a_pipe_changes_nothing", 1) else {
        return;
    };
    let bin = tend_bin();
    let h = f.host(0).name.clone();
    let dir = manifests(&f, &[("web", httpd_doc("web", &h, 19020, "true", &[]))]);
    let (code, text) = run(&bin, dir.path(), &[]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("--yes"), "{text}");
    assert!(record(f.host(0), "web").is_none());
    let (code, text) = run(&bin, dir.path(), &["--dry-run"]);
    assert_eq!(code, 2, "dry run shows drift: {text}");
    assert!(text.contains("start web on host0"), "{text}");
    assert!(record(f.host(0), "web").is_none());
}

#[test]
fn an_apply_killed_mid_way_is_finished_by_the_next_with_one_process_per_service() {
    let Some(f) = fleet("an_apply_killed_mid_way_is_finished_by_the_next", 2) else {
        return;
    };
    let bin = tend_bin();
    let (h0, h1) = (f.host(0).name.clone(), f.host(1).name.clone());
    let dir = manifests(
        &f,
        &[
            ("ka", httpd_doc("ka", &h0, 19030, "sleep 1", &[])),
            ("kb", httpd_doc("kb", &h1, 19031, "sleep 1", &["ka"])),
            ("kc", httpd_doc("kc", &h0, 19032, "sleep 1", &["kb"])),
        ],
    );
    // Killed while kb installs (its script runs on, the lease stays behind)...
    let (mut a, _) = start_until(&bin, dir.path(), "kb: start started");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(a.id() as i32, libc::SIGKILL) };
    let _ = a.wait();
    // ...then while kc waits for its health gate.
    let (mut b, _) = start_until(&bin, dir.path(), "kc: start health");
    unsafe { libc::kill(b.id() as i32, libc::SIGKILL) };
    let _ = b.wait();

    let (code, text) = run(&bin, dir.path(), &["--yes"]);
    assert_eq!(code, 0, "{text}");
    let (code, text) = run(&bin, dir.path(), &["--dry-run"]);
    assert_eq!(code, 0, "in sync: {text}");
    for (host, svc, port) in [(0, "ka", 19030), (1, "kb", 19031), (0, "kc", 19032)] {
        let h = f.host(host);
        assert_eq!(procs(h, svc), 1, "{svc}: one process");
        assert_eq!(get(h, port, "/health"), Some(format!("{svc}\n")));
        let rec = record(h, svc).expect("record");
        let releases = h.exec_ok(&format!("ls -a {ROOT}/releases/{svc}")).unwrap();
        assert!(!releases.contains(".tmp-"), "{svc}: {releases}");
        assert!(releases.contains(&rec.release));
    }
    // Three httpds in all on the two hosts' cgroups, no strays.
    let strays = f
        .host(0)
        .exec_ok("pgrep -f '[b]usybox httpd -f -p 1903' | wc -l")
        .unwrap();
    assert_eq!(strays.trim(), "3");
}
