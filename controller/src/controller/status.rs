//! What `/status` shows: the source, every host and service, the last reconciles.
//! Built from plans and apply reports; never holds a secret value (services'
//! env is not part of it at all).

use super::coalesce::{Queued, Trigger};
use crate::plan::{DriftReason, RolloutStatus, Status};
use crate::source::SourceInfo;
use serde::Serialize;
use std::collections::BTreeMap;

/// Serialize a SystemTime as unix seconds (f64).
pub mod unix_time {
    use serde::Serializer;
    use std::time::{SystemTime, UNIX_EPOCH};

    pub fn secs(t: SystemTime) -> f64 {
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    }
    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64((secs(*t) * 1000.0).round() / 1000.0)
    }
}

/// Ledger entries the status page shows.
pub const LEDGER_RECENT: usize = 5;

/// Output kept per action, from the end.
pub const OUTPUT_TAIL: usize = 2000;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatusReport {
    pub controller: String,
    pub version: &'static str,
    /// True after the first reconcile finished.
    pub ready: bool,
    pub schedule: String,
    pub selector: BTreeMap<String, String>,
    pub source: SourceStatus,
    pub hosts: Vec<HostStatus>,
    /// Services with more than one instance: progress, batches, halts.
    pub rollouts: Vec<RolloutStatus>,
    pub running: Option<Queued>,
    pub pending: Option<Queued>,
    /// Sync windows and whether each is active now.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<WindowStatus>,
    /// Newest first.
    pub reconciles: Vec<ReconcileRecord>,
    /// The newest ledger entries, short (`GET /ledger` has them whole).
    pub ledger: Vec<LedgerSummary>,
    /// Approve-mode actions waiting for `POST /plans/{id}/approve`.
    pub awaiting_approval: Option<Awaiting>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Awaiting {
    #[serde(flatten)]
    pub pending: crate::approval::Pending,
    /// Unix time this id was first published.
    pub since: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LedgerSummary {
    pub seq: u64,
    pub at: f64,
    pub who: String,
    pub revision: Option<String>,
    pub result: String,
    /// `upgrade api@h1 1 → 2 failed`
    pub actions: Vec<String>,
}

impl LedgerSummary {
    pub fn of(e: &crate::ledger::Entry) -> LedgerSummary {
        let v = |x: &Option<String>| x.clone().unwrap_or_else(|| "–".into());
        LedgerSummary {
            seq: e.seq,
            at: e.at,
            who: e.who.clone(),
            revision: e.revision.clone(),
            result: e.result.clone(),
            actions: e
                .actions
                .iter()
                .map(|a| {
                    format!(
                        "{} {}@{} {} → {} {}",
                        a.kind,
                        a.service,
                        a.host,
                        v(&a.version_before),
                        v(&a.version_after),
                        a.result
                    )
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WindowStatus {
    pub name: String,
    pub kind: crate::window::WindowKind,
    pub schedule: String,
    pub timezone: String,
    pub active: bool,
    /// Unix time the active period ends (active) or the next one starts.
    pub until: Option<f64>,
    /// `until`, in the window's zone.
    pub until_local: Option<String>,
    pub manual_override: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SourceStatus {
    #[serde(flatten)]
    pub info: SourceInfo,
    /// The revision whose manifests are in force (the last good one).
    pub revision: Option<String>,
    pub subject: Option<String>,
    /// The newest revision seen, good or not.
    pub newest: Option<String>,
    /// False when the newest revision was refused.
    pub manifests_valid: bool,
    /// Why the newest revision was refused, `file:line:column: message` each.
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    /// Last failure talking to the source (unreachable remote, rewritten history).
    pub fetch_error: Option<String>,
    pub polled_at: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HostStatus {
    pub name: String,
    pub up: bool,
    /// Why it is not up.
    pub reason: Option<String>,
    /// Unix time before which the host is not tried again.
    pub backoff_until: Option<f64>,
    pub labels: BTreeMap<String, String>,
    pub memory: Option<MemoryStatus>,
    /// Why memory limits are not enforced there, when they are not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits_note: Option<String>,
    pub services: Vec<ServiceStatus>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MemoryStatus {
    pub capacity: Option<u64>,
    pub reserved: u64,
    pub committed: u64,
    pub available: Option<u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServiceStatus {
    pub name: String,
    pub host: String,
    pub status: Status,
    pub reasons: Vec<DriftReason>,
    pub desired_version: Option<String>,
    pub observed_version: Option<String>,
    pub blocked: Option<String>,
    pub running: Option<bool>,
    pub healthy: Option<bool>,
    pub memory_usage: Option<u64>,
    pub memory_limit: Option<u64>,
    /// OOM kills the host counted for this service (0: none seen).
    pub oom_kills: u64,
    pub last_action: Option<ActionRecord>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ActionRecord {
    pub kind: String,
    /// success, failure, rolled_back, skipped
    pub result: String,
    pub reconcile: u64,
    pub at: f64,
    pub message: Option<String>,
    /// The end of what the host printed.
    pub output: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReconcileRecord {
    pub id: u64,
    pub trigger: Trigger,
    /// Triggers this run answered (coalesced ones included).
    pub triggers: u64,
    pub started_at: f64,
    pub duration_seconds: f64,
    /// success, failure, partial
    pub result: String,
    pub revision: Option<String>,
    pub actions: Vec<ActionSummary>,
    pub error: Option<String>,
    /// Holds a manual `--override-window` let through (`api@h1 past deny window `x``).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub overrode: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ActionSummary {
    pub kind: String,
    pub host: String,
    pub service: String,
    pub result: String,
}

/// The last `n` bytes of `s`, cut at a char boundary.
pub fn tail(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut start = s.len() - n;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_never_splits_a_character() {
        let s = "ééééé";
        let t = tail(s, 3);
        assert!(t.ends_with('é'));
        assert_eq!(tail("abc", 10), "abc");
    }
}
