//! The host lock: `flock` on `<root>/lock` for each script, plus a lease in
//! `<root>/lock.lease` (`TOKEN UNTIL`) that makes the lock last for a whole
//! apply, across scripts. A lease whose holder died on this same machine, or
//! that expired, is taken over. Within one process a registry keeps one
//! controller from converging a host twice at once.

use crate::runtime::{q, RuntimeError, EXIT_LOCKED};
use crate::transport::{Transport, TransportError};
use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Who we are, as written to `<root>/lock.owner`. `machine` and `boot` say
/// where `pid` lives: `tend run` and `tend apply` name themselves apart
/// (`tend@h`, `h`) but share one machine, and a dead holder on this machine
/// is recognised whichever of the two it was.
#[derive(Debug, Clone)]
pub struct Owner {
    pub controller: String,
    pub machine: String,
    pub boot: String,
    pub pid: u32,
    pub since: u64,
    pub token: String,
}

impl Owner {
    pub fn me(controller: Option<&str>) -> Owner {
        let controller = controller
            .map(str::to_string)
            .unwrap_or_else(local_hostname);
        let pid = std::process::id();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let token = format!("{}:{pid}:{}", sanitize(&controller), now.as_nanos());
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|b| b.trim().to_string())
            .unwrap_or_default();
        Owner {
            controller,
            machine: local_hostname(),
            boot,
            pid,
            since: now.as_secs(),
            token,
        }
    }

    pub fn line(&self) -> String {
        format!(
            "controller={} machine={} boot={} pid={} since={} token={}",
            sanitize(&self.controller),
            sanitize(&self.machine),
            sanitize(&self.boot),
            self.pid,
            self.since,
            self.token
        )
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// What the host said about the holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub line: String,
    pub controller: Option<String>,
    pub machine: Option<String>,
    pub boot: Option<String>,
    pub pid: Option<u32>,
    pub token: Option<String>,
}

impl Holder {
    pub fn parse(line: &str) -> Holder {
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                .map(str::to_string)
        };
        Holder {
            line: line.trim().to_string(),
            controller: field("controller"),
            machine: field("machine"),
            boot: field("boot"),
            pid: field("pid").and_then(|p| p.parse().ok()),
            token: field("token"),
        }
    }

    /// The holder ran on this machine and is gone, or is an earlier apply of
    /// this very process (which holds the host's [`Claim`] now, so that
    /// apply is over — e.g. it lost the host before it could unlock): its
    /// lease can be taken.
    pub fn is_dead_local(&self, me: &Owner) -> bool {
        let (Some(pid), Some(tok)) = (self.pid, &self.token) else {
            return false;
        };
        if *tok == me.token {
            return false;
        }
        // Where the holder ran: its machine (any controller name on it), or,
        // for a line written before `machine=` existed, our own name.
        let here = match &self.machine {
            Some(m) => *m == sanitize(&me.machine),
            None => self.controller.as_deref() == Some(sanitize(&me.controller).as_str()),
        };
        if !here {
            return false;
        }
        // Since a reboot no pid of the old boot is alive.
        let rebooted = self
            .boot
            .as_deref()
            .is_some_and(|b| !me.boot.is_empty() && b != sanitize(&me.boot));
        rebooted || pid == me.pid || !std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    /// The holder is the one the operator named to break (`--break-lock`):
    /// its controller name, machine or token.
    pub fn is_named(&self, name: &str) -> bool {
        [&self.controller, &self.machine, &self.token]
            .into_iter()
            .any(|f| f.as_deref() == Some(name))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("host {host} is locked by {by}")]
    Held { host: String, by: String },
    #[error("host {host} is being converged by this controller already")]
    Busy { host: String },
    #[error("cannot lock host {host}: {why}")]
    Failed { host: String, why: String },
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Render(#[from] RuntimeError),
}

impl LockError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            LockError::Held { .. } => "held",
            LockError::Busy { .. } => "busy",
            LockError::Failed { .. } => "failed",
            LockError::Transport(e) => e.metric_label(),
            LockError::Render(e) => e.metric_label(),
        }
    }
}

