//! Observe hosts: one POSIX sh probe per host per reconcile, parsed here.
//!
//! The probe (`probe.sh`) reads tend's records under the host's root, checks
//! each recorded process (pid + start time), its memory cgroup, the host's
//! TCP listeners and which service holds them, and optionally runs
//! `command` health checks — all in one exec round trip. Its output is
//! versioned and framed; anything truncated or foreign is an error, never a
//! silent "in sync".

mod known;
mod parse;
mod probe;
#[cfg(test)]
mod tests;

pub use known::SocketCache;
pub use parse::parse;
pub use probe::{
    probe_call, probe_script, probe_script_with, CommandCheck, ListenSource, ProbeOptions,
};

use crate::model::{Desired, HealthCheck, Host, Observation};
use crate::transport::pool::Pool;
use crate::transport::{Transport, TransportError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("probe output does not start with \"tend-probe 1\"")]
    Header,
    #[error("probe output is truncated (no complete end line)")]
    Truncated,
    #[error("probe output line {line}: {why}")]
    Line { line: usize, why: String },
    #[error("record {file}.rec: {why}")]
    Record { file: String, why: String },
    #[error("cannot build the probe: {0}")]
    Script(#[from] crate::shell::ShellError),
    #[error("probe exited with {status}: {stderr}")]
    Exit { status: String, stderr: String },
    #[error("probe timed out after {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Transport(#[from] TransportError),
}

impl ObserveError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            ObserveError::Header | ObserveError::Truncated | ObserveError::Line { .. } => "output",
            ObserveError::Record { .. } => "record",
            ObserveError::Script(_) => "script",
            ObserveError::Exit { .. } => "exit",
            ObserveError::Timeout(_) => "timeout",
            ObserveError::Transport(e) => e.metric_label(),
        }
    }
}

/// Default bound on one host's probe, connect included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Hosts probed at once: a probe is one round trip on an open connection,
/// so the bound is there for connection set-up (handshakes) more than load.
pub const DEFAULT_CONCURRENCY: usize = 64;

/// What `desired` asks the probe to look at on `host`: its services' ports
/// (to name strangers on them) and their `command` health checks.
pub fn options_for(desired: &Desired, host: &str) -> ProbeOptions {
    let mut opts = ProbeOptions::default();
    for s in desired.services_on(host) {
        opts.ports.extend(s.ports.iter().copied());
        if let Some(h) = &s.health {
            match &h.check {
                HealthCheck::Command { command } => opts.checks.push(CommandCheck {
                    service: s.name.clone(),
                    argv: command.clone(),
                    timeout: h.timeout,
                }),
                HealthCheck::Tcp { port } => opts.tcp_checks.push((s.name.clone(), *port)),
                // HTTP needs a request: the apply stage's health gate does it.
                HealthCheck::Http { .. } => {}
            }
        }
    }
    opts.ports.sort_unstable();
    opts.ports.dedup();
    opts
}

/// Probe one host with default options (no health checks).
pub async fn observe_host(t: &dyn Transport, host: &Host) -> Observation {
    observe_host_with(t, host, &ProbeOptions::default()).await
}

/// Probe one host; every failure becomes `Unreachable` with the reason.
pub async fn observe_host_with(t: &dyn Transport, host: &Host, opts: &ProbeOptions) -> Observation {
    match try_observe(t, host, opts).await {
        Ok(st) => Observation::Reachable(st),
        Err(e) => Observation::unreachable(e.metric_label(), e.to_string()),
    }
}

/// Probe one host, naming the sockets `cache` remembers (see [`known`]) and
/// remembering what this probe saw.
pub async fn observe_host_cached(
    t: &dyn Transport,
    host: &Host,
    opts: &ProbeOptions,
    cache: Option<&SocketCache>,
) -> Observation {
    let Some(cache) = cache else {
        return observe_host_with(t, host, opts).await;
    };
    let mut opts = opts.clone();
    opts.known = cache.known(&host.name, &opts);
    let o = observe_host_with(t, host, &opts).await;
    cache.update(&host.name, &o);
    o
}

