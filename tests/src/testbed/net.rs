//! Commands, locks, fleet numbers and the sweeping of leftovers.

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, Once};
use std::time::Duration;

/// Lock files (one per fleet number) live here; tmpfs, so a reboot clears them.
pub(crate) const LOCK_DIR: &str = "/run/tend-testbed";
/// Per-fleet files (keys, sshd configs, host file trees). Not under a path the
/// hosts shadow with their own mounts, so sshd inside can read its config.
pub(crate) const FLEET_ROOT: &str = "/var/tmp/tend-testbed";
/// Per-host cgroups live under `<hierarchy>/tend-testbed/f<N>/<host>`.
pub(crate) const CGROUP_SUBDIR: &str = "tend-testbed";
const MAX_FLEET: u8 = 250;

pub(crate) fn netns_name(fleet: u8, i: usize) -> String {
    format!("tend-f{fleet}-h{i}")
}
pub(crate) fn bridge_name(fleet: u8) -> String {
    format!("tendbr{fleet}")
}
pub(crate) fn veth_name(fleet: u8, i: usize) -> String {
    format!("tdv{fleet}x{i}")
}
pub(crate) fn peer_name(fleet: u8, i: usize) -> String {
    format!("tdp{fleet}x{i}")
}
pub(crate) fn fleet_dir(fleet: u8) -> PathBuf {
    Path::new(FLEET_ROOT).join(format!("f{fleet}"))
}

/// Run a command; its stdout on success, an error naming it and its stderr otherwise.
pub(crate) fn run(prog: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {prog}"))?;
    if !out.status.success() {
        bail!(
            "`{prog} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Best effort, for teardown: errors are ignored.
pub(crate) fn run_quiet(prog: &str, args: &[&str]) {
    let _ = Command::new(prog).args(args).output();
}

fn flock(file: &File, op: libc::c_int) -> bool {
    // SAFETY: the fd is valid for the life of `file`.
    unsafe { libc::flock(file.as_raw_fd(), op) == 0 }
}

fn open_lock(path: &Path) -> Result<File> {
    std::fs::create_dir_all(LOCK_DIR).with_context(|| format!("mkdir {LOCK_DIR}"))?;
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))
}

/// Held while a fleet lives: its number (and subnet) is ours. flock conflicts
/// between open file descriptions, so this works across threads and processes,
/// and the kernel drops it when a crashed process dies.
pub(crate) struct FleetLock {
    pub number: u8,
    _file: File,
}

fn try_lock_fleet(n: u8) -> Result<Option<FleetLock>> {
    let file = open_lock(&Path::new(LOCK_DIR).join(format!("fleet-{n}.lock")))?;
    if flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(Some(FleetLock {
            number: n,
            _file: file,
        }))
    } else {
        Ok(None)
    }
}

/// Take a free fleet number and clear whatever a crashed run left under it.
pub(crate) fn allocate_fleet() -> Result<FleetLock> {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(sweep_stale);
    for n in 1..=MAX_FLEET {
        if let Some(lock) = try_lock_fleet(n)? {
            cleanup_fleet(n);
            return Ok(lock);
        }
    }
    bail!("all {MAX_FLEET} test fleet numbers are in use")
}

/// Namespace + veth creation must not run in parallel ("Peer netns reference
/// is invalid"): one process-wide mutex plus one machine-wide flock.
pub(crate) struct NetnsGuard {
    _file: File,
    _guard: MutexGuard<'static, ()>,
}

pub(crate) fn netns_guard() -> Result<NetnsGuard> {
    static M: Mutex<()> = Mutex::new(());
    let guard = M.lock().unwrap_or_else(|p| p.into_inner());
    let file = open_lock(&Path::new(LOCK_DIR).join("netns.lock"))?;
    if !flock(&file, libc::LOCK_EX) {
        bail!("cannot lock {LOCK_DIR}/netns.lock");
    }
    Ok(NetnsGuard {
        _file: file,
        _guard: guard,
    })
}

