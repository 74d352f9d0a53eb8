//! The metrics of docs/METRICS.md (a contract: alert rules and dashboards use
//! these names), the process metrics from /proc/self, and a drop-guard timer.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::RwLock;
use std::time::Instant;

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

/// process_* from /proc/self, read on each scrape.
#[derive(Debug)]
struct ProcessCollector;

#[derive(Debug, Default, PartialEq)]
pub struct ProcessStats {
    pub resident_bytes: u64,
    pub cpu_seconds: f64,
    pub start_time_seconds: f64,
    pub open_fds: u64,
}

/// Read the controller's own numbers; None off Linux or when /proc is absent.
pub fn process_stats() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces and parens: fields start after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Field n (1-based, man proc) is f[n - 3].
    let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    // SAFETY: sysconf has no preconditions.
    let (tck, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let tck = if tck > 0 { tck as f64 } else { 100.0 };
    let page = if page > 0 { page as u64 } else { 4096 };
    let cpu = (num(14)? + num(15)?) as f64 / tck;
    let start_ticks = num(22)? as f64;
    let rss = num(24)? * page;
    let btime = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix("btime ")
                .and_then(|v| v.trim().parse::<f64>().ok())
        })?;
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Some(ProcessStats {
        resident_bytes: rss,
        cpu_seconds: cpu,
        start_time_seconds: btime + start_ticks / tck,
        open_fds: fds,
    })
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(p) = process_stats() else {
            return Ok(());
        };
        let g = ConstGauge::new(clamp(p.resident_bytes));
        g.encode(encoder.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            None,
            g.metric_type(),
        )?)?;
        let c = ConstCounter::new(p.cpu_seconds);
        c.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            c.metric_type(),
        )?)?;
        let g = ConstGauge::new(p.start_time_seconds);
        g.encode(encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            None,
            g.metric_type(),
        )?)?;
        let g = ConstGauge::new(clamp(p.open_fds));
        g.encode(encoder.encode_descriptor(
            "process_open_fds",
            "Number of open file descriptors",
            None,
            g.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Metrics {
        let m = Metrics::new();
        m.set_fleet(
            &[HostSample {
                host: "tencent".into(),
                up: true,
                committed: 1 << 30,
                capacity: Some(3 << 30),
                reserved: 1 << 29,
                available: Some(1 << 30),
            }],
            &[ServiceSample {
                host: "tencent".into(),
                service: "ai-service-1".into(),
                in_sync: false,
                reasons: vec!["version", "stopped"],
                healthy: Some(false),
                memory_usage: Some(100),
                memory_limit: Some(512 << 20),
                oom_kills: 2,
            }],
        );
        m.reconcile_done("schedule", "success", Some(1.7e9));
        m.action("upgrade", "rolled_back");
        m.rollback("tencent", "ai-service-1");
        m.trigger("api");
        m.host_error("tencent", "timeout");
        m.host_error("tencent", "backoff");
        m.source("abc123", "main");
        m.manifests_valid(true);
        drop(m.reconcile_timer());
        drop(m.phase_timer("observe"));
        m
    }

    #[test]
    fn every_contract_name_is_exported() {
        let text = sample().encode();
        for name in [
            "tend_service_in_sync{",
            "tend_service_drift{",
            "tend_service_healthy{",
            "tend_service_memory_usage_bytes{",
            "tend_service_memory_limit_bytes{",
            "tend_host_up{",
            "tend_host_memory_committed_bytes{",
            "tend_host_memory_capacity_bytes{",
            "tend_host_memory_reserved_bytes{",
            "tend_host_memory_available_bytes{",
            "tend_reconciles_total{",
            "tend_reconcile_duration_seconds_bucket{",
            "tend_phase_duration_seconds_bucket{",
            "tend_actions_total{",
            "tend_rollbacks_total{",
            "tend_source_info{",
            "tend_manifests_valid ",
            "tend_last_success_timestamp_seconds ",
            "tend_triggers_total{",
            "tend_service_oom_kills{",
            "tend_host_errors_total{",
            "process_resident_memory_bytes ",
            "process_cpu_seconds_total ",
            "process_start_time_seconds ",
            "process_open_fds ",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }

    /// docs/METRICS.md is the contract the dashboard and alert rules are
    /// checked against (tests/e2e/deploy.rs): every name in it is exported.
    #[test]
    fn every_name_in_the_metrics_doc_is_exported() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/METRICS.md"))
                .expect("docs/METRICS.md");
        let text = sample().encode();
        let mut names = 0;
        for line in doc.lines().filter(|l| l.starts_with("| `")) {
            let cols: Vec<&str> = line.split('|').map(str::trim).collect();
            let kind = cols.get(2).copied().unwrap_or("");
            for name in cols[1].split('`').skip(1).step_by(2) {
                names += 1;
                let series = match kind {
                    "counter" if !name.ends_with("_total") => format!("{name}_total"),
                    "histogram" => format!("{name}_bucket"),
                    _ => name.to_string(),
                };
                let found = text.lines().any(|l| {
                    l.starts_with(&format!("{series}{{")) || l.starts_with(&format!("{series} "))
                });
                assert!(found, "{series} (docs/METRICS.md) is not exported:\n{text}");
            }
        }
        assert!(names > 20, "read only {names} names from docs/METRICS.md");
    }

    #[test]
    fn host_errors_count_by_reason_and_a_host_in_backoff_is_not_counted() {
        let text = sample().encode();
        assert!(
            text.contains("tend_host_errors_total{host=\"tencent\",reason=\"timeout\"} 1"),
            "{text}"
        );
        assert!(!text.contains("reason=\"backoff\""), "{text}");
        assert!(
            text.contains("tend_service_oom_kills{host=\"tencent\",service=\"ai-service-1\"} 2"),
            "{text}"
        );
    }

    #[test]
    fn a_service_that_left_git_leaves_the_metrics() {
        let m = sample();
        m.set_fleet(&[], &[]);
        let text = m.encode();
        assert!(!text.contains("tend_service_drift{"), "{text}");
        assert!(!text.contains("tend_service_in_sync{"), "{text}");
    }

    #[test]
    fn a_real_scrape_passes_promtool() {
        let text = sample().encode_prometheus();
        let Ok(mut child) = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
        else {
            if std::env::var("TEND_E2E").as_deref() == Ok("required") {
                panic!("promtool not installed");
            }
            eprintln!("skip: promtool not installed");
            return;
        };
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn process_stats_are_read_from_proc() {
        let p = process_stats().expect("/proc/self");
        assert!(p.resident_bytes > 0);
        assert!(p.open_fds > 0);
        assert!(p.start_time_seconds > 1.0e9);
    }
}
