//! A systemd unit `tend-<svc>.service` per service, rewritten on every start
//! so it always names the running release. Memory limit: `MemoryMax=`.
//!
//! systemd restarts a failed service itself (`Restart=on-failure`), so the
//! unit keeps tend's record true between applies with two hooks:
//! - `ExecStartPost=` writes the new main pid (and its start time) into the
//!   record: after systemd's own restart the record names the process that
//!   runs, not a dead one;
//! - `ExecStopPost=` adds the kernel's OOM kills to the record
//!   (`oom_kills=N`): systemd removes the unit's cgroup, and with it the
//!   kernel's counter, as soon as the service stops, so on cgroup v1 (where
//!   systemd cannot tell an OOM kill from any SIGKILL) that is the only
//!   moment the count can be read. On v2 `$SERVICE_RESULT` says `oom-kill`.

use super::{q, vars, Release, Runtime, RuntimeError, FN_ALIVE, FN_WRITE_RECORD, REMOVE_COMMON};
use crate::record::RuntimeKind;
use std::fmt::Write as _;

pub struct Systemd {
    /// Where unit files go.
    pub unit_dir: &'static str,
}

impl Systemd {
    pub const DEFAULT: Systemd = Systemd {
        unit_dir: "/etc/systemd/system",
    };
}

pub fn unit_name(service: &str) -> String {
    format!("tend-{service}.service")
}

/// The cgroup systemd puts the unit in, relative to the hierarchy root.
pub fn unit_cgroup(service: &str) -> String {
    format!("/system.slice/{}", unit_name(service))
}

