//! Fault: invalid manifests given to `tend apply --yes` on a real host. The
//! load fails, nothing reaches the host (no login, nothing written), and the
//! error names the file and line. (The 10 000-case generator is
//! controller/tests/fuzz_manifests.rs; this is the same promise end to end.)

use super::common::fleet;
use super::common::{tend_bin, write_manifests, Svc};
use std::process::{Command, Stdio};

/// (what is wrong, the line as it replaces `from`, `from`).
fn breakages() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        ("misspelt field", "  prots: [19701]", "  ports: [19701]"),
        ("port out of range", "  ports: [70000]", "  ports: [19701]"),
        ("unknown runtime", "  runtime: procss", "  runtime: process"),
        ("unknown host", "  host: nowhere", "  host: HOST"),
        ("bad memory", "  memory: 32MeB", "  memory: 32MiB"),
        (
            "unclosed list",
            "  command: [busybox, httpd",
            "  command: [busybox, httpd, -f, -p, \"19701\", -h, www]",
        ),
        ("tab indent", "\tmemory: 32MiB", "  memory: 32MiB"),
        (
            "unknown dependency",
            "  dependsOn: [ghost]",
            "  dependsOn: []",
        ),
    ]
}

#[test]
fn invalid_manifests_reach_no_host_and_name_file_and_line() {
    let Some(f) = fleet("invalid_manifests_reach_no_host", 1) else {
        return;
    };
    let bin = tend_bin();
    let h = f.host(0);
    for (what, bad, good) in breakages() {
        let dir = tempfile::tempdir().unwrap();
        write_manifests(dir.path(), &f, &[Svc::new("fm", &h.name, 19701, "1")]);
        let path = dir.path().join("fleet.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let good = good.replace("HOST", &h.name);
        assert!(
            text.contains(&good),
            "{what}: {good:?} not in the manifests"
        );
        std::fs::write(&path, text.replacen(&good, bad, 1)).unwrap();
        let out = Command::new(&bin)
            .arg("apply")
            .arg(dir.path())
            .arg("--yes")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("tend apply runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        let line = err
            .lines()
            .find_map(|l| l.strip_prefix("fleet.yaml:"))
            .and_then(|rest| rest.split(':').next())
            .and_then(|n| n.parse::<usize>().ok());
        assert!(
            line.is_some_and(|n| n > 1),
            "{what}: no fleet.yaml:<line> in {err}"
        );
        assert_eq!(h.accepted_logins(), 0, "{what}: tend logged in to the host");
        let left = h.exec_ok("ls -A /var/lib/tend").unwrap();
        assert_eq!(left.trim(), "", "{what}: something reached the host");
    }
}
