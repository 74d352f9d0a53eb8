//! The validated, resolved desired state and the observed state of hosts.
//!
//! These are the only shapes that cross stage boundaries: `manifest` produces
//! [`Desired`], `observe` produces [`Observation`]s, `plan` consumes both.

use crate::record::{Record, RuntimeKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Default directory that holds tend's releases and records on a host.
pub const DEFAULT_ROOT: &str = "/var/lib/tend";

/// The whole desired state at one revision.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Desired {
    pub hosts: BTreeMap<String, Host>,
    pub services: BTreeMap<String, Service>,
}

impl Desired {
    /// Services placed on `host`, in name order.
    pub fn services_on<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a Service> + 'a {
        self.services.values().filter(move |s| s.runs_on(host))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Host {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub address: Address,
    /// tend's directory on the host (releases, records, lock).
    pub root: String,
    /// Total memory in bytes, when declared.
    pub capacity: Option<u64>,
    /// Bytes used by things outside tend.
    pub reserved: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Address {
    /// The machine tend runs on.
    Local,
    Ssh(SshTarget),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SshTarget {
    pub address: String,
    pub port: u16,
    pub user: String,
    /// Private key on the controller (never in Git).
    pub identity: Option<PathBuf>,
    /// Pinned host public keys, OpenSSH format ("ssh-ed25519 AAAA...").
    pub host_keys: Vec<String>,
    /// A known_hosts file to verify against when no key is pinned.
    pub known_hosts: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Where it runs, resolved from `host`, `hosts` or `hostSelector`:
    /// one instance per host, in name order.
    pub hosts: Vec<String>,
    /// How an upgrade moves across the instances.
    pub rollout: Rollout,
    pub runtime: RuntimeKind,
    /// Declared version, or `src-<hash>` of the source tree when not declared.
    pub version: String,
    pub delivery: Delivery,
    /// Steps run with `sh -c` in the new release directory before the switch.
    pub install: Vec<String>,
    /// argv; run in the release directory.
    pub command: Vec<String>,
    pub env: BTreeMap<String, EnvValue>,
    pub ports: Vec<u16>,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    pub health: Option<Health>,
    pub depends_on: Vec<String>,
    /// Suspended services are observed and reported but never acted on.
    pub suspend: bool,
}

impl Service {
    pub fn runs_on(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h == host)
    }

    /// Hash of everything that, when changed, needs a restart (not the version:
    /// that is its own drift reason). Secrets are part of it so a rotated secret
    /// restarts the service; only the digest ever leaves the controller.
    pub fn config_hash(&self) -> String {
        let mut h = Sha256::new();
        let mut put = |k: &str, v: &[u8]| {
            h.update((k.len() as u64).to_le_bytes());
            h.update(k.as_bytes());
            h.update((v.len() as u64).to_le_bytes());
            h.update(v);
        };
        put("runtime", self.runtime.as_str().as_bytes());
        for c in &self.command {
            put("command", c.as_bytes());
        }
        for i in &self.install {
            put("install", i.as_bytes());
        }
        for (k, v) in &self.env {
            put("env.key", k.as_bytes());
            put("env.value", v.value.as_bytes());
        }
        for p in &self.ports {
            put("port", &p.to_le_bytes());
        }
        put(
            "memory",
            self.memory
                .map(|m| m.to_string())
                .unwrap_or_default()
                .as_bytes(),
        );
        match &self.delivery {
            Delivery::None => put("delivery", b"none"),
            Delivery::Source(s) => put("delivery.source", s.digest.as_bytes()),
            Delivery::Artifact { url, sha256 } => {
                put("delivery.artifact.url", url.as_bytes());
                put("delivery.artifact.sha256", sha256.as_bytes());
            }
            Delivery::Image { image } => put("delivery.image", image.as_bytes()),
        }
        hex::encode(&h.finalize()[..12])
    }
}

/// How an upgrade of a service with many instances proceeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rollout {
    /// Instances that may be down at once, counting those already down.
    pub max_unavailable: Share,
    /// Wait between one batch turning healthy and the next starting.
    #[serde(with = "humantime_serde")]
    pub pause_between: Duration,
    pub failure_action: FailureAction,
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout {
            max_unavailable: Share::Count(1),
            pause_between: Duration::ZERO,
            failure_action: FailureAction::Rollback,
        }
    }
}

/// A number of instances, or a percentage of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Share {
    Count(u32),
    Percent(u32),
}

impl Share {
    /// Out of `n` instances, rounded down, and at least 1 so a rollout
    /// always moves (Kubernetes rounds `maxUnavailable` the same way).
    pub fn of(self, n: usize) -> usize {
        let k = match self {
            Share::Count(c) => c as usize,
            Share::Percent(p) => n * p as usize / 100,
        };
        k.max(1)
    }
}

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Share::Count(c) => write!(f, "{c}"),
            Share::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// What the first failed batch of a rollout does besides stopping it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    /// The instances already on the new version go back to the old one.
    Rollback,
    /// The instances that passed their gate keep the new version.
    Pause,
}