/// The lines every mutating script starts with: take the flock (waiting up to
/// `wait` for another script to finish), check the lease, renew ours.
/// Everything the rest prints goes to a file on the host first, so a
/// controller that dies mid-script cannot cut a script short (nothing is
/// written to the dead channel until the end). No signal is ignored here:
/// the services started would inherit it, and sh cannot undo that.
pub fn prelude(
    root: &str,
    owner: &Owner,
    takeover: Option<&str>,
    lease: Duration,
    wait: Duration,
) -> Result<String, RuntimeError> {
    Ok(format!(
        r#"set -eu
root={root}
mkdir -p "$root/records" "$root/releases" "$root/env" "$root/logs"
exec 9>>"$root/lock"
if ! flock -w {wait} 9; then printf 'tend-locked %s\n' "$(cat "$root/lock.owner" 2>/dev/null || echo unknown)"; exit {locked}; fi
tend_tok={tok}
tend_take={take}
tend_now=$(date +%s)
if [ -r "$root/lock.lease" ]; then
  read -r tend_ltok tend_luntil < "$root/lock.lease" || true
  if [ "${{tend_ltok:-}}" != "$tend_tok" ] && [ "${{tend_ltok:-}}" != "$tend_take" ] && [ "${{tend_luntil:-0}}" -gt "$tend_now" ] 2>/dev/null; then
    printf 'tend-locked %s\n' "$(cat "$root/lock.owner" 2>/dev/null || echo unknown)"; exit {locked}
  fi
fi
printf '%s %s\n' "$tend_tok" "$((tend_now + {lease}))" > "$root/.tmp-lock.lease"
mv -f "$root/.tmp-lock.lease" "$root/lock.lease"
printf '%s\n' {line} > "$root/.tmp-lock.owner"
mv -f "$root/.tmp-lock.owner" "$root/lock.owner"
rm -f "$root"/.tmp-out-*
"#,
        root = q(root)?,
        wait = wait.as_secs().max(1),
        locked = EXIT_LOCKED,
        tok = q(&owner.token)?,
        take = q(takeover.unwrap_or("-"))?,
        lease = lease.as_secs().max(1),
        line = q(&owner.line())?,
    ))
}

/// `prelude` + `body`, the body run in a subshell with its output kept in a
/// file and printed at the end. The subshell is a plain command (not part of
/// an `||` list), so its own `set -e` holds.
/// The body's output goes to a file first so the script outlives a dropped
/// connection; the file lives in the host's temp dir, not under `root`, so a
/// full root disk still lets the script say why it failed.
pub fn wrap(prelude: &str, body: &str) -> String {
    format!(
        "{prelude}tend_out=$(mktemp \"${{TMPDIR:-/tmp}}/tend-out.XXXXXX\" 2>/dev/null) || tend_out=\"$root/.tmp-out-$$\"\nset +e\n( set -eu\n{body}\n) >\"$tend_out\" 2>&1\ntend_rc=$?\nset -e\ncat \"$tend_out\"\nrm -f \"$tend_out\"\nexit $tend_rc\n"
    )
}

fn registry() -> &'static Mutex<HashSet<String>> {
    static R: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(HashSet::new()))
}

/// This process's claim on a host; released on drop.
#[derive(Debug)]
pub struct Claim {
    key: String,
}

impl Claim {
    /// Claim `host`, known by `key` (its address and root).
    pub fn take(host: &str, key: &str) -> Result<Claim, LockError> {
        let mut r = registry().lock().unwrap_or_else(|p| p.into_inner());
        if !r.insert(key.to_string()) {
            return Err(LockError::Busy { host: host.into() });
        }
        Ok(Claim {
            key: key.to_string(),
        })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut r = registry().lock().unwrap_or_else(|p| p.into_inner());
        r.remove(&self.key);
    }
}

