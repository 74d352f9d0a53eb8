//! Runtimes render the POSIX sh scripts that install, start, stop and remove
//! a service on a host. No I/O here: `apply` runs what they render.
//!
//! Layout on the host follows docs/HOST-LAYOUT.md. Each release directory
//! carries `.tend/` with what it needs to run again without the controller
//! knowing its old configuration (rollback):
//! - `.tend/env`: the environment (mode 0600), copied to `<root>/env/<svc>.env` on switch,
//! - `.tend/start`: the runtime's start script for this release,
//! - `.tend/record`: the static part of the record for this release,
//! - `.tend/complete`: written last; a release without it is reinstalled.
//!
//! Start scripts read the static record from `<root>/records/.tmp-<svc>.static`
//! (written by the action script: the release's `.tend/record` plus the
//! deploy's own lines), append `cgroup=`, `pid=`, `start_time=`, `boot_id=`
//! learned on the host and rename it over `<root>/records/<svc>.rec`.

pub mod podman;
pub mod process;
pub mod systemd;

use crate::model::{Delivery, EnvValue, Service};
use crate::record::{escape, Record, RuntimeKind};
use crate::shell::{quote, ShellError};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Exit status of a script that found the host locked by someone else.
pub const EXIT_LOCKED: u32 = 75;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("a value cannot be passed to a shell: {0}")]
    Shell(#[from] ShellError),
    #[error("service {service}: env key {key:?} is not a valid variable name")]
    EnvKey { service: String, key: String },
    #[error("service {service}: {why}")]
    Invalid { service: String, why: String },
}

impl RuntimeError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            RuntimeError::Shell(_) => "shell",
            RuntimeError::EnvKey { .. } => "env_key",
            RuntimeError::Invalid { .. } => "invalid",
        }
    }
}

/// Quote one value for the shell.
pub(crate) fn q(v: &str) -> Result<String, RuntimeError> {
    Ok(quote(v)?)
}

/// argv as shell words.
pub(crate) fn q_argv(argv: &[String]) -> Result<String, RuntimeError> {
    let words: Result<Vec<String>, RuntimeError> = argv.iter().map(|a| q(a)).collect();
    Ok(words?.join(" "))
}

/// One release of one service on one host, as the scripts need it.
#[derive(Debug, Clone)]
pub struct Release<'a> {
    pub root: &'a str,
    pub service: &'a Service,
    /// Directory name under `<root>/releases/<svc>/`.
    pub name: String,
    pub revision: Option<&'a str>,
}

impl<'a> Release<'a> {
    pub fn new(root: &'a str, service: &'a Service, revision: Option<&'a str>) -> Self {
        Release {
            root,
            service,
            name: release_name(service),
            revision,
        }
    }

    /// The static record this release is written with (no previous, no deploy time).
    pub fn record(&self) -> Record {
        let s = self.service;
        Record {
            name: s.name.clone(),
            version: s.version.clone(),
            config_hash: s.config_hash(),
            runtime: Some(s.runtime),
            release: self.name.clone(),
            cgroup: None,
            ports: s.ports.clone(),
            memory_limit: s.memory,
            revision: self.revision.map(str::to_string),
            ..Record::default()
        }
    }

    /// Absolute release directory.
    pub fn dir(&self) -> String {
        format!("{}/releases/{}/{}", self.root, self.service.name, self.name)
    }
}

/// `<version>-<config_hash[..8]>`, escaped so it is one safe path component.
pub fn release_name(s: &Service) -> String {
    let hash = s.config_hash();
    let short = hash.get(..8).unwrap_or(&hash);
    format!("{}-{short}", escape(&s.version).replace('/', "%2F"))
}

