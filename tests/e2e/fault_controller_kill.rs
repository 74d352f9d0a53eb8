//! Fault: the controller (`tend apply`) SIGKILLed at 22 different points of
//! a multi-host apply — after its k-th progress line, k = 0..=21 — and run
//! again each time. Every restart converges the fleet: each service runs
//! exactly once, at the new version, its record parses, nothing temporary
//! is left behind.

use super::apply::ROOT;
use super::common::checks::assert_intact;
use super::common::fleet;
use super::common::{self, tend_bin, write_manifests, Svc};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

const POINTS: usize = 22;

/// Start `tend apply --yes`, SIGKILL it after its k-th progress line (or as
/// soon as it started, k = 0). Returns the lines seen and whether it was
/// still running (killed mid-way) rather than done.
fn apply_killed_after(bin: &Path, dir: &Path, k: usize) -> (Vec<String>, bool) {
    let mut child = Command::new(bin)
        .arg("apply")
        .arg(dir)
        .arg("--yes")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tend apply starts");
    let mut seen = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while seen.len() < k {
        match lines.next() {
            Some(Ok(l)) => seen.push(l),
            _ => break,
        }
    }
    // SAFETY: kill(2) on our own child's pid (not yet reaped).
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let status = child.wait().expect("wait");
    use std::os::unix::process::ExitStatusExt;
    (seen, status.signal() == Some(libc::SIGKILL))
}

fn apply_to_the_end(bin: &Path, dir: &Path) -> (i32, String) {
    let mut cmd = Command::new(bin);
    cmd.arg("apply").arg(dir).arg("--yes").stdin(Stdio::null());
    common::run(&mut cmd)
}

#[test]
fn a_controller_killed_at_22_points_of_an_apply_leaves_a_fleet_the_next_run_converges() {
    let Some(f) = fleet("a_controller_killed_at_22_points_of_an_apply", 3) else {
        return;
    };
    let bin = tend_bin();
    let dir = tempfile::tempdir().unwrap();
    let (h0, h1, h2) = (
        f.host(0).name.clone(),
        f.host(1).name.clone(),
        f.host(2).name.clone(),
    );
    // Four services on three hosts; kb waits for ka (another host).
    let fleet_at = |v: usize| {
        let v = v.to_string();
        let mut b = Svc::new("kb", &h1, 19302, &v);
        b.after = vec!["ka".into()];
        vec![
            (0, Svc::new("ka", &h0, 19301, &v)),
            (1, b),
            (2, Svc::new("kc", &h2, 19303, &v)),
            (0, Svc::new("kd", &h0, 19304, &v)),
        ]
    };
    let mut killed_at = BTreeSet::new();
    for k in 0..POINTS {
        // Each round upgrades everything, so every kill lands in real work.
        let svcs = fleet_at(k + 1);
        let plain: Vec<Svc> = svcs.iter().map(|(_, s)| s.clone()).collect();
        write_manifests(dir.path(), &f, &plain);
        let (seen, mid_way) = apply_killed_after(&bin, dir.path(), k);
        if mid_way {
            killed_at.insert(k);
        }
        println!(
            "round {k}: killed {} after {:?}",
            if mid_way {
                "mid-apply"
            } else {
                "after the end"
            },
            seen.last()
        );

        let (code, text) = apply_to_the_end(&bin, dir.path());
        assert_eq!(
            code,
            0,
            "restart after a kill at line {k} ({:?}):\n{text}",
            seen.last()
        );
        for (i, s) in &svcs {
            assert_intact(f.host(*i), ROOT, &s.name, s.port, &s.version, &s.body());
        }
        // Nothing else tend knows of on any host.
        for h in f.hosts() {
            let recs = super::common::checks::all_records(h, ROOT);
            let names: Vec<&String> = recs.keys().collect();
            let want: Vec<String> = svcs
                .iter()
                .filter(|(i, _)| f.host(*i).name == h.name)
                .map(|(_, s)| s.name.clone())
                .collect();
            let want: Vec<&String> = want.iter().collect();
            assert_eq!(names, want, "{}: records", h.name);
        }
    }
    assert!(
        killed_at.len() >= 20,
        "only {} of {POINTS} kills landed mid-apply: {killed_at:?}",
        killed_at.len()
    );
}
