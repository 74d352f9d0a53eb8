//! What the kernel says about processes: memory (VmHWM/VmRSS) and CPU time.

use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot read {path}: {why}")]
    Read { path: String, why: String },
    #[error("{path} has no {field}")]
    Field { path: String, field: &'static str },
}

fn read(path: &str) -> Result<String, ProcError> {
    std::fs::read_to_string(path).map_err(|e| ProcError::Read { path: path.into(), why: e.to_string() })
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

/// (ppid, own utime+stime, reaped children's cutime+cstime) in clock ticks.
fn stat_times(pid: u32) -> Option<(u32, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may hold spaces and parens: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); field N is f[N-3].
    let num = |n: usize| f.get(n - 3).and_then(|x| x.parse::<u64>().ok());
    let ppid = num(4)? as u32;
    Some((ppid, num(14)? + num(15)?, num(16)? + num(17)?))
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU seconds used by `root` and all its living descendants, plus what the
/// ones already reaped left in their parents' cutime/cstime. A child still
/// alive is not in its parent's cutime, so nothing is counted twice.
pub fn tree_cpu_seconds(root: u32) -> f64 {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut times: HashMap<u32, u64> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((ppid, own, reaped)) = stat_times(pid) {
                children.entry(ppid).or_default().push(pid);
                times.insert(pid, own + reaped);
            }
        }
    }
    let mut total = 0u64;
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        total += times.get(&p).copied().unwrap_or(0);
        if let Some(c) = children.get(&p) {
            stack.extend(c);
        }
    }
    total as f64 / clock_ticks()
}

/// cpuacct.usage of a cgroup v1 directory, in seconds.
pub fn cpuacct_seconds(dir: &Path) -> Result<f64, ProcError> {
    let path = dir.join("cpuacct.usage");
    let p = path.display().to_string();
    let text = read(&p)?;
    text.trim()
        .parse::<u64>()
        .map(|ns| ns as f64 / 1e9)
        .map_err(|_| ProcError::Field { path: p, field: "usage" })
}

/// CPU seconds used so far by this process and its reaped children.
pub fn self_cpu_seconds() -> f64 {
    stat_times(std::process::id())
        .map(|(_, own, reaped)| (own + reaped) as f64 / clock_ticks())
        .unwrap_or(0.0)
}
