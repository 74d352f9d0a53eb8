//! tend's record of one service it installed on a host.
//!
//! Written by `apply` (temp file + rename), read back by the `observe` probe.
//! Text, one `key=value` per line after a version header, values
//! percent-escaped, so a shell script can append numeric fields (pid, start
//! time) it only learns on the host, and a truncated or foreign file is an
//! error, never a silent "in sync".

use serde::{Deserialize, Serialize};
use std::fmt;
use std::fmt::Write as _;

pub const HEADER: &str = "tend-record 1";

/// How a service is run; a record names the one that installed it, so it
/// lives with the record and the desired state (`model`) takes it from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    Process,
    Systemd,
    Podman,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Process => "process",
            RuntimeKind::Systemd => "systemd",
            RuntimeKind::Podman => "podman",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "process" => Some(RuntimeKind::Process),
            "systemd" => Some(RuntimeKind::Systemd),
            "podman" => Some(RuntimeKind::Podman),
            _ => None,
        }
    }
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The record, as stored on the host.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Record {
    pub name: String,
    pub version: String,
    pub config_hash: String,
    pub runtime: Option<RuntimeKind>,
    /// Release directory name under `<root>/releases/<service>/`.
    pub release: String,
    /// Main pid, as seen on the host (set by the start script).
    pub pid: Option<u32>,
    /// Field 22 of /proc/PID/stat: detects pid reuse.
    pub start_time: Option<u64>,
    /// The boot the pid belongs to.
    pub boot_id: Option<String>,
    /// Memory cgroup of the service, relative to the hierarchy root.
    pub cgroup: Option<String>,
    pub ports: Vec<u16>,
    pub memory_limit: Option<u64>,
    /// Git revision the release was deployed from.
    pub revision: Option<String>,
    /// Unix seconds.
    pub deployed_at: Option<u64>,
    /// The release before this one, kept for rollback.
    pub previous: Option<PreviousRelease>,
    /// Set after an automatic rollback: the version that failed.
    pub failed_version: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PreviousRelease {
    pub version: String,
    pub config_hash: String,
    pub release: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RecordError {
    #[error("record does not start with {HEADER:?}")]
    Header,
    #[error("record line {line}: {why}")]
    Line { line: usize, why: String },
    #[error("record lacks the field {0:?}")]
    Missing(&'static str),
}

/// Escape a value so it fits on one line and survives any shell quoting.
pub fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"._/:@+,-".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

pub fn unescape(v: &str) -> Result<String, String> {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad escape in {v:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("not UTF-8: {v:?}"))
}

impl Record {
    /// Everything but the fields only the host knows (pid, start_time, boot_id).
    /// A start script appends those as `pid=N` lines.
    pub fn render_static(&self) -> String {
        let mut s = String::new();
        let mut kv = |k: &str, v: &str| {
            let _ = writeln!(s, "{k}={}", escape(v));
        };
        kv("name", &self.name);
        kv("version", &self.version);
        kv("config_hash", &self.config_hash);
        if let Some(r) = self.runtime {
            kv("runtime", r.as_str());
        }
        kv("release", &self.release);
        if let Some(c) = &self.cgroup {
            kv("cgroup", c);
        }
        let ports: Vec<String> = self.ports.iter().map(|p| p.to_string()).collect();
        kv("ports", &ports.join(","));
        if let Some(m) = self.memory_limit {
            kv("memory_limit", &m.to_string());
        }
        if let Some(r) = &self.revision {
            kv("revision", r);
        }
        if let Some(t) = self.deployed_at {
            kv("deployed_at", &t.to_string());
        }
        if let Some(p) = &self.previous {
            kv("previous_version", &p.version);
            kv("previous_config_hash", &p.config_hash);
            kv("previous_release", &p.release);
        }
        if let Some(f) = &self.failed_version {
            kv("failed_version", f);
        }
        format!("{HEADER}\n{s}")
    }

    /// The full record, host-side fields included.
    pub fn render(&self) -> String {
        let mut s = self.render_static();
        if let Some(p) = self.pid {
            let _ = writeln!(s, "pid={p}");
        }
        if let Some(t) = self.start_time {
            let _ = writeln!(s, "start_time={t}");
        }
        if let Some(b) = &self.boot_id {
            let _ = writeln!(s, "boot_id={}", escape(b));
        }
        s
    }

    pub fn parse(text: &str) -> Result<Record, RecordError> {
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(RecordError::Header);
        }
        let mut r = Record::default();
        let (mut pv, mut ph, mut pr) = (None, None, None);
        for (i, line) in lines.enumerate() {
            let n = i + 2;
            if line.is_empty() {
                continue;
            }
            let bad = |why: String| RecordError::Line { line: n, why };
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| bad(format!("no '=' in {line:?}")))?;
            let v = unescape(v).map_err(bad)?;
            let num = |v: &str| v.parse::<u64>().map_err(|e| bad(format!("{k}: {e}")));
            match k {
                "name" => r.name = v,
                "version" => r.version = v,
                "config_hash" => r.config_hash = v,
                "runtime" => {
                    r.runtime =
                        Some(RuntimeKind::parse(&v).ok_or_else(|| bad(format!("runtime {v:?}")))?)
                }
                "release" => r.release = v,
                "cgroup" => r.cgroup = Some(v).filter(|c| !c.is_empty()),
                "ports" => {
                    r.ports = v
                        .split(',')
                        .filter(|p| !p.is_empty())
                        .map(|p| p.parse::<u16>().map_err(|e| bad(format!("ports: {e}"))))
                        .collect::<Result<_, _>>()?
                }
                "memory_limit" => r.memory_limit = Some(num(&v)?),
                "revision" => r.revision = Some(v),
                "deployed_at" => r.deployed_at = Some(num(&v)?),
                "previous_version" => pv = Some(v),
                "previous_config_hash" => ph = Some(v),
                "previous_release" => pr = Some(v),
                "failed_version" => r.failed_version = Some(v),
                "pid" => {
                    r.pid = Some(u32::try_from(num(&v)?).map_err(|e| bad(format!("pid: {e}")))?)
                }
                "start_time" => r.start_time = Some(num(&v)?),
                "boot_id" => r.boot_id = Some(v),
                // Newer writers may add fields; older readers skip them.
                _ => {}
            }
        }
        if r.name.is_empty() {
            return Err(RecordError::Missing("name"));
        }
        if r.version.is_empty() {
            return Err(RecordError::Missing("version"));
        }
        if let (Some(version), Some(config_hash), Some(release)) = (pv, ph, pr) {
            r.previous = Some(PreviousRelease {
                version,
                config_hash,
                release,
            });
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Record {
        Record {
            name: "ai-service-1".into(),
            version: "2.3.1".into(),
            config_hash: "abc".into(),
            runtime: Some(RuntimeKind::Process),
            release: "2.3.1-abc".into(),
            pid: Some(42),
            start_time: Some(123456),
            boot_id: Some("b-1".into()),
            cgroup: Some("/tend/ai-service-1".into()),
            ports: vec![8100, 8101],
            memory_limit: Some(512 << 20),
            revision: Some("deadbeef".into()),
            deployed_at: Some(1_700_000_000),
            previous: Some(PreviousRelease {
                version: "2.3.0".into(),
                config_hash: "abd".into(),
                release: "2.3.0-abd".into(),
            }),
            failed_version: None,
        }
    }

    #[test]
    fn a_rendered_record_parses_back_to_itself() {
        let r = sample();
        assert_eq!(Record::parse(&r.render()), Ok(r));
    }

    #[test]
    fn a_record_without_its_header_is_refused() {
        assert_eq!(
            Record::parse("name=x\nversion=1\n"),
            Err(RecordError::Header)
        );
    }

    #[test]
    fn a_truncated_record_is_refused() {
        let text = format!("{HEADER}\nname=x\n");
        assert_eq!(Record::parse(&text), Err(RecordError::Missing("version")));
    }

    #[test]
    fn a_garbled_number_names_its_line() {
        let text = format!("{HEADER}\nname=x\nversion=1\npid=12x\n");
        assert!(matches!(
            Record::parse(&text),
            Err(RecordError::Line { line: 4, .. })
        ));
    }

    proptest! {
        #[test]
        fn any_version_string_round_trips(v in "\\PC{1,40}", n in "[a-z][a-z0-9-]{0,20}") {
            let r = Record { name: n, version: v, ..Record::default() };
            prop_assert_eq!(Record::parse(&r.render()), Ok(r));
        }

        #[test]
        fn escaped_values_never_hold_shell_or_line_breaking_bytes(v in ".*") {
            let e = escape(&v);
            prop_assert!(e.bytes().all(|b| b.is_ascii_alphanumeric() || b"._/:@+,-%".contains(&b)));
            prop_assert_eq!(unescape(&e), Ok(v));
        }
    }
}
