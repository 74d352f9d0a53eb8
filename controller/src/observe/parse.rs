//! Parse the probe's output into a [`HostState`]. Strict: an unknown line,
//! a missing fact or a missing/short `end` line is an error.
//!
//! The output, one fact per line:
//! ```text
//! tend-probe 1
//! hostname NAME
//! boot_id ID
//! meminfo TOTAL_KB AVAILABLE_KB      ("-" when unknown)
//! cgroup v1|v2|none
//! listen PORT INODE                  (every TCP listener, v4 and v6)
//! record FILE                        (one block per <root>/records/FILE.rec)
//! | LINE                             (the record's text, verbatim)
//! endrecord
//! proc PID STATE STARTTIME           (the recorded pid, if it exists and
//!                                     is not in the record's cgroup)
//! memory USAGE LIMIT OOM_KILLS       (the record's cgroup: "-"/"max" when none)
//! procs PID...                       (the cgroup's processes)
//! listeners known                    (listen lines are the known sockets only)
//! sock PID INODE FD COMM             (a holder of a listener's socket)
//! check SERVICE EXIT                 ("-": not run)
//! end N                              (N = lines before this one)
//! ```

use super::ObserveError;
use crate::model::{CgroupMode, HeldSocket, HostFacts, HostState, Listener, ObservedService};
use crate::record::{Record, RuntimeKind};
use std::collections::{BTreeMap, HashMap};

const HEADER: &str = "tend-probe 1";
/// cgroup v1 reports "no limit" as a huge page-aligned number.
const V1_UNLIMITED: u64 = 1 << 62;

/// One `sock` line: fd `fd` of `pid` is socket `ino`.
struct Sock {
    pid: u32,
    ino: u64,
    fd: Option<u32>,
    comm: String,
}

#[derive(Default)]
struct RawRecord {
    file: String,
    text: String,
    closed: bool,
    /// pid, state, start time from /proc/PID/stat.
    proc_: Option<(u32, String, u64)>,
    /// usage, limit, oom kills (raw words).
    memory: Option<(String, String, String)>,
    procs: Option<Vec<u32>>,
}

