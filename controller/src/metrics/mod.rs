//! The metrics of docs/METRICS.md (a contract: alert rules and dashboards use
//! these names), the process metrics from /proc/self, and a drop-guard timer.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::RwLock;
use std::time::Instant;

mod process;

use process::ProcessCollector;
pub use process::{process_stats, ProcessStats};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabels {
    pub host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub host: String,
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftLabels {
    pub host: String,
    pub service: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub trigger: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub kind: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub revision: String,
    pub branch: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabels {
    pub trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostErrorLabels {
    pub host: String,
    pub reason: String,
}

type F64Gauge = Gauge<f64, AtomicU64>;

/// One service's numbers, as the controller last saw them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceSample {
    pub host: String,
    pub service: String,
    pub in_sync: bool,
    pub reasons: Vec<&'static str>,
    pub healthy: Option<bool>,
    pub memory_usage: Option<u64>,
    pub memory_limit: Option<u64>,
    /// OOM kills counted for its cgroup (0: none seen; no series then).
    pub oom_kills: u64,
}

/// One host's numbers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostSample {
    pub host: String,
    pub up: bool,
    pub committed: u64,
    pub capacity: Option<u64>,
    pub reserved: u64,
    pub available: Option<u64>,
}

pub struct Metrics {
    registry: Registry,
    /// Held for writing while per-service families are replaced, for reading
    /// while encoding: a scrape never sees half a reconcile.
    swap: RwLock<()>,
    service_in_sync: Family<ServiceLabels, Gauge>,
    service_drift: Family<DriftLabels, Gauge>,
    service_healthy: Family<ServiceLabels, Gauge>,
    service_memory_usage: Family<ServiceLabels, Gauge>,
    service_memory_limit: Family<ServiceLabels, Gauge>,
    service_oom_kills: Family<ServiceLabels, Gauge>,
    host_up: Family<HostLabels, Gauge>,
    host_committed: Family<HostLabels, Gauge>,
    host_capacity: Family<HostLabels, Gauge>,
    host_reserved: Family<HostLabels, Gauge>,
    host_available: Family<HostLabels, Gauge>,
    reconciles: Family<ReconcileLabels, Counter>,
    reconcile_duration: Histogram,
    phase_duration: Family<PhaseLabels, Histogram>,
    actions: Family<ActionLabels, Counter>,
    rollbacks: Family<ServiceLabels, Counter>,
    source_info: Family<SourceLabels, Gauge>,
    manifests_valid: Gauge,
    last_success: F64Gauge,
    triggers: Family<TriggerLabels, Counter>,
    host_errors: Family<HostErrorLabels, Counter>,
    source_errors: Family<ReasonLabels, Counter>,
    source_last_success: F64Gauge,
    drift_held: Family<WindowLabels, Gauge>,
    awaiting_approval: Gauge,
    rollout_instances: Family<RolloutLabels, Gauge>,
    rollout_max_unavailable: Family<ServiceNameLabels, Gauge>,
    rollout_halted: Family<ServiceNameLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WindowLabels {
    pub window: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutLabels {
    pub service: String,
    /// `desired`, `current` or `unavailable`.
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceNameLabels {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

fn duration_buckets() -> Histogram {
    // 10 ms .. ~20 min
    Histogram::new(exponential_buckets(0.01, 2.5, 14))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            swap: RwLock::new(()),
            service_in_sync: Family::default(),
            service_drift: Family::default(),
            service_healthy: Family::default(),
            service_memory_usage: Family::default(),
            service_memory_limit: Family::default(),
            service_oom_kills: Family::default(),
            host_up: Family::default(),
            host_committed: Family::default(),
            host_capacity: Family::default(),
            host_reserved: Family::default(),
            host_available: Family::default(),
            reconciles: Family::default(),
            reconcile_duration: duration_buckets(),
            phase_duration: Family::new_with_constructor(duration_buckets),
            actions: Family::default(),
            rollbacks: Family::default(),
            source_info: Family::default(),
            manifests_valid: Gauge::default(),
            last_success: F64Gauge::default(),
            triggers: Family::default(),
            host_errors: Family::default(),
            source_errors: Family::default(),
            source_last_success: F64Gauge::default(),
            drift_held: Family::default(),
            awaiting_approval: Gauge::default(),
            rollout_instances: Family::default(),
            rollout_max_unavailable: Family::default(),
            rollout_halted: Family::default(),
        };
        let r = &mut registry;
        r.register(
            "tend_service_in_sync",
            "1 when the service matches Git, else 0",
            m.service_in_sync.clone(),
        );
        r.register(
            "tend_service_drift",
            "1 per drift reason present",
            m.service_drift.clone(),
        );
        r.register(
            "tend_service_healthy",
            "1 healthy, 0 failing (absent when never checked)",
            m.service_healthy.clone(),
        );
        r.register(
            "tend_service_memory_usage_bytes",
            "Observed memory use of the service's cgroup",
            m.service_memory_usage.clone(),
        );
        r.register(
            "tend_service_memory_limit_bytes",
            "Memory limit in force on the host",
            m.service_memory_limit.clone(),
        );
        r.register(
            "tend_service_oom_kills",
            "OOM kills the host counted for the service (memory.events, memory.oom_control or systemd's stop hook)",
            m.service_oom_kills.clone(),
        );
        r.register(
            "tend_rollout_instances",
            "Instances of a service placed on several hosts: desired, current (in sync with Git), unavailable",
            m.rollout_instances.clone(),
        );
        r.register(
            "tend_rollout_max_unavailable",
            "Instances of the service its rollout may take down at once",
            m.rollout_max_unavailable.clone(),
        );
        r.register(
            "tend_rollout_halted",
            "1 when the service's rollout stopped on a version that failed its health check",
            m.rollout_halted.clone(),
        );
        r.register(
            "tend_host_up",
            "1 when the last observation reached the host",
            m.host_up.clone(),
        );
        r.register(
            "tend_host_memory_committed_bytes",
            "Sum of the declared limits of the host's services",
            m.host_committed.clone(),
        );
        r.register(
            "tend_host_memory_capacity_bytes",
            "Declared memory capacity",
            m.host_capacity.clone(),
        );
        r.register(
            "tend_host_memory_reserved_bytes",
            "Declared memory reserved outside tend",
            m.host_reserved.clone(),
        );
        r.register(
            "tend_host_memory_available_bytes",
            "MemAvailable observed on the host",
            m.host_available.clone(),
        );
        r.register(
            "tend_reconciles",
            "Reconciles by trigger and result",
            m.reconciles.clone(),
        );
        r.register(
            "tend_reconcile_duration_seconds",
            "Duration of a whole reconcile",
            m.reconcile_duration.clone(),
        );
        r.register(
            "tend_phase_duration_seconds",
            "Duration of one reconcile phase",
            m.phase_duration.clone(),
        );
        r.register(
            "tend_actions",
            "Actions by kind and result",
            m.actions.clone(),
        );
        r.register(
            "tend_rollbacks",
            "Automatic rollbacks after a failed health gate",
            m.rollbacks.clone(),
        );
        r.register(
            "tend_source_info",
            "1 for the revision in force",
            m.source_info.clone(),
        );
        r.register(
            "tend_manifests_valid",
            "1 when the newest revision validated, 0 when it was refused",
            m.manifests_valid.clone(),
        );
        r.register(
            "tend_last_success_timestamp_seconds",
            "Unix time of the last successful reconcile",
            m.last_success.clone(),
        );
        r.register(
            "tend_triggers",
            "Triggers received, coalesced ones too",
            m.triggers.clone(),
        );
        r.register(
            "tend_host_errors",
            "Times a host could not be observed or locked, by the error's label",
            m.host_errors.clone(),
        );
        r.register(
            "tend_source_errors",
            "Polls of the source that did not give a revision to follow (fetch, rewritten, signature, invalid)",
            m.source_errors.clone(),
        );
        r.register(
            "tend_source_last_success_timestamp_seconds",
            "Unix time of the last poll that left a valid revision of the newest commit in force",
            m.source_last_success.clone(),
        );
        r.register(
            "tend_drift_held_by_window",
            "Instances whose drift a sync window holds (not acted on), by window",
            m.drift_held.clone(),
        );
        r.register(
            "tend_plans_awaiting_approval",
            "1 while approve-mode actions wait for their plan to be approved",
            m.awaiting_approval.clone(),
        );
        registry.register_collector(Box::new(ProcessCollector));
        Metrics { registry, ..m }
    }

    /// OpenMetrics text.
    pub fn encode(&self) -> String {
        let _g = self.swap.read().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Prometheus text format 0.0.4, for scrapers (and promtool) that do not
    /// ask for OpenMetrics: counter families are named with their `_total`.
    pub fn encode_prometheus(&self) -> String {
        to_prometheus_text(&self.encode())
    }

    pub fn set_awaiting_approval(&self, waiting: bool) {
        self.awaiting_approval.set(i64::from(waiting));
    }

    /// Instances held now, by window; windows holding none have no series.
    pub fn set_held(&self, held: &std::collections::BTreeMap<String, usize>) {
        let _g = self.swap.write().unwrap_or_else(|e| e.into_inner());
        self.drift_held.clear();
        for (window, n) in held {
            let l = WindowLabels {
                window: window.clone(),
            };
            self.drift_held
                .get_or_create(&l)
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }

    /// Replace every per-host and per-service series with these samples, so
    /// services and hosts that left Git leave the metrics too.
    pub fn set_fleet(&self, hosts: &[HostSample], services: &[ServiceSample]) {
        let _g = self.swap.write().unwrap_or_else(|e| e.into_inner());
        for f in [
            &self.service_in_sync,
            &self.service_healthy,
            &self.service_memory_usage,
            &self.service_memory_limit,
            &self.service_oom_kills,
        ] {
            f.clear();
        }
        self.service_drift.clear();
        for f in [
            &self.host_up,
            &self.host_committed,
            &self.host_capacity,
            &self.host_reserved,
            &self.host_available,
        ] {
            f.clear();
        }
        for s in services {
            let l = ServiceLabels {
                host: s.host.clone(),
                service: s.service.clone(),
            };
            self.service_in_sync
                .get_or_create(&l)
                .set(i64::from(s.in_sync));
            for r in &s.reasons {
                self.service_drift
                    .get_or_create(&DriftLabels {
                        host: s.host.clone(),
                        service: s.service.clone(),
                        reason: (*r).to_string(),
                    })
                    .set(1);
            }
            if let Some(h) = s.healthy {
                self.service_healthy.get_or_create(&l).set(i64::from(h));
            }
            if let Some(u) = s.memory_usage {
                self.service_memory_usage.get_or_create(&l).set(clamp(u));
            }
            if let Some(m) = s.memory_limit {
                self.service_memory_limit.get_or_create(&l).set(clamp(m));
            }
            if s.oom_kills > 0 {
                self.service_oom_kills
                    .get_or_create(&l)
                    .set(clamp(s.oom_kills));
            }
        }
        for h in hosts {
            let l = HostLabels {
                host: h.host.clone(),
            };
            self.host_up.get_or_create(&l).set(i64::from(h.up));
            self.host_committed
                .get_or_create(&l)
                .set(clamp(h.committed));
            self.host_reserved.get_or_create(&l).set(clamp(h.reserved));
            if let Some(c) = h.capacity {
                self.host_capacity.get_or_create(&l).set(clamp(c));
            }
            if let Some(a) = h.available {
                self.host_available.get_or_create(&l).set(clamp(a));
            }
        }
    }

    /// Replace the rollout series with these (services placed on one host
    /// have none).
    pub fn set_rollouts(&self, rollouts: &[crate::plan::RolloutStatus]) {
        let _g = self.swap.write().unwrap_or_else(|e| e.into_inner());
        self.rollout_instances.clear();
        self.rollout_max_unavailable.clear();
        self.rollout_halted.clear();
        for r in rollouts {
            for (state, n) in [
                ("desired", r.instances),
                ("current", r.current),
                ("unavailable", r.unavailable),
            ] {
                self.rollout_instances
                    .get_or_create(&RolloutLabels {
                        service: r.service.clone(),
                        state: state.into(),
                    })
                    .set(clamp(n as u64));
            }
            let l = ServiceNameLabels {
                service: r.service.clone(),
            };
            self.rollout_max_unavailable
                .get_or_create(&l)
                .set(clamp(r.max_unavailable as u64));
            self.rollout_halted
                .get_or_create(&l)
                .set(i64::from(r.halted.is_some()));
        }
    }

    pub fn reconcile_done(&self, trigger: &str, result: &str, success_unix: Option<f64>) {
        self.reconciles
            .get_or_create(&ReconcileLabels {
                trigger: trigger.into(),
                result: result.into(),
            })
            .inc();
        if let Some(t) = success_unix {
            self.last_success.set(t);
        }
    }

    pub fn action(&self, kind: &str, result: &str) {
        self.actions
            .get_or_create(&ActionLabels {
                kind: kind.into(),
                result: result.into(),
            })
            .inc();
    }

    pub fn rollback(&self, host: &str, service: &str) {
        self.rollbacks
            .get_or_create(&ServiceLabels {
                host: host.into(),
                service: service.into(),
            })
            .inc();
    }

    pub fn trigger(&self, trigger: &str) {
        self.triggers
            .get_or_create(&TriggerLabels {
                trigger: trigger.into(),
            })
            .inc();
    }

    /// A host that could not be observed or locked (`reason`: the error's
    /// `metric_label()`; a host skipped while it backs off is not counted).
    pub fn host_error(&self, host: &str, reason: &str) {
        if reason == "backoff" {
            return;
        }
        self.host_errors
            .get_or_create(&HostErrorLabels {
                host: host.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// A poll that did not give a revision to follow: `fetch` (remote
    /// gone, no branch, git or disk error), `rewritten`, `signature`,
    /// `invalid` (manifests refused).
    pub fn source_error(&self, reason: &str) {
        self.source_errors
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    /// The source is followed: the newest commit is the one in force.
    pub fn source_ok(&self, unix: f64) {
        self.source_last_success.set(unix);
    }

    pub fn source(&self, revision: &str, branch: &str) {
        let _g = self.swap.write().unwrap_or_else(|e| e.into_inner());
        self.source_info.clear();
        self.source_info
            .get_or_create(&SourceLabels {
                revision: revision.into(),
                branch: branch.into(),
            })
            .set(1);
    }

    pub fn manifests_valid(&self, valid: bool) {
        self.manifests_valid.set(i64::from(valid));
    }

    /// Observes the whole reconcile's duration when dropped.
    pub fn reconcile_timer(&self) -> Timer {
        Timer {
            hist: self.reconcile_duration.clone(),
            start: Instant::now(),
        }
    }

    /// Observes one phase's duration when dropped.
    pub fn phase_timer(&self, phase: &str) -> Timer {
        Timer {
            hist: self.phase_duration.get_or_create_owned(&PhaseLabels {
                phase: phase.into(),
            }),
            start: Instant::now(),
        }
    }
}

/// OpenMetrics text → Prometheus text 0.0.4 (the two differ in counter
/// family names, `# UNIT` and `# EOF`).
pub fn to_prometheus_text(open: &str) -> String {
    let counters: std::collections::HashSet<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len());
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find(|p| line.starts_with(p));
        if let Some(prefix) = meta {
            let rest = &line[prefix.len()..];
            let name = rest.split(' ').next().unwrap_or("");
            if counters.contains(name) {
                out.push_str(prefix);
                out.push_str(name);
                out.push_str("_total");
                out.push_str(&rest[name.len()..]);
                out.push('\n');
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Drop guard: records the time from creation to drop in its histogram, so a
/// phase that returns early (`?`) is still measured.
#[must_use = "the timer measures until it is dropped"]
pub struct Timer {
    hist: Histogram,
    start: Instant,
}

impl Timer {
    pub fn elapsed(&self) -> std::time::Duration {
        self.start.elapsed()
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.hist.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests;
