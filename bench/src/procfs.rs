//! What the kernel says about processes: memory (VmHWM/VmRSS), CPU time, and
//! which processes run under which.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot read {path}: {why}")]
    Read { path: String, why: String },
    #[error("{path} has no {field}")]
    Field { path: String, field: &'static str },
}

fn read(path: &str) -> Result<String, ProcError> {
    std::fs::read_to_string(path).map_err(|e| ProcError::Read {
        path: path.into(),
        why: e.to_string(),
    })
}

/// A `Vm*:` field of /proc/<pid>/status, in bytes.
pub fn status_bytes(pid: u32, field: &'static str) -> Result<u64, ProcError> {
    let path = format!("/proc/{pid}/status");
    let text = read(&path)?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or(ProcError::Field { path, field })
}

/// cpuacct.usage of a cgroup v1 directory, in seconds.
pub fn cpuacct_seconds(dir: &Path) -> Result<f64, ProcError> {
    let path = dir.join("cpuacct.usage");
    let p = path.display().to_string();
    let text = read(&p)?;
    text.trim()
        .parse::<u64>()
        .map(|ns| ns as f64 / 1e9)
        .map_err(|_| ProcError::Field {
            path: p,
            field: "usage",
        })
}

fn rusage_seconds(who: libc::c_int) -> f64 {
    // SAFETY: getrusage fills the struct we pass; zeroed is a valid start.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// user+sys CPU seconds of this process (all threads), microsecond resolution.
pub fn self_cpu_seconds() -> f64 {
    rusage_seconds(libc::RUSAGE_SELF)
}

/// user+sys CPU seconds of the children this process waited for (and theirs).
pub fn children_cpu_seconds() -> f64 {
    rusage_seconds(libc::RUSAGE_CHILDREN)
}

/// The pids whose parent is `pid` (from /proc/PID/stat).
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // The command may hold spaces and ')': fields restart after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|f| f.parse::<i32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// `pid` and every process under it, parents first.
pub fn tree(pid: i32) -> Vec<i32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        all.extend(children_of(all[i]));
        i += 1;
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_tree_holds_the_children_and_grandchildren() {
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sh -c 'sleep 30' & sleep 30 & wait"])
            .spawn()
            .expect("sh");
        let root = sh.id() as i32;
        let mut t = vec![root];
        for _ in 0..100 {
            t = tree(root);
            if t.len() >= 4 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        for &p in t.iter().rev() {
            // SAFETY: kill(2) on this test's own processes.
            unsafe {
                libc::kill(p, libc::SIGKILL);
            }
        }
        let _ = sh.wait();
        // sh, the inner sh, and the two sleeps.
        assert_eq!(t.len(), 4, "{t:?}");
        assert_eq!(t[0], root);
    }
}
