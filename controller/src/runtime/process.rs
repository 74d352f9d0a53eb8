//! A plain process: detached with `setsid`, cwd = release dir, env from the
//! release's 0600 env file, output to `<root>/logs/<svc>.log`, memory limited
//! by a cgroup (v2 with the memory controller, else v1) that the child joins
//! before it execs the command.

use super::{q, q_argv, vars, Release, Runtime, RuntimeError, FN_ALIVE, FN_RECORDED_PID};
use super::{FN_WRITE_RECORD, REMOVE_COMMON};
use crate::record::RuntimeKind;
use std::fmt::Write as _;

pub struct Process;

impl Runtime for Process {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Process
    }

    fn start(&self, r: &Release) -> Result<String, RuntimeError> {
        let s = r.service;
        if s.command.is_empty() {
            return Err(RuntimeError::Invalid {
                service: s.name.clone(),
                why: "the process runtime needs a command".into(),
            });
        }
        let mut o = String::from("set -eu\n");
        o.push_str(&vars(r.root, &s.name)?);
        let _ = writeln!(o, "rel={}\nr=\"$d/$rel\"", q(&r.name)?);
        let _ = writeln!(
            o,
            "mem={}",
            q(&s.memory.map(|m| m.to_string()).unwrap_or_default())?
        );
        o.push_str(FN_ALIVE);
        o.push_str(FN_WRITE_RECORD);
        o.push_str(CGROUP_SETUP);
        let _ = writeln!(
            o,
            "mkdir -p \"$root/logs\"\ncd \"$r\"\nsetsid sh -c {} tend-start \"$cgdir\" \"$r/.tend/env\" {} </dev/null >>\"$root/logs/$svc.log\" 2>&1 9>&- &\npid=$!",
            q(LAUNCH)?,
            q_argv(&s.command)?
        );
        o.push_str("tend_write_record \"$cgrel\" \"$pid\"\n");
        Ok(o)
    }

    fn stop(&self, root: &str, service: &str) -> Result<String, RuntimeError> {
        let mut o = vars(root, service)?;
        o.push_str(FN_ALIVE);
        o.push_str(FN_RECORDED_PID);
        o.push_str(STOP_BODY);
        Ok(o)
    }

    fn remove(&self, root: &str, service: &str) -> Result<String, RuntimeError> {
        let mut o = self.stop(root, service)?;
        o.push_str(REMOVE_COMMON);
        Ok(o)
    }
}

/// Run by the detached child: join the cgroup, load the env, exec argv.
/// Positional parameters are read before the env file is sourced, so no env
/// key can change them.
const LAUNCH: &str = r#"cg=$1; envf=$2; shift 2
for c in $cg; do echo $$ > "$c/cgroup.procs"; done
set -a; . "$envf"; set +a
exec "$@""#;

/// Picks the hierarchy, makes a fresh cgroup (counters reset) and sets the limit.
const CGROUP_SETUP: &str = r#"cgdir=""; cgrel=""
if [ -r /sys/fs/cgroup/cgroup.controllers ] && grep -qw memory /sys/fs/cgroup/cgroup.controllers; then
  mkdir -p /sys/fs/cgroup/tend
  grep -qw memory /sys/fs/cgroup/cgroup.subtree_control || echo +memory > /sys/fs/cgroup/cgroup.subtree_control
  grep -qw memory /sys/fs/cgroup/tend/cgroup.subtree_control || echo +memory > /sys/fs/cgroup/tend/cgroup.subtree_control
  cgdir="/sys/fs/cgroup/tend/$cgname"
elif [ -d /sys/fs/cgroup/memory ] && [ -w /sys/fs/cgroup/memory ]; then
  cgdir="/sys/fs/cgroup/memory/tend/$cgname"
fi
if [ -n "$cgdir" ]; then
  rmdir "$cgdir" 2>/dev/null || true
  mkdir -p "$cgdir"
  if [ -f "$cgdir/memory.max" ]; then
    echo "${mem:-max}" > "$cgdir/memory.max"
    if [ -n "$mem" ] && [ -f "$cgdir/memory.swap.max" ]; then echo 0 > "$cgdir/memory.swap.max"; fi
  else
    echo "${mem:--1}" > "$cgdir/memory.limit_in_bytes"
    if [ -n "$mem" ] && [ -f "$cgdir/memory.memsw.limit_in_bytes" ]; then echo "$mem" > "$cgdir/memory.memsw.limit_in_bytes" 2>/dev/null || true; fi
  fi
  cgrel="/tend/$cgname"
  # cgroup v1 under systemd: systemd tracks processes in its own hierarchy
  # (name=systemd, and cgroup2 at unified/ in hybrid mode). Leave the ssh
  # session's scope there too, or logind kills the service with the session.
  case $cgdir in /sys/fs/cgroup/memory/*)
    for h in systemd unified; do
      x="/sys/fs/cgroup/$h"
      [ -w "$x/cgroup.procs" ] || continue
      mkdir -p "$x/tend/$cgname" && cgdir="$cgdir $x/tend/$cgname"
    done ;;
  esac
elif [ -n "$mem" ]; then
  echo "tend: no memory cgroup on this host: the limit of $svc is not enforced" >&2
fi
"#;

/// TERM every process of the service (its cgroup, its process group, the
/// recorded pid), wait up to 10 s, then KILL what is left.
const STOP_BODY: &str = r#"tend_pids() {
  for f in "/sys/fs/cgroup/tend/$cgname/cgroup.procs" "/sys/fs/cgroup/memory/tend/$cgname/cgroup.procs"; do
    if [ -r "$f" ]; then cat "$f"; fi
  done
  tend_recorded_pid
}
p=$(tend_pids | sort -u | tr '\n' ' ')
lead=$(tend_recorded_pid)
if [ -n "$p" ]; then
  if [ -n "$lead" ]; then kill -TERM -- "-$lead" 2>/dev/null || true; fi
  kill -TERM $p 2>/dev/null || true
  i=0
  while [ $i -lt 100 ]; do
    left=""
    for x in $p; do if tend_alive "$x"; then left="$left $x"; fi; done
    [ -n "$left" ] || break
    sleep 0.1
    i=$((i + 1))
  done
  p=$(tend_pids | sort -u | tr '\n' ' ')
  if [ -n "$p" ]; then
    if [ -n "$lead" ]; then kill -KILL -- "-$lead" 2>/dev/null || true; fi
    kill -KILL $p 2>/dev/null || true
    i=0
    while [ $i -lt 50 ]; do
      left=""
      for x in $p; do if tend_alive "$x"; then left="$left $x"; fi; done
      [ -n "$left" ] || break
      sleep 0.1
      i=$((i + 1))
    done
  fi
  echo "tend: stopped $svc"
fi
"#;