/// A lock that failed on a write (`printf: I/O error`, `No space left`):
/// say how full tend's root is, as the install step does.
async fn disk_full(t: &dyn Transport, root: &str, why: &str) -> Option<String> {
    if !(why.contains("I/O error") || why.contains("No space left")) {
        return None;
    }
    let script = format!("df -Pk {} | awk 'NR == 2 {{ print $4 }}'", q(root).ok()?);
    let out = t.exec(&script, &[]).await.ok()?;
    let free: u64 = out.stdout_lossy().trim().parse().ok()?;
    (free < 1024).then(|| format!("No space left on device under {root} ({free} KiB free)"))
}

/// The lease we hold on one host.
#[derive(Debug, Clone)]
pub struct HostLock {
    pub host: String,
    pub root: String,
    pub owner: Owner,
    pub takeover: Option<String>,
    pub lease: Duration,
    pub wait: Duration,
    /// One script at a time on this host from this process: its actions
    /// overlap in their health gates, not in their scripts (the second
    /// would only wait on the `flock`, and time out behind a long install).
    pub scripts: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Set when a script found the host gone (connection lost, timed out):
    /// its other scripts fail at once instead of each waiting it out.
    pub lost: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl HostLock {
    pub fn prelude(&self) -> Result<String, RuntimeError> {
        prelude(
            &self.root,
            &self.owner,
            self.takeover.as_deref(),
            self.lease,
            self.wait,
        )
    }

    /// Take the lease (taking over a dead local holder's, or the one
    /// `break_lock` names). Returns the lock and whose lease it broke.
    pub async fn acquire(
        t: &dyn Transport,
        host: &str,
        root: &str,
        owner: &Owner,
        (lease, wait): (Duration, Duration),
        break_lock: Option<&str>,
    ) -> Result<(HostLock, Option<String>), LockError> {
        let mut lock = HostLock {
            host: host.into(),
            root: root.into(),
            owner: owner.clone(),
            takeover: None,
            lease,
            wait,
            scripts: Default::default(),
            lost: Default::default(),
        };
        let mut broke: Option<String> = None;
        for _ in 0..2 {
            let script = wrap(&lock.prelude()?, "echo tend-lock-ok");
            let out = t.exec(&script, &[]).await?;
            if out.success() {
                let broken = lock.takeover.is_some().then(|| broke.take()).flatten();
                return Ok((lock, broken));
            }
            let text = out.stdout_lossy();
            if out.status == Some(EXIT_LOCKED) {
                let line = text
                    .lines()
                    .find_map(|l| l.strip_prefix("tend-locked "))
                    .unwrap_or("unknown")
                    .to_string();
                let holder = Holder::parse(&line);
                let named = break_lock.is_some_and(|n| holder.is_named(n));
                if lock.takeover.is_none() && (named || holder.is_dead_local(owner)) {
                    if let Some(tok) = holder.token.clone() {
                        if named {
                            tracing::warn!(host, "breaking the lock as asked: {line}");
                            broke = Some(line.clone());
                        } else {
                            tracing::warn!(
                                host,
                                "taking over the lock of a dead controller: {line}"
                            );
                        }
                        lock.takeover = Some(tok);
                        continue;
                    }
                }
                return Err(LockError::Held {
                    host: host.into(),
                    by: holder.line,
                });
            }
            let mut why = format!("{}{}", text, out.stderr_lossy());
            why.truncate(why.trim_end().len().min(400));
            if let Some(full) = disk_full(t, root, &why).await {
                why = full;
            }
            return Err(LockError::Failed {
                host: host.into(),
                why,
            });
        }
        Err(LockError::Failed {
            host: host.into(),
            why: "lease takeover did not stick".into(),
        })
    }

    /// Give the lease back (best effort: it expires anyway).
    pub async fn release(&self, t: &dyn Transport) -> Result<(), LockError> {
        let body = "rm -f \"$root/lock.lease\" \"$root/lock.owner\"";
        let out = t.exec(&wrap(&self.prelude()?, body), &[]).await?;
        if out.success() {
            Ok(())
        } else {
            Err(LockError::Failed {
                host: self.host.clone(),
                why: out.stdout_lossy(),
            })
        }
    }
}