/// What each runtime renders. Scripts assume `set -eu` and the lock prelude
/// of `apply` before them; each is safe to run again.
pub trait Runtime: Send + Sync {
    fn kind(&self) -> RuntimeKind;
    /// Extra install-time steps in the new release dir `$r` (e.g. pull an image).
    fn prepare(&self, r: &Release) -> Result<String, RuntimeError> {
        let _ = r;
        Ok(String::new())
    }
    /// The release's `.tend/start`: a complete script that starts this release
    /// (stopping nothing of other runtimes) and writes the record.
    fn start(&self, r: &Release) -> Result<String, RuntimeError>;
    /// Stop the service, whatever release runs. Ends with the service gone.
    fn stop(&self, root: &str, service: &str) -> Result<String, RuntimeError>;
    /// Stop and remove what this runtime keeps outside the release dirs.
    fn remove(&self, root: &str, service: &str) -> Result<String, RuntimeError>;
    /// Prints `oom_kill=N` (the kernel's count for the service's cgroup) and
    /// `alive=0|1` for the recorded process.
    fn status(&self, root: &str, service: &str) -> Result<String, RuntimeError> {
        status_from_record(root, service)
    }
    /// Prints the service's last `LOG_LINES` lines of output (process: its
    /// log file; systemd: the journal; podman: the container's log), for a
    /// failed action's output. Never fails the action itself.
    fn logs(&self, root: &str, service: &str) -> Result<String, RuntimeError> {
        let mut o = vars(root, service)?;
        let _ = writeln!(
            o,
            "tail -n {LOG_LINES} \"$root/logs/$svc.log\" 2>/dev/null || true"
        );
        Ok(o)
    }
}

/// Lines of a service's own log kept with a failed action.
pub const LOG_LINES: usize = 20;

pub fn for_kind(kind: RuntimeKind) -> &'static dyn Runtime {
    match kind {
        RuntimeKind::Process => &process::Process,
        RuntimeKind::Systemd => &systemd::Systemd::DEFAULT,
        RuntimeKind::Podman => &podman::Podman,
    }
}

/// True for a portable shell variable name.
pub fn valid_env_key(k: &str) -> bool {
    let mut b = k.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// A key a container takes though sh cannot (`discovery.type`): a name
/// with dots, as the manifest allows.
pub fn valid_container_env_key(k: &str) -> bool {
    let mut b = k.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.')
}

/// The release's file of the env keys sh cannot carry, for podman.
pub const PODMAN_ENV_FILE: &str = ".tend/podman.env";

/// podman's `--env-file` for the keys that are not shell names: `KEY=VALUE`
/// lines, read verbatim by podman, so a value cannot hold a line break.
/// Empty when every key is a shell name.
pub fn render_podman_env_file(
    service: &str,
    env: &BTreeMap<String, EnvValue>,
) -> Result<String, RuntimeError> {
    let mut out = String::new();
    for (k, v) in env.iter().filter(|(k, _)| !valid_env_key(k)) {
        if !valid_container_env_key(k) {
            return Err(RuntimeError::EnvKey {
                service: service.into(),
                key: k.clone(),
            });
        }
        if v.value.contains(['\n', '\r', '\0']) {
            return Err(RuntimeError::Invalid {
                service: service.into(),
                why: format!("env {k}: the value of a key with a dot cannot hold a line break or NUL (podman --env-file)"),
            });
        }
        out.push_str(k);
        out.push('=');
        out.push_str(&v.value);
        out.push('\n');
    }
    Ok(out)
}

/// The env file: `KEY="value"` lines with `"`, `\`, `` ` `` and `$`
/// backslash-escaped. That is the one quoting POSIX sh (`. file`) and systemd
/// (`EnvironmentFile=`) read the same way, newlines included.
pub fn render_env_file(
    service: &str,
    env: &BTreeMap<String, EnvValue>,
) -> Result<String, RuntimeError> {
    let mut out = String::new();
    for (k, v) in env {
        if !valid_env_key(k) {
            return Err(RuntimeError::EnvKey {
                service: service.into(),
                key: k.clone(),
            });
        }
        if v.value.contains('\0') {
            return Err(RuntimeError::Invalid {
                service: service.into(),
                why: format!("env {k} holds a NUL byte"),
            });
        }
        out.push_str(k);
        out.push_str("=\"");
        for c in v.value.chars() {
            if matches!(c, '"' | '\\' | '`' | '$') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push_str("\"\n");
    }
    Ok(out)
}

/// Shell function `tend_alive PID`: alive and not a zombie.
pub(crate) const FN_ALIVE: &str = r#"tend_alive() {
  [ -r "/proc/$1/stat" ] || return 1
  tend_s=$(awk '{ sub(/.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$tend_s" ] && [ "$tend_s" != Z ] && [ "$tend_s" != X ]
}
tend_starttime() { awk '{ sub(/.*\) /, ""); print $20 }' "/proc/$1/stat"; }
"#;

/// Shell function `tend_recorded_pid`: prints the record's pid when that
/// process is still the recorded one (start time matches).
pub(crate) const FN_RECORDED_PID: &str = r#"tend_recorded_pid() {
  tend_rec="$root/records/$svc.rec"
  [ -r "$tend_rec" ] || return 0
  tend_p=$(sed -n 's/^pid=//p' "$tend_rec" | tail -n 1)
  tend_t=$(sed -n 's/^start_time=//p' "$tend_rec" | tail -n 1)
  [ -n "$tend_p" ] || return 0
  if tend_alive "$tend_p" && [ "$(tend_starttime "$tend_p")" = "$tend_t" ]; then echo "$tend_p"; fi
}
"#;

/// Shell function `tend_write_record CGROUP PID`: the static record, plus the
/// host-side fields, renamed into place.
pub(crate) const FN_WRITE_RECORD: &str = r#"tend_write_record() {
  tend_st=$(tend_starttime "$2")
  tend_boot=$(cat /proc/sys/kernel/random/boot_id)
  {
    cat "$root/records/.tmp-$svc.static"
    if [ -n "$1" ]; then printf 'cgroup=%s\n' "$1"; fi
    printf 'pid=%s\nstart_time=%s\nboot_id=%s\n' "$2" "$tend_st" "$tend_boot"
  } > "$root/records/.tmp-$svc.rec"
  mv -f "$root/records/.tmp-$svc.rec" "$root/records/$svc.rec"
  rm -f "$root/records/.tmp-$svc.static"
  echo "tend: started $svc pid=$2"
}
"#;