/// Fleet numbers that have something left on the machine.
fn leftover_numbers() -> Vec<u8> {
    let mut found = std::collections::BTreeSet::new();
    let parse = |s: &str, prefix: &str| -> Option<u8> {
        let rest = s.strip_prefix(prefix)?;
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        digits.parse().ok()
    };
    if let Ok(list) = run("ip", &["netns", "list"]) {
        for line in list.lines() {
            if let Some(n) = line
                .split_whitespace()
                .next()
                .and_then(|s| parse(s, "tend-f"))
            {
                found.insert(n);
            }
        }
    }
    if let Ok(links) = run("ip", &["-o", "link", "show"]) {
        for line in links.lines() {
            if let Some(name) = line.split(": ").nth(1) {
                let name = name.split('@').next().unwrap_or("");
                if let Some(n) = parse(name, "tendbr").or_else(|| parse(name, "tdv")) {
                    found.insert(n);
                }
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(FLEET_ROOT) {
        for e in rd.flatten() {
            if let Some(n) = parse(&e.file_name().to_string_lossy(), "f") {
                found.insert(n);
            }
        }
    }
    for h in cgroup_hierarchies() {
        if let Ok(rd) = std::fs::read_dir(h.root_path.join(CGROUP_SUBDIR)) {
            for e in rd.flatten() {
                if let Some(n) = parse(&e.file_name().to_string_lossy(), "f") {
                    found.insert(n);
                }
            }
        }
    }
    found.into_iter().collect()
}

/// Clear leftovers of fleets whose owner is gone (their lock is free).
fn sweep_stale() {
    for n in leftover_numbers() {
        if let Ok(Some(_lock)) = try_lock_fleet(n) {
            cleanup_fleet(n);
        }
    }
}

pub(crate) fn pids_in_netns(ns: &str) -> Vec<i32> {
    run("ip", &["netns", "pids", ns])
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn kill_all(pids: &[i32]) {
    for &p in pids {
        if p > 1 {
            // SAFETY: plain syscall; a stale pid gives ESRCH, which is fine.
            unsafe {
                libc::kill(p, libc::SIGKILL);
            }
        }
    }
}

/// Kill every process in the namespace (bounded retries), then delete it.
pub(crate) fn destroy_netns(ns: &str) {
    for _ in 0..100 {
        let pids = pids_in_netns(ns);
        if pids.is_empty() {
            break;
        }
        kill_all(&pids);
        std::thread::sleep(Duration::from_millis(20));
    }
    run_quiet("ip", &["netns", "del", ns]);
}

/// Remove everything fleet `n` may have left: namespaces and their processes,
/// links, cgroups, files.
pub(crate) fn cleanup_fleet(n: u8) {
    let prefix = format!("tend-f{n}-");
    if let Ok(list) = run("ip", &["netns", "list"]) {
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if ns.starts_with(&prefix) {
                destroy_netns(ns);
            }
        }
    }
    if let Ok(links) = run("ip", &["-o", "link", "show"]) {
        let veth = format!("tdv{n}x");
        for line in links.lines() {
            if let Some(name) = line.split(": ").nth(1) {
                let name = name.split('@').next().unwrap_or("");
                let ours = name
                    .strip_prefix(&veth)
                    .is_some_and(|r| r.chars().all(|c| c.is_ascii_digit()));
                if ours {
                    run_quiet("ip", &["link", "del", name]);
                }
            }
        }
    }
    run_quiet("ip", &["link", "del", &bridge_name(n)]);
    for h in cgroup_hierarchies() {
        remove_cgroup_tree(&h.root_path.join(CGROUP_SUBDIR).join(format!("f{n}")));
    }
    let _ = std::fs::remove_dir_all(fleet_dir(n));
}

/// Kill what is left in a cgroup tree and remove it, deepest first.
pub(crate) fn remove_cgroup_tree(dir: &Path) {
    if !dir.exists() {
        return;
    }
    for _ in 0..50 {
        let mut dirs = Vec::new();
        collect_dirs(dir, &mut dirs);
        let mut pids = Vec::new();
        for d in &dirs {
            if let Ok(s) = std::fs::read_to_string(d.join("cgroup.procs")) {
                pids.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
        kill_all(&pids);
        // Deepest first: children listed after their parents.
        for d in dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
        if !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

/// One cgroup v1 hierarchy of the machine.
#[derive(Debug, Clone)]
pub(crate) struct Hierarchy {
    /// Directory name under /sys/fs/cgroup ("memory", "cpu,cpuacct", ...).
    pub dir: String,
    /// Mount options naming its controllers ("memory", "name=systemd").
    pub opts: String,
    pub root_path: PathBuf,
}

/// cgroup v1 hierarchies mounted under /sys/fs/cgroup (cgroup2 is left out
/// on purpose: crun refuses hybrid mode).
pub(crate) fn cgroup_hierarchies() -> Vec<Hierarchy> {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return Vec::new();
    };
    let generic = [
        "rw", "ro", "relatime", "noatime", "nosuid", "nodev", "noexec", "seclabel",
    ];
    let mut out = Vec::new();
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 || f[2] != "cgroup" {
            continue;
        }
        let Some(dir) = f[1].strip_prefix("/sys/fs/cgroup/") else {
            continue;
        };
        if dir.contains('/') {
            continue;
        }
        let opts: Vec<&str> = f[3].split(',').filter(|o| !generic.contains(o)).collect();
        if opts.is_empty() {
            continue;
        }
        out.push(Hierarchy {
            dir: dir.to_string(),
            opts: opts.join(","),
            root_path: PathBuf::from(f[1]),
        });
    }
    out
}

/// mkdir -p a cgroup, seeding cpuset.cpus/mems from the parent at each level
/// (a fresh cpuset cgroup is empty and refuses tasks).
pub(crate) fn make_cgroup(root: &Path, rel: &Path) -> Result<PathBuf> {
    let mut cur = root.to_path_buf();
    for comp in rel.components() {
        let parent = cur.clone();
        cur.push(comp);
        if !cur.exists() {
            std::fs::create_dir(&cur).with_context(|| format!("mkdir {}", cur.display()))?;
        }
        for f in ["cpuset.cpus", "cpuset.mems"] {
            let mine = cur.join(f);
            if mine.exists()
                && std::fs::read_to_string(&mine)
                    .map(|s| s.trim().is_empty())
                    .unwrap_or(false)
            {
                let theirs = std::fs::read_to_string(parent.join(f)).unwrap_or_default();
                std::fs::write(&mine, theirs.trim())
                    .with_context(|| format!("write {}", mine.display()))?;
            }
        }
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_of_a_crashed_run_are_swept_when_their_number_is_free() {
        if !crate::testbed::skip_unless_e2e(
            "leftovers_of_a_crashed_run_are_swept_when_their_number_is_free",
        ) {
            return;
        }
        // What a run killed mid-test leaves: a namespace with a live process,
        // a bridge, a fleet dir; and nobody holds fleet 249's lock.
        let n = 249;
        let ns = netns_name(n, 0);
        let mut child = {
            let _g = netns_guard().unwrap();
            run("ip", &["netns", "add", &ns]).unwrap();
            run("ip", &["link", "add", &bridge_name(n), "type", "bridge"]).unwrap();
            Command::new("ip")
                .args(["netns", "exec", &ns, "sleep", "600"])
                .spawn()
                .unwrap()
        };
        std::fs::create_dir_all(fleet_dir(n)).unwrap();
        assert!(leftover_numbers().contains(&n));
        sweep_stale();
        let status = child.wait().unwrap();
        assert!(!status.success(), "the stray process was not killed");
        assert!(!run("ip", &["netns", "list"]).unwrap().contains(&ns));
        assert!(!run("ip", &["-o", "link", "show"])
            .unwrap()
            .contains(&format!("{}:", bridge_name(n))));
        assert!(!fleet_dir(n).exists());
    }
}