/// Probe one host, keeping the error's kind (for metrics).
pub async fn try_observe(
    t: &dyn Transport,
    host: &Host,
    opts: &ProbeOptions,
) -> Result<crate::model::HostState, ObserveError> {
    let (prelude, call) = probe::probe_call(&host.root, opts)?;
    let out = t.query_prepared(prelude, &call).await?;
    if !out.success() {
        let status = out
            .status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "a signal".into());
        let mut stderr = out.stderr_lossy();
        stderr.truncate(stderr.trim_end().len().min(500));
        return Err(ObserveError::Exit { status, stderr });
    }
    let mut st = parse(&out.stdout)?;
    apply_tcp_checks(&mut st, opts);
    Ok(st)
}

/// A `tcp` health check, judged from the listeners the probe saw: the port
/// accepts connections when something listens on it.
fn apply_tcp_checks(st: &mut crate::model::HostState, opts: &ProbeOptions) {
    for (svc, port) in &opts.tcp_checks {
        let listening = st.listeners.contains_key(port);
        if let Some(o) = st.services.get_mut(svc) {
            if o.running && o.healthy.is_none() {
                o.healthy = Some(listening);
            }
        }
    }
}

/// Where `observe_all` gets each host's transport (the pool in production).
pub trait Transports: Send + Sync {
    fn transport(&self, host: &Host) -> Result<Arc<dyn Transport>, TransportError>;
    /// Where probes remember each host's sockets (None: always walk the table).
    fn sockets(&self) -> Option<SocketCache> {
        None
    }
}

impl Transports for Pool {
    fn transport(&self, host: &Host) -> Result<Arc<dyn Transport>, TransportError> {
        self.get(host)
    }
    fn sockets(&self) -> Option<SocketCache> {
        Some(SocketCache::clone(&self.memory()))
    }
}

/// Observe `hosts` (names in `desired.hosts`) concurrently, each bounded by
/// [`DEFAULT_TIMEOUT`]. Names not in `desired` come back unreachable.
pub async fn observe_all(
    pool: &Pool,
    desired: &Desired,
    hosts: &[String],
) -> BTreeMap<String, Observation> {
    observe_all_with(pool, desired, hosts, DEFAULT_TIMEOUT, DEFAULT_CONCURRENCY).await
}

pub async fn observe_all_with(
    transports: &dyn Transports,
    desired: &Desired,
    hosts: &[String],
    timeout: Duration,
    concurrency: usize,
) -> BTreeMap<String, Observation> {
    let limit = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut out = BTreeMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    for name in hosts {
        let Some(host) = desired.hosts.get(name) else {
            out.insert(
                name.clone(),
                Observation::unreachable(
                    "not_in_git",
                    format!("host {name} is not in the manifests"),
                ),
            );
            continue;
        };
        let t = match transports.transport(host) {
            Ok(t) => t,
            Err(e) => {
                out.insert(
                    name.clone(),
                    Observation::unreachable(e.metric_label(), e.to_string()),
                );
                continue;
            }
        };
        let host = host.clone();
        let opts = options_for(desired, name);
        let limit = limit.clone();
        let cache = transports.sockets();
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let probe = observe_host_cached(t.as_ref(), &host, &opts, cache.as_ref());
            let obs = match tokio::time::timeout(timeout, probe).await {
                Ok(o) => o,
                Err(_) => {
                    Observation::unreachable("timeout", ObserveError::Timeout(timeout).to_string())
                }
            };
            (host.name, obs)
        });
    }
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((name, obs)) => {
                out.insert(name, obs);
            }
            Err(e) => tracing::error!("observe task failed: {e}"),
        }
    }
    // A task that panicked leaves its host out: say so rather than plan it away.
    for name in hosts {
        out.entry(name.clone())
            .or_insert_with(|| Observation::unreachable("panic", "observe task failed"));
    }
    out
}