/// One word of `ExecStart=`, double-quoted with C escapes; `%` and `$`
/// doubled so systemd expands neither specifiers nor variables.
pub fn exec_word(w: &str) -> String {
    if w == ";" {
        return "\\;".into();
    }
    let mut o = String::from("\"");
    for c in w.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\t' => o.push_str("\\t"),
            '%' => o.push_str("%%"),
            '$' => o.push_str("$$"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(o, "\\x{:02x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// A path as a unit-file value: one line, `%` doubled.
fn unit_path(service: &str, p: &str) -> Result<String, RuntimeError> {
    if p.chars().any(|c| c.is_control()) {
        return Err(RuntimeError::Invalid {
            service: service.into(),
            why: format!("path {p:?} holds control characters"),
        });
    }
    Ok(p.replace('%', "%%"))
}

/// The unit file of a release.
pub fn render_unit(r: &Release) -> Result<String, RuntimeError> {
    let s = r.service;
    let Some(argv0) = s.command.first() else {
        return Err(RuntimeError::Invalid {
            service: s.name.clone(),
            why: "the systemd runtime needs a command".into(),
        });
    };
    let dir = r.dir();
    // systemd wants an absolute program (or a bare name it finds on PATH);
    // relative paths are relative to the release, as for the process runtime.
    let program = if argv0.starts_with('/') || !argv0.contains('/') {
        argv0.clone()
    } else {
        format!("{dir}/{}", argv0.trim_start_matches("./"))
    };
    let mut words = vec![exec_word(&program)];
    words.extend(s.command[1..].iter().map(|w| exec_word(w)));
    let mut u = String::new();
    let _ = writeln!(u, "# Written by tend; changes are overwritten.");
    let _ = writeln!(u, "[Unit]\nDescription=tend service {}", s.name);
    let _ = writeln!(u, "\n[Service]\nType=simple");
    let _ = writeln!(u, "WorkingDirectory={}", unit_path(&s.name, &dir)?);
    let _ = writeln!(
        u,
        "EnvironmentFile={}",
        unit_path(&s.name, &format!("{}/env/{}.env", r.root, s.name))?
    );
    let _ = writeln!(u, "ExecStart={}", words.join(" "));
    let hook_vars = format!(
        "rec={}\ntmp={}\n",
        q(&format!("{}/records/{}.rec", r.root, s.name))?,
        q(&format!("{}/records/.tmp-{}.hook", r.root, s.name))?
    );
    // `-`: a failing hook never fails the service.
    let _ = writeln!(
        u,
        "ExecStartPost=-/bin/sh -c {} tend-hook",
        exec_word(&format!("{hook_vars}{HOOK_START}"))
    );
    let _ = writeln!(
        u,
        "ExecStopPost=-/bin/sh -c {} tend-hook",
        exec_word(&format!("{hook_vars}{HOOK_STOP}"))
    );
    if let Some(m) = s.memory {
        let _ = writeln!(u, "MemoryMax={m}\nMemorySwapMax=0");
    }
    let _ = writeln!(u, "Restart=on-failure\nRestartSec=1");
    let _ = writeln!(u, "\n[Install]\nWantedBy=multi-user.target");
    Ok(u)
}

impl Runtime for Systemd {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Systemd
    }

    fn start(&self, r: &Release) -> Result<String, RuntimeError> {
        let s = r.service;
        let mut o = String::from("set -eu\n");
        o.push_str(&vars(r.root, &s.name)?);
        let _ = writeln!(o, "rel={}\nr=\"$d/$rel\"", q(&r.name)?);
        let _ = writeln!(o, "ud={}\nunit=\"tend-$svc.service\"", q(self.unit_dir)?);
        o.push_str(FN_ALIVE);
        o.push_str(FN_WRITE_RECORD);
        let _ = writeln!(
            o,
            "mkdir -p \"$ud\"\nprintf '%s' {} > \"$ud/.tmp-$unit\"\nmv -f \"$ud/.tmp-$unit\" \"$ud/$unit\"",
            q(&render_unit(r)?)?
        );
        let _ = writeln!(o, "cg={}", q(&unit_cgroup(&s.name))?);
        o.push_str(START_BODY);
        Ok(o)
    }

    fn stop(&self, root: &str, service: &str) -> Result<String, RuntimeError> {
        let mut o = vars(root, service)?;
        o.push_str(
            "systemctl stop \"tend-$svc.service\" </dev/null >/dev/null 2>&1 9>&- && echo \"tend: stopped $svc\" || true\n",
        );
        Ok(o)
    }

    fn remove(&self, root: &str, service: &str) -> Result<String, RuntimeError> {
        let mut o = self.stop(root, service)?;
        let _ = writeln!(o, "ud={}", q(self.unit_dir)?);
        o.push_str(concat!(
            "systemctl disable \"tend-$svc.service\" </dev/null >/dev/null 2>&1 9>&- || true\n",
            "rm -f \"$ud/tend-$svc.service\" \"$root/records/.tmp-$svc.hook\"\n",
            "systemctl daemon-reload </dev/null >/dev/null 2>&1 9>&- || true\n",
            // A unit that failed stays listed (failed, not-found) until reset.
            "systemctl reset-failed \"tend-$svc.service\" </dev/null >/dev/null 2>&1 9>&- || true\n",
        ));
        o.push_str(REMOVE_COMMON);
        Ok(o)
    }

    fn logs(&self, root: &str, service: &str) -> Result<String, RuntimeError> {
        let mut o = vars(root, service)?;
        let _ = writeln!(
            o,
            "journalctl -u \"tend-$svc.service\" -n {} --no-pager -o short-iso </dev/null 2>/dev/null 9>&- || true",
            super::LOG_LINES
        );
        Ok(o)
    }

    fn status(&self, root: &str, service: &str) -> Result<String, RuntimeError> {
        let mut o = super::status_from_record(root, service)?;
        o.push_str(STATUS_BODY);
        Ok(o)
    }
}

/// After `vars`, `rel`, `ud`, `unit`, `cg` and the record functions: install
/// the unit, (re)start it, record its main pid. A service that exits at once
/// is recorded without a pid: the health gate (or status) then sees it is not
/// running and the release can be rolled back; failing here would not.
const START_BODY: &str = r#"systemctl daemon-reload </dev/null 9>&-
systemctl enable "$unit" </dev/null >/dev/null 2>&1 9>&- || true
# Applies restart a unit more often than systemd's start limit allows
# (upgrade, failed upgrade, rollback): the limit is for crash loops.
systemctl reset-failed "$unit" </dev/null >/dev/null 2>&1 9>&- || true
systemctl restart "$unit" </dev/null 9>&- || echo "tend: systemctl restart $unit failed" >&2
pid=$(systemctl show -p MainPID --value "$unit" </dev/null 9>&-) || pid=
case "$pid" in ''|0|*[!0-9]*) pid= ;; esac
if [ -n "$pid" ] && ! tend_starttime "$pid" >/dev/null 2>&1; then pid=; fi
if [ -n "$pid" ]; then
  tend_write_record "$cg" "$pid"
else
  echo "tend: $unit has no main process (it exited; see journalctl -u $unit)" >&2
  {
    cat "$root/records/.tmp-$svc.static"
    printf 'cgroup=%s\nboot_id=%s\n' "$cg" "$(cat /proc/sys/kernel/random/boot_id)"
  } > "$root/records/.tmp-$svc.rec"
  mv -f "$root/records/.tmp-$svc.rec" "$root/records/$svc.rec"
  rm -f "$root/records/.tmp-$svc.static"
fi
"#;

/// `ExecStartPost=` (after `rec`, `tmp`): the record names systemd's main pid.
pub(crate) const HOOK_START: &str = r#"[ -f "$rec" ] && grep -qx runtime=systemd "$rec" || exit 0
case "${MAINPID:-}" in ''|0|*[!0-9]*) exit 0 ;; esac
st=$(awk '{ sub(/.*\) /, ""); print $20 }' "/proc/$MAINPID/stat") || exit 0
{
  grep -v -e '^pid=' -e '^start_time=' -e '^boot_id=' "$rec"
  printf 'pid=%s\nstart_time=%s\nboot_id=%s\n' "$MAINPID" "$st" "$(cat /proc/sys/kernel/random/boot_id)"
} > "$tmp" && mv -f "$tmp" "$rec"
"#;

