//! A systemd unit `tend-<svc>.service` per service, rewritten on every start
//! so it always names the running release. Memory limit: `MemoryMax=`.

use super::{q, vars, Release, Runtime, RuntimeError, FN_ALIVE, FN_WRITE_RECORD, REMOVE_COMMON};
use crate::model::RuntimeKind;
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
        o.push_str(concat!(
            "systemctl daemon-reload </dev/null 9>&-\n",
            "systemctl enable \"$unit\" </dev/null >/dev/null 2>&1 9>&- || true\n",
            "systemctl restart \"$unit\" </dev/null 9>&-\n",
            "pid=$(systemctl show -p MainPID --value \"$unit\" </dev/null 9>&-)\n",
            "case \"$pid\" in ''|0|*[!0-9]*) echo \"tend: $unit has no main process\" >&2; exit 1 ;; esac\n",
        ));
        let _ = writeln!(
            o,
            "tend_write_record {} \"$pid\"",
            q(&unit_cgroup(&s.name))?
        );
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
            "rm -f \"$ud/tend-$svc.service\"\n",
            "systemctl daemon-reload </dev/null >/dev/null 2>&1 9>&- || true\n",
        ));
        o.push_str(REMOVE_COMMON);
        Ok(o)
    }

    fn status(&self, root: &str, service: &str) -> Result<String, RuntimeError> {
        let mut o = super::status_from_record(root, service)?;
        // systemd restarts with new pids: the unit's state is what counts.
        o.push_str(
            "if systemctl is-active --quiet \"tend-$svc.service\" </dev/null 9>&-; then echo alive=1; fi\n",
        );
        Ok(o)
    }
}