/// Header of every stored script: where things are.
pub(crate) fn vars(root: &str, service: &str) -> Result<String, RuntimeError> {
    Ok(format!(
        "root={}\nsvc={}\ncgname={}\nd=\"$root/releases/$svc\"\n",
        q(root)?,
        q(service)?,
        q(&cgroup_name(root, service))?
    ))
}

/// The service's cgroup name under `tend/`. Two tend roots on one machine
/// (local hosts, tests) must not share a cgroup: stopping one would kill the
/// other's processes. The default root keeps the plain, readable name.
pub fn cgroup_name(root: &str, service: &str) -> String {
    if root == crate::model::DEFAULT_ROOT {
        return service.to_string();
    }
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(root.as_bytes());
    format!("{service}-{}", hex::encode(&h[..4]))
}

/// Default status: the recorded process, and the cgroup's OOM count.
pub(crate) fn status_from_record(root: &str, service: &str) -> Result<String, RuntimeError> {
    let mut s = vars(root, service)?;
    s.push_str(FN_ALIVE);
    s.push_str(FN_RECORDED_PID);
    s.push_str(STATUS_BODY);
    Ok(s)
}

const STATUS_BODY: &str = r#"p=$(tend_recorded_pid)
if [ -n "$p" ]; then echo alive=1; else echo alive=0; fi
cg=$(sed -n 's/^cgroup=//p' "$root/records/$svc.rec" 2>/dev/null | tail -n 1)
oom=0
if [ -n "$cg" ]; then
  for f in "/sys/fs/cgroup/memory$cg/memory.oom_control" "/sys/fs/cgroup$cg/memory.events"; do
    if [ -r "$f" ]; then
      n=$(awk '$1 == "oom_kill" { print $2 }' "$f")
      if [ -n "$n" ]; then oom=$n; fi
    fi
  done