/// `ExecStopPost=` (after `rec`, `tmp`), still in the unit's cgroup: add the
/// OOM kills of this run to the record.
pub(crate) const HOOK_STOP: &str = r#"n=0
[ "${SERVICE_RESULT:-}" = oom-kill ] && n=1
f=
cg=$(sed -n 's/^[0-9]*:memory:\(.*\)$/\1/p' /proc/self/cgroup | head -n 1)
if [ -n "$cg" ]; then f="/sys/fs/cgroup/memory$cg/memory.oom_control"
else f="/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup | head -n 1)/memory.events"; fi
k=$(awk '$1 == "oom_kill" { print $2 }' "$f" 2>/dev/null) || k=
case "$k" in ''|*[!0-9]*) ;; *) [ "$k" -gt "$n" ] && n=$k ;; esac
[ "$n" -gt 0 ] && [ -f "$rec" ] || exit 0
old=$(sed -n 's/^oom_kills=//p' "$rec" | tail -n 1)
case "$old" in ''|*[!0-9]*) old=0 ;; esac
{ grep -v '^oom_kills=' "$rec"; printf 'oom_kills=%s\n' $((old + n)); } > "$tmp" && mv -f "$tmp" "$rec"
"#;

/// After the default status: OOM kills the hooks recorded, and liveness from
/// systemd. A unit systemd had to restart since tend started it is not
/// counted alive: it crashed (the deploy reports that rather than "running").
const STATUS_BODY: &str = r#"n=$(sed -n 's/^oom_kills=//p' "$root/records/$svc.rec" 2>/dev/null | tail -n 1)
case "$n" in ''|0|*[!0-9]*) ;; *) echo "oom_kill=$n" ;; esac
u=$(systemctl show -p ActiveState -p NRestarts "tend-$svc.service" </dev/null 2>/dev/null 9>&-) || u=
a=0
if printf '%s\n' "$u" | grep -qx ActiveState=active && printf '%s\n' "$u" | grep -qx NRestarts=0; then a=1; fi
echo "alive=$a"
"#;