pub fn parse(stdout: &[u8]) -> Result<HostState, ObserveError> {
    let text = String::from_utf8_lossy(stdout);
    let Some(body) = text.strip_suffix('\n') else {
        return Err(if text.starts_with(HEADER) || HEADER.starts_with(&*text) {
            ObserveError::Truncated
        } else {
            ObserveError::Header
        });
    };
    let lines: Vec<&str> = body.split('\n').collect();
    if lines.first() != Some(&HEADER) {
        return Err(ObserveError::Header);
    }
    let count = lines
        .last()
        .and_then(|l| l.strip_prefix("end "))
        .and_then(|n| n.parse::<usize>().ok())
        .ok_or(ObserveError::Truncated)?;
    if count != lines.len() - 1 {
        return Err(ObserveError::Truncated);
    }

    let mut hostname = None;
    let mut boot_id = None;
    let mut meminfo = None;
    let mut cgroup = None;
    let mut listens: Vec<(u16, u64)> = Vec::new();
    let mut records: Vec<RawRecord> = Vec::new();
    let mut socks: Vec<Sock> = Vec::new();
    let mut checks: HashMap<String, Option<bool>> = HashMap::new();

    for (i, line) in lines[1..lines.len() - 1].iter().enumerate() {
        let n = i + 2;
        let bad = |why: String| ObserveError::Line { line: n, why };
        let open = records.last().is_some_and(|r| !r.closed);
        if open {
            if let Some(t) = line.strip_prefix("| ") {
                if let Some(r) = records.last_mut() {
                    r.text.push_str(t);
                    r.text.push('\n');
                }
                continue;
            }
            if *line == "endrecord" {
                if let Some(r) = records.last_mut() {
                    r.closed = true;
                }
                continue;
            }
            return Err(bad(format!("unterminated record before {line:?}")));
        }
        let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
        let words: Vec<&str> = rest.split(' ').filter(|w| !w.is_empty()).collect();
        let num = |w: Option<&&str>, what: &str| -> Result<u64, ObserveError> {
            w.and_then(|w| w.parse::<u64>().ok())
                .ok_or_else(|| bad(format!("{tag}: bad {what} in {line:?}")))
        };
        let once = |slot: bool| {
            if slot {
                Err(bad(format!("{tag} given twice")))
            } else {
                Ok(())
            }
        };
        match tag {
            "hostname" => {
                once(hostname.is_some())?;
                hostname = Some(rest.to_string());
            }
            "boot_id" => {
                once(boot_id.is_some())?;
                boot_id = Some(rest.to_string());
            }
            "meminfo" => {
                once(meminfo.is_some())?;
                let kb = |w: Option<&&str>| -> Result<u64, ObserveError> {
                    match w {
                        Some(&"-") => Ok(0),
                        _ => num(w, "kB").map(|k| k.saturating_mul(1024)),
                    }
                };
                if words.len() != 2 {
                    return Err(bad(format!("meminfo: {line:?}")));
                }
                meminfo = Some((kb(words.first())?, kb(words.get(1))?));
            }
            "cgroup" => {
                once(cgroup.is_some())?;
                cgroup = Some(match rest {
                    "v1" => CgroupMode::V1,
                    "v2" => CgroupMode::V2,
                    "none" => CgroupMode::None,
                    _ => return Err(bad(format!("cgroup mode {rest:?}"))),
                });
            }
            "listen" => {
                let port = u16::try_from(num(words.first(), "port")?)
                    .map_err(|_| bad(format!("port out of range in {line:?}")))?;
                listens.push((port, num(words.get(1), "inode")?));
            }
            "record" => {
                if rest.is_empty() {
                    return Err(bad("record without a name".into()));
                }
                records.push(RawRecord {
                    file: rest.to_string(),
                    ..RawRecord::default()
                });
            }
            "proc" | "memory" | "procs" => {
                let Some(r) = records.last_mut() else {
                    return Err(bad(format!("{tag} outside a record")));
                };
                match tag {
                    "proc" => {
                        if r.proc_.is_some() || words.len() != 3 {
                            return Err(bad(format!("proc: {line:?}")));
                        }
                        let pid = u32::try_from(num(words.first(), "pid")?)
                            .map_err(|_| bad("pid out of range".into()))?;
                        r.proc_ =
                            Some((pid, words[1].to_string(), num(words.get(2), "start time")?));
                    }
                    "memory" => {
                        if r.memory.is_some() || words.len() != 3 {
                            return Err(bad(format!("memory: {line:?}")));
                        }
                        r.memory = Some((words[0].into(), words[1].into(), words[2].into()));
                    }
                    _ => {
                        if r.procs.is_some() {
                            return Err(bad("procs given twice".into()));
                        }
                        let pids = words
                            .iter()
                            .map(|w| w.parse::<u32>().map_err(|_| bad(format!("pid {w:?}"))))
                            .collect::<Result<Vec<u32>, _>>()?;
                        r.procs = Some(pids);
                    }
                }
            }
            "sock" => {
                let mut it = rest.splitn(4, ' ');
                let pid = it.next().and_then(|w| w.parse::<u32>().ok());
                let ino = it.next().and_then(|w| w.parse::<u64>().ok());
                let fd = it.next();
                let (Some(pid), Some(ino), Some(fd)) = (pid, ino, fd) else {
                    return Err(bad(format!("sock: {line:?}")));
                };
                socks.push(Sock {
                    pid,
                    ino,
                    fd: fd.parse().ok(),
                    comm: it.next().unwrap_or("").to_string(),
                });
            }
            "listeners" if rest == "known" => {}
            "check" => {
                let Some((name, rc)) = rest.rsplit_once(' ') else {
                    return Err(bad(format!("check: {line:?}")));
                };
                let result = match rc {
                    "-" => None,
                    rc => Some(
                        rc.parse::<i64>()
                            .map_err(|_| bad(format!("exit code {rc:?}")))?
                            == 0,
                    ),
                };
                checks.insert(name.to_string(), result);
            }
            _ => return Err(bad(format!("unexpected line {line:?}"))),
        }
    }
    if records.last().is_some_and(|r| !r.closed) {
        return Err(ObserveError::Truncated);
    }
    let missing = |what: &str| ObserveError::Line {
        line: lines.len(),
        why: format!("no {what} line"),
    };
    let (mem_total, mem_available) = meminfo.ok_or_else(|| missing("meminfo"))?;
    let facts = HostFacts {
        hostname: hostname.ok_or_else(|| missing("hostname"))?,
        mem_total,
        mem_available,
        cgroup: cgroup.ok_or_else(|| missing("cgroup"))?,
        boot_id: boot_id.ok_or_else(|| missing("boot_id"))?,
    };

    let mut services = BTreeMap::new();
    let mut owner: HashMap<u32, String> = HashMap::new();
    let mut bad_records = BTreeMap::new();
    for raw in records {
        let record = match Record::parse(&raw.text) {
            Ok(r) if r.name == raw.file => r,
            bad => {
                let why = match bad {
                    Ok(r) => format!("names service {:?}", r.name),
                    Err(e) => e.to_string(),
                };
                let e = ObserveError::Record {
                    file: raw.file.clone(),
                    why,
                };
                // The processes its cgroup lists are still its own, not
                // strangers on its ports.
                for p in raw.procs.iter().flatten() {
                    owner.insert(*p, raw.file.clone());
                }
                bad_records.insert(raw.file.clone(), e.to_string());
                continue;
            }
        };
        let running = judge_running(&record, &raw, &facts.boot_id);
        match (&raw.procs, running, record.pid) {
            (Some(pids), _, _) => {
                for p in pids {
                    owner.insert(*p, record.name.clone());
                }
            }
            (None, true, Some(pid)) => {
                owner.insert(pid, record.name.clone());
            }
            _ => {}
        }
        let (memory_usage, memory_limit, cgroup_kills) = match &raw.memory {
            Some((cur, max, oom)) => (
                cur.parse::<u64>().ok(),
                max.parse::<u64>().ok().filter(|m| *m < V1_UNLIMITED),
                oom.parse::<u64>().unwrap_or(0),
            ),
            None => (None, None, 0),
        };
        // systemd removes a unit's cgroup (and the kernel's count) when it
        // stops; the unit's ExecStopPost hook keeps the count in the record.
        let kept_kills = raw
            .text
            .lines()
            .filter_map(|l| l.strip_prefix("oom_kills="))
            .filter_map(|n| n.trim().parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        let oom_kills = cgroup_kills.max(kept_kills);
        let oom_killed = oom_kills > 0;
        let healthy = if running {
            checks.get(&record.name).copied().flatten()
        } else {
            None
        };
        services.insert(
            record.name.clone(),
            ObservedService {
                record,
                running,
                memory_usage,
                memory_limit,
                oom_killed,
                oom_kills,
                healthy,
            },
        );
    }

    let mut listeners: BTreeMap<u16, Listener> = BTreeMap::new();
    let mut held = Vec::new();
    for (port, ino) in listens {
        let holders: Vec<&Sock> = socks.iter().filter(|s| s.ino == ino).collect();
        let pick = holders
            .iter()
            .find(|s| owner.contains_key(&s.pid))
            .or(holders.first());
        if let Some(Sock {
            pid, fd: Some(fd), ..
        }) = pick
        {
            if owner.contains_key(pid) {
                held.push(HeldSocket {
                    port,
                    inode: ino,
                    pid: *pid,
                    fd: *fd,
                });
            }
        }
        let l = match pick {
            Some(Sock { pid, comm, .. }) => Listener {
                pid: Some(*pid),
                service: owner.get(pid).cloned(),
                comm: Some(comm.clone()).filter(|c| !c.is_empty()),
            },
            None => Listener {
                pid: None,
                service: None,
                comm: None,
            },
        };
        let rank = |l: &Listener| match (l.pid, &l.service) {
            (Some(_), None) => 2,
            (_, Some(_)) => 1,
            (None, None) => 0,
        };
        match listeners.get(&port) {
            Some(old) if rank(old) >= rank(&l) => {}
            _ => {
                listeners.insert(port, l);
            }
        }
    }
    Ok(HostState {
        facts,
        services,
        listeners,
        held,
        bad_records,
    })
}

/// Liveness as docs/HOST-LAYOUT.md defines it.
fn judge_running(record: &Record, raw: &RawRecord, boot_id: &str) -> bool {
    if record.runtime == Some(RuntimeKind::Systemd) {
        return raw.procs.as_ref().is_some_and(|p| !p.is_empty());
    }
    let same_boot = !boot_id.is_empty() && record.boot_id.as_deref() == Some(boot_id);
    // Listed in the service's own cgroup: alive (an exited process is not
    // listed) and the service's; the probe then skips its stat.
    let owned = record
        .pid
        .is_some_and(|p| raw.procs.as_ref().is_some_and(|ps| ps.contains(&p)));
    if same_boot && owned && record.cgroup.is_some() {
        return true;
    }
    match (&raw.proc_, record.pid, record.start_time) {
        (Some((pid, state, start)), Some(rpid), Some(rstart)) => {
            same_boot
                && *pid == rpid
                && *start == rstart
                && !matches!(state.as_str(), "Z" | "X" | "x")
        }
        _ => false,
    }
}