fi
echo "oom_kill=$oom"
"#;

/// Install a release if it is not complete already: deliver into a
/// `.tmp-` dir, move into place, write `.tend/`, run the install steps in the
/// final dir (so absolute paths, e.g. of a venv, stay valid), mark complete.
/// `Delivery::Source` reads a tar stream from stdin.
pub fn install_release(rt: &dyn Runtime, r: &Release) -> Result<String, RuntimeError> {
    let s = r.service;
    let mut o = vars(r.root, &s.name)?;
    let _ = writeln!(o, "rel={}", q(&r.name)?);
    o.push_str("r=\"$d/$rel\"\nmkdir -p \"$d\"\nrm -rf \"$d\"/.tmp-*\n");
    o.push_str(
        "if [ -f \"$r/.tend/complete\" ]; then\n  echo \"tend: release $rel is installed\"\nelse\n",
    );
    o.push_str("  rm -rf \"$r\"\n  t=\"$d/.tmp-$rel\"\n  mkdir -p \"$t\"\n");
    match &s.delivery {
        Delivery::None | Delivery::Image { .. } => {}
        Delivery::Source(_) => o.push_str(concat!(
            "  tar -x -f - -C \"$t\" --no-same-owner || {\n",
            // tar words a full disk as a short write: say it plainly.
            "    free=$(df -Pk \"$d\" 2>/dev/null | awk 'NR == 2 { print $4 }')\n",
            "    rm -rf \"$t\"\n",
            "    if [ -n \"$free\" ] && [ \"$free\" -lt 1024 ]; then\n",
            "      echo \"tend: No space left on device under $d ($free KiB free)\" >&2\n",
            "    fi\n",
            "    exit 1\n",
            "  }\n",
        )),
        Delivery::Artifact { url, sha256 } => {
            let file = artifact_file_name(url);
            let _ = writeln!(o, "  a=\"$t\"/{}", q(&file)?);
            let _ = writeln!(o, "  u={}", q(url)?);
            o.push_str(concat!(
                "  if command -v curl >/dev/null 2>&1; then curl -fsSL -o \"$a\" \"$u\"\n",
                "  else wget -q -O \"$a\" \"$u\"; fi\n",
            ));
            let _ = writeln!(
                o,
                "  printf '%s  %s\\n' {} \"$a\" | sha256sum -c --status - || {{ echo \"tend: sha256 of the artifact does not match\" >&2; exit 1; }}",
                q(&sha256.to_ascii_lowercase())?
            );
            o.push_str(concat!(
                "  case \"$a\" in\n",
                "    *.tar.gz|*.tgz) tar -x -z -f \"$a\" -C \"$t\" --no-same-owner; rm -f \"$a\" ;;\n",
                "    *.tar) tar -x -f \"$a\" -C \"$t\" --no-same-owner; rm -f \"$a\" ;;\n",
                "    *) chmod 0755 \"$a\" ;;\n",
                "  esac\n",
            ));
        }
    }
    o.push_str("  mv \"$t\" \"$r\"\n  mkdir -p \"$r/.tend\"\n");
    // Keys with dots reach a container by podman's own env file.
    let podman = rt.kind() == RuntimeKind::Podman;
    let shell_env: BTreeMap<String, EnvValue> = s
        .env
        .iter()
        .filter(|(k, _)| !podman || valid_env_key(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let env = render_env_file(&s.name, &shell_env)?;
    let _ = writeln!(
        o,
        "  ( umask 077; printf '%s' {} > \"$r/.tend/env\" )",
        q(&env)?
    );
    if podman {
        let extra = render_podman_env_file(&s.name, &s.env)?;
        if !extra.is_empty() {
            let _ = writeln!(
                o,
                "  ( umask 077; printf '%s' {} > \"$r/{PODMAN_ENV_FILE}\" )",
                q(&extra)?
            );
        }
    }
    let _ = writeln!(
        o,
        "  printf '%s' {} > \"$r/.tend/start\"",
        q(&rt.start(r)?)?
    );
    let _ = writeln!(
        o,
        "  printf '%s' {} > \"$r/.tend/record\"",
        q(&r.record().render_static())?
    );
    let prepare = rt.prepare(r)?;
    if !prepare.is_empty() {
        o.push_str(&prepare);
    }
    for (i, step) in s.install.iter().enumerate() {
        let _ = writeln!(
            o,
            "  ( cd \"$r\" && set -a && . \"$r/.tend/env\" && set +a && exec sh -c {} ) 9>&- </dev/null || {{ echo \"tend: install step {} failed\" >&2; exit 1; }}",
            q(step)?,
            i + 1
        );
    }
    o.push_str("  : > \"$r/.tend/complete\"\n  echo \"tend: installed release $rel\"\nfi\n");
    Ok(o)
}

fn artifact_file_name(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let base = path.rsplit('/').next().unwrap_or("");
    let safe: String = base
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
        .collect();
    if safe.is_empty() || safe.starts_with('.') {
        "artifact".into()
    } else {
        safe
    }
}

/// Point `current` at `release` (ln to a temp name + `mv -T`: atomic) and
/// install its env file as `<root>/env/<svc>.env`.
pub fn switch(root: &str, service: &str, release: &str) -> Result<String, RuntimeError> {
    let mut o = vars(root, service)?;
    let _ = writeln!(o, "rel={}", q(release)?);
    o.push_str(concat!(
        "[ -f \"$d/$rel/.tend/complete\" ] || { echo \"tend: release $rel is not installed\" >&2; exit 1; }\n",
        "mkdir -p \"$root/env\"\n",
        "ln -sfn \"$rel\" \"$d/.tmp-current\"\n",
        "mv -T \"$d/.tmp-current\" \"$d/current\"\n",
        "( umask 077; cp \"$d/$rel/.tend/env\" \"$root/env/.tmp-$svc.env\" )\n",
        "mv -f \"$root/env/.tmp-$svc.env\" \"$root/env/$svc.env\"\n",
    ));
    Ok(o)
}

/// Run the release's own start script, without the lock's descriptor.
pub fn run_start(root: &str, service: &str, release: &str) -> Result<String, RuntimeError> {
    let mut o = vars(root, service)?;
    let _ = writeln!(o, "rel={}", q(release)?);
    o.push_str("sh \"$d/$rel/.tend/start\" 9>&- </dev/null\n");
    Ok(o)
}

/// Remove releases other than `keep` (and `current`, and temp dirs).
pub fn gc_releases(root: &str, service: &str, keep: &[&str]) -> Result<String, RuntimeError> {
    let mut o = vars(root, service)?;
    let words: Result<Vec<String>, RuntimeError> = keep.iter().map(|k| q(k)).collect();
    let _ = writeln!(o, "for x in \"$d\"/*; do\n  [ -e \"$x\" ] || continue\n  n=${{x##*/}}\n  keep=0\n  for k in current {}; do [ \"$n\" = \"$k\" ] && keep=1; done\n  [ $keep = 1 ] || rm -rf \"$x\"\ndone", words?.join(" "));
    Ok(o)
}

/// Remove what every runtime shares: releases, env, cgroup dirs; the record last.
pub(crate) const REMOVE_COMMON: &str = r#"rm -rf "$d" "$root/env/$svc.env" "$root/env/.tmp-$svc.env"
rmdir "/sys/fs/cgroup/tend/$cgname" 2>/dev/null || true
rmdir "/sys/fs/cgroup/memory/tend/$cgname" 2>/dev/null || true
rmdir "/sys/fs/cgroup/systemd/tend/$cgname" "/sys/fs/cgroup/unified/tend/$cgname" 2>/dev/null || true
rm -f "$root/records/.tmp-$svc.static" "$root/records/.tmp-$svc.rec"
rm -f "$root/records/$svc.rec"
echo "tend: removed $svc"
"#;

#[cfg(test)]
mod tests;