/// How a release's files reach the host.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Delivery {
    /// Nothing to ship: the command is already on the host.
    None,
    /// Files from the repository at the desired revision.
    Source(SourceTree),
    /// Fetched on the host, checked against sha256.
    Artifact { url: String, sha256: String },
    /// A container image (podman).
    Image { image: String },
}

/// A directory of the manifests repository, read at validate time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceTree {
    /// Path relative to the repository root.
    pub path: String,
    /// sha256 over paths, modes and contents (hex).
    pub digest: String,
    #[serde(skip)]
    pub files: Arc<Vec<SourceFile>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SourceFile {
    /// Relative to the source directory, '/'-separated, no `..`.
    pub path: String,
    pub executable: bool,
    pub contents: Vec<u8>,
}

/// An environment value, resolved on the controller.
#[derive(Clone, PartialEq)]
pub struct EnvValue {
    pub value: String,
    /// Came from `fromEnv`/`fromFile`/`fromAge`: never printed, logged or exported.
    pub secret: bool,
}

impl EnvValue {
    pub fn literal(v: impl Into<String>) -> Self {
        EnvValue {
            value: v.into(),
            secret: false,
        }
    }
    pub fn secret(v: impl Into<String>) -> Self {
        EnvValue {
            value: v.into(),
            secret: true,
        }
    }
    /// What may be shown to people.
    pub fn display(&self) -> &str {
        if self.secret {
            "<redacted>"
        } else {
            &self.value
        }
    }
}

impl fmt::Debug for EnvValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.display())
    }
}

impl Serialize for EnvValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.display())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    pub check: HealthCheck,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub retries: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum HealthCheck {
    /// GET http://127.0.0.1:port/path on the host; 2xx is healthy.
    Http { port: u16, path: String },
    /// A TCP connect to 127.0.0.1:port on the host.
    Tcp { port: u16 },
    /// argv run on the host in the release directory; exit 0 is healthy.
    Command { command: Vec<String> },
}

// ---------------------------------------------------------------- observed

/// What one host looked like at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase", tag = "state")]
pub enum Observation {
    Reachable(HostState),
    Unreachable {
        reason: String,
        /// The error's metric label (`timeout`, `connect`, `auth`, …): the
        /// `reason` of `tend_host_errors_total`.
        #[serde(skip)]
        cause: &'static str,
    },
}

impl Observation {
    pub fn unreachable(cause: &'static str, reason: impl Into<String>) -> Observation {
        Observation::Unreachable {
            reason: reason.into(),
            cause,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HostState {
    pub facts: HostFacts,
    /// Every service tend has a record of on this host, by name.
    pub services: BTreeMap<String, ObservedService>,
    /// Listening TCP ports on the host and who holds them.
    pub listeners: BTreeMap<u16, Listener>,
    /// Records that could not be read, by service: that service's problem
    /// only (the rest of the host is still observed and managed).
    pub bad_records: BTreeMap<String, String>,
    /// The listening sockets tend services hold, as the next probe can
    /// check them without walking the kernel's socket table.
    #[serde(skip)]
    pub held: Vec<HeldSocket>,
}

/// A listening socket held by a service process: fd `fd` of `pid` is
/// socket `inode`, listening on `port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldSocket {
    pub port: u16,
    pub inode: u64,
    pub pid: u32,
    pub fd: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HostFacts {
    pub hostname: String,
    pub mem_total: u64,
    pub mem_available: u64,
    pub cgroup: CgroupMode,
    /// /proc/sys/kernel/random/boot_id: start times are only comparable within one boot.
    pub boot_id: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    /// cgroup v2 with the memory controller.
    V2,
    /// cgroup v1 memory hierarchy.
    V1,
    /// No usable memory controller: limits cannot be enforced.
    #[default]
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listener {
    /// The holder's pid, when the probe could tell.
    pub pid: Option<u32>,
    /// The tend service holding it, if any.
    pub service: Option<String>,
    /// The holder's command name (from /proc/PID/comm), when known.
    pub comm: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObservedService {
    pub record: Record,
    /// The recorded process is alive and is the same process (start time matches).
    pub running: bool,
    /// Bytes in use by the service's cgroup, when known.
    pub memory_usage: Option<u64>,
    /// The limit in force on the host, in bytes (None: unlimited or unknown).
    pub memory_limit: Option<u64>,
    /// The kernel OOM-killed something in the service's cgroup.
    pub oom_killed: bool,
    /// How many times, as the kernel (or systemd's stop hook) counted them;
    /// 0 when none or unknown.
    pub oom_kills: u64,
    /// Result of the last health check; None when not checked.
    pub healthy: Option<bool>,
}
