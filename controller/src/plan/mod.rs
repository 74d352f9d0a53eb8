//! The plan: a pure function of desired × observed → drift and actions.
//!
//! No I/O here. Every drift rule and ordering rule lives in this module and is
//! unit- and property-tested.

use crate::instance::InstanceId;
use crate::model::{Desired, Observation};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Why a service does not match Git.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftReason {
    /// In Git, no record on the host.
    Missing,
    /// Recorded, but its process is not alive (or the pid was reused).
    Stopped,
    /// Recorded version differs from Git.
    Version,
    /// Command, env, ports, memory, install or delivery differ from Git.
    Config,
    /// The memory limit in force on the host differs from Git.
    MemoryLimit,
    /// A declared port is held by something that is not this service.
    Port,
    /// Running, but its health check fails.
    Unhealthy,
    /// The kernel OOM-killed it since tend started it (count: `oom_kills`):
    /// stopped, or restarted by its supervisor (planned as a restart).
    OomKilled,
    /// Another instance's health gate failed this version, and the
    /// rollout's `failureAction: rollback` takes this one back too.
    RolloutFailed,
    /// Its record on the host cannot be read: nothing is done to it until a
    /// person repairs or removes the file; the host's other services are.
    Record,
    /// Installed by tend, no longer in Git: a prune candidate.
    Unmanaged,
}

impl DriftReason {
    pub const ALL: [DriftReason; 11] = [
        DriftReason::Missing,
        DriftReason::Stopped,
        DriftReason::Version,
        DriftReason::Config,
        DriftReason::MemoryLimit,
        DriftReason::Port,
        DriftReason::Unhealthy,
        DriftReason::OomKilled,
        DriftReason::RolloutFailed,
        DriftReason::Record,
        DriftReason::Unmanaged,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            DriftReason::Missing => "missing",
            DriftReason::Stopped => "stopped",
            DriftReason::Version => "version",
            DriftReason::Config => "config",
            DriftReason::MemoryLimit => "memory_limit",
            DriftReason::Port => "port",
            DriftReason::Unhealthy => "unhealthy",
            DriftReason::OomKilled => "oom_killed",
            DriftReason::RolloutFailed => "rollout_failed",
            DriftReason::Record => "record",
            DriftReason::Unmanaged => "unmanaged",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Install (if needed) and start a release that is not running.
    Start,
    /// Stop a service that is suspended... or being pruned (see Prune).
    Stop,
    /// Install a new release (version/config/delivery), switch, restart, gate on health.
    Upgrade,
    /// Restart the current release (memory limit or health drift).
    Restart,
    /// Stop and remove a service tend installed that is no longer in Git.
    Prune,
    /// Switch back to the previous release.
    Rollback,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Start => "start",
            ActionKind::Stop => "stop",
            ActionKind::Upgrade => "upgrade",
            ActionKind::Restart => "restart",
            ActionKind::Prune => "prune",
            ActionKind::Rollback => "rollback",
        }
    }
}

/// How one service stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    InSync,
    Drifted,
    /// `suspend: true`: observed, never acted on.
    Suspended,
    /// Its host could not be observed.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServicePlan {
    pub service: String,
    pub host: String,
    pub status: Status,
    pub reasons: Vec<DriftReason>,
    /// Desired version (None for unmanaged services).
    pub desired_version: Option<String>,
    /// Version in tend's record on the host, if any.
    pub observed_version: Option<String>,
    /// Why no action converges this drift (e.g. a stranger holds the port).
    pub blocked: Option<String>,
    /// OOM kills the host counted for this service's cgroup (0: none seen).
    #[serde(skip_serializing_if = "is_zero")]
    pub oom_kills: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Action {
    pub kind: ActionKind,
    pub service: String,
    pub host: String,
    /// Instances (any host) that must be healthy before this action runs:
    /// all of them, unless `needs` asks fewer of a service's.
    pub after: Vec<InstanceId>,
    /// Of a replicated dependency's instances in `after`, how many suffice.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<Need>,
    /// The drift this action repairs.
    pub reasons: Vec<DriftReason>,
    /// Wait this long once `after` converged (a rollout's pause between batches).
    #[serde(with = "humantime_serde", skip_serializing_if = "Duration::is_zero")]
    pub pause: Duration,
}

/// At least `at_least` of the instances of `service` in an action's `after`
/// must converge: a replicated dependency is there when no more than its
/// `maxUnavailable` instances are missing, and at least one is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Need {
    pub service: String,
    pub at_least: usize,
}

/// How a service with several instances stands in its rollout.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutStatus {
    pub service: String,
    pub instances: usize,
    /// Instances in sync with Git.
    pub current: usize,
    /// `3/5 current, batch 2 of 3`.
    pub progress: String,
    pub unavailable: usize,
    pub max_unavailable: usize,
    /// Hosts of each batch this plan runs, in order (repairs of instances
    /// already down come first).
    pub batches: Vec<Vec<String>>,
    /// Why the rollout is stopped, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub halted: Option<String>,
}

impl Action {
    pub fn id(&self) -> InstanceId {
        InstanceId::new(&self.service, &self.host)
    }
}

impl ServicePlan {
    pub fn id(&self) -> InstanceId {
        InstanceId::new(&self.service, &self.host)
    }
}

/// Memory budget of one host: the seed's capacity analysis, every run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryBudget {
    pub host: String,
    pub capacity: Option<u64>,
    pub reserved: u64,
    /// Sum of the declared limits of the host's services.
    pub committed: u64,
    /// Observed, when the host was reached.
    pub mem_total: Option<u64>,
    pub mem_available: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Plan {
    /// One entry per service in Git or on a host, ordered by host then name.
    pub services: Vec<ServicePlan>,
    /// In execution order: every action comes after those in its `after`.
    pub actions: Vec<Action>,
    /// Hosts that could not be observed, with the reason.
    pub unreachable: BTreeMap<String, String>,
    pub memory: Vec<MemoryBudget>,
    /// Services with more than one instance.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rollouts: Vec<RolloutStatus>,
}

impl Plan {
    pub fn in_sync(&self) -> bool {
        self.actions.is_empty()
            && self.unreachable.is_empty()
            && self
                .services
                .iter()
                .all(|s| matches!(s.status, Status::InSync | Status::Suspended))
    }
}

mod drift;
mod order;
mod rollout;
#[cfg(test)]
mod rollout_tests;
#[cfg(test)]
mod tests;

pub use drift::{limits_match, PAGE_TOLERANCE};

/// Compute the plan. Pure: same inputs, same plan.
///
/// Only hosts present in `observed` are planned (a label selector observes a
/// subset); desired services on other hosts do not appear.
pub fn plan(desired: &Desired, observed: &BTreeMap<String, Observation>) -> Plan {
    plan_for(desired, observed, None)
}

/// The plan when only `selected` hosts may be acted on (None: all): the
/// other observed hosts count for rollouts' availability, get no batches.
pub fn plan_for(
    desired: &Desired,
    observed: &BTreeMap<String, Observation>,
    selected: Option<&BTreeSet<String>>,
) -> Plan {
    let (mut services, mut actions, memory) = drift::diff(desired, observed);
    let rollouts = rollout::shape(desired, observed, selected, &mut services, &mut actions);
    let unreachable = observed
        .iter()
        .filter_map(|(h, o)| match o {
            Observation::Unreachable { reason, .. } => Some((h.clone(), reason.clone())),
            Observation::Reachable(_) => None,
        })
        .collect();
    Plan {
        services,
        actions: order::order(actions),
        unreachable,
        memory,
        rollouts,
    }
}
