//! The probe script: fixed text (`probe.sh`) plus quoted parameters.

use super::ObserveError;
use crate::model::HeldSocket;
use crate::shell::quote;
use std::time::Duration;

const BODY: &str = include_str!("probe.sh");

/// Where the probe lists TCP listeners from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ListenSource {
    /// /proc/net/tcp{,6}, read with builtins up to the first non-listener
    /// (listeners come first). Costs a walk of the kernel's connection hash
    /// for tcp6, which grows with the host's RAM (~1 ms at 24 GB).
    #[default]
    Proc,
    /// `ss` (sock_diag: the kernel walks listeners only) when the host has
    /// it, else /proc. A fixed ~1 ms for the exec.
    Auto,
}

/// A `command` health check the probe runs in the service's release directory.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandCheck {
    pub service: String,
    pub argv: Vec<String>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeOptions {
    /// Ports to name the holder of even when no record declares them (the
    /// desired services' ports: a stranger there blocks a start).
    pub ports: Vec<u16>,
    pub checks: Vec<CommandCheck>,
    /// Services with a `tcp` health check: healthy when their port listens.
    pub tcp_checks: Vec<(String, u16)>,
    pub listen_source: ListenSource,
    /// Sockets services held at the last probe: when all are still open the
    /// probe skips the listener table (see [`super::known_sockets`]).
    pub known: Vec<HeldSocket>,
}

/// The probe for a host whose tend directory is `root`, running the given
/// `(service, argv)` command checks with a 10 s bound each.
pub fn probe_script(
    root: &str,
    command_checks: &[(String, Vec<String>)],
) -> Result<String, ObserveError> {
    let opts = ProbeOptions {
        checks: command_checks
            .iter()
            .map(|(service, argv)| CommandCheck {
                service: service.clone(),
                argv: argv.clone(),
                timeout: Duration::from_secs(10),
            })
            .collect(),
        ..ProbeOptions::default()
    };
    probe_script_with(root, &opts)
}

/// The probe as one standalone script.
pub fn probe_script_with(root: &str, opts: &ProbeOptions) -> Result<String, ObserveError> {
    render(root, opts, BODY)
}

/// The probe as a fixed prelude defining `tend_probe` (a kept shell
/// defines it once) and the per-host call with its parameters.
pub fn probe_call(root: &str, opts: &ProbeOptions) -> Result<(&'static str, String), ObserveError> {
    static PRELUDE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let prelude = PRELUDE.get_or_init(|| format!("tend_probe() {{\n{BODY}}}\n"));
    Ok((prelude, render(root, opts, "tend_probe\n")?))
}

fn render(root: &str, opts: &ProbeOptions, body: &str) -> Result<String, ObserveError> {
    let root = root.trim_end_matches('/');
    let root = if root.is_empty() { "/" } else { root };
    let watch: String = opts.ports.iter().map(|p| format!(" {p} ")).collect();
    let mut s = String::with_capacity(BODY.len() + 256);
    s.push_str(&format!("ROOT={}\n", quote(root)?));
    s.push_str(&format!("WATCH={}\n", quote(&watch)?));
    let src = match opts.listen_source {
        ListenSource::Auto => "auto",
        ListenSource::Proc => "proc",
    };
    s.push_str(&format!("LISTEN_SRC={src}\n"));
    let known: Vec<String> = opts
        .known
        .iter()
        .map(|k| format!("{}:{}:{}:{}", k.port, k.inode, k.pid, k.fd))
        .collect();
    s.push_str(&format!("KNOWN='{}'\n", known.join(" ")));
    s.push_str(body);
    for c in &opts.checks {
        if c.argv.is_empty() {
            continue;
        }
        let dir = format!("{root}/releases/{}/current", c.service);
        let secs = c.timeout.as_secs().max(1);
        s.push_str(&format!(
            "check {} {} {secs} {}\n",
            quote(&c.service)?,
            quote(&dir)?,
            crate::shell::command_line(&c.argv)?
        ));
    }
    s.push_str("printf '%send %s\\n' \"$OUT\" \"$n\"\n");
    Ok(s)
}
