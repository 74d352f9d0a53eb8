//! Drift rules: desired service × what its host showed → reasons and one action.

use super::{Action, ActionKind, DriftReason, MemoryBudget, Need, ServicePlan, Status};
use crate::instance::{desired_instances, InstanceId};
use crate::model::{
    CgroupMode, Desired, HostState, Listener, Observation, ObservedService, Service,
};
use std::collections::{BTreeMap, BTreeSet};

/// The kernel rounds a memory limit down to whole pages; 64 KiB covers every
/// page size Linux uses (4 KiB .. 64 KiB).
pub const PAGE_TOLERANCE: u64 = 64 * 1024;

/// Whether the limit in force on a host is the desired one, allowing for
/// the kernel's rounding down to pages.
pub fn limits_match(desired: Option<u64>, in_force: Option<u64>) -> bool {
    match (desired, in_force) {
        (None, None) => true,
        (Some(d), Some(o)) => o <= d && d - o < PAGE_TOLERANCE,
        _ => false,
    }
}

pub(super) fn diff(
    desired: &Desired,
    observed: &BTreeMap<String, Observation>,
) -> (Vec<ServicePlan>, Vec<Action>, Vec<MemoryBudget>) {
    let mut services = Vec::new();
    let mut actions = Vec::new();
    let mut memory = Vec::new();
    for (host, obs) in observed {
        let state = match obs {
            Observation::Reachable(st) => Some(st),
            Observation::Unreachable { .. } => None,
        };
        let mut here: Vec<ServicePlan> = Vec::new();
        match state {
            None => {
                for s in desired.services_on(host) {
                    here.push(ServicePlan {
                        service: s.name.clone(),
                        host: host.clone(),
                        status: Status::Unknown,
                        reasons: Vec::new(),
                        desired_version: Some(s.version.clone()),
                        observed_version: None,
                        blocked: None,
                        oom_kills: 0,
                    });
                }
            }
            Some(st) => {
                for s in desired.services_on(host) {
                    if let Some(why) = st.bad_records.get(&s.name) {
                        here.push(unreadable(&s.name, host, Some(&s.version), why));
                        continue;
                    }
                    let (sp, action) = plan_service(desired, s, host, st);
                    here.push(sp);
                    actions.extend(action);
                }
                for (name, why) in &st.bad_records {
                    if desired.services.get(name).is_none_or(|s| !s.runs_on(host)) {
                        here.push(unreadable(name, host, None, why));
                    }
                }
                for (name, o) in &st.services {
                    let in_git = desired.services.get(name);
                    if in_git.is_some_and(|s| s.runs_on(host)) {
                        continue;
                    }
                    // A suspended service is never acted on, not even its old copy.
                    let suspended = in_git.is_some_and(|s| s.suspend);
                    here.push(ServicePlan {
                        service: name.clone(),
                        host: host.clone(),
                        status: if suspended {
                            Status::Suspended
                        } else {
                            Status::Drifted
                        },
                        reasons: vec![DriftReason::Unmanaged],
                        desired_version: None,
                        observed_version: Some(o.record.version.clone()),
                        blocked: None,
                        oom_kills: o.oom_kills,
                    });
                    if !suspended {
                        actions.push(Action {
                            kind: ActionKind::Prune,
                            service: name.clone(),
                            host: host.clone(),
                            after: Vec::new(),
                            needs: Vec::new(),
                            reasons: vec![DriftReason::Unmanaged],
                            pause: std::time::Duration::ZERO,
                        });
                    }
                }
            }
        }
        here.sort_by(|a, b| a.service.cmp(&b.service));
        services.extend(here);
        let h = desired.hosts.get(host);
        memory.push(MemoryBudget {
            host: host.clone(),
            capacity: h.and_then(|h| h.capacity),
            reserved: h.map(|h| h.reserved).unwrap_or(0),
            committed: desired.services_on(host).filter_map(|s| s.memory).sum(),
            mem_total: state.map(|s| s.facts.mem_total),
            mem_available: state.map(|s| s.facts.mem_available),
        });
    }
    (services, actions, memory)
}

/// A service whose record cannot be read: drifted, blocked, never acted on
/// (tend cannot tell which process is its own), named with the file.
fn unreadable(name: &str, host: &str, version: Option<&str>, why: &str) -> ServicePlan {
    ServicePlan {
        service: name.to_string(),
        host: host.to_string(),
        status: Status::Drifted,
        reasons: vec![DriftReason::Record],
        desired_version: version.map(str::to_string),
        observed_version: None,
        blocked: Some(format!(
            "{why}; repair or remove the file under the host's records/ and tend converges it"
        )),
        oom_kills: 0,
    }
}

fn plan_service(
    desired: &Desired,
    s: &Service,
    host: &str,
    st: &HostState,
) -> (ServicePlan, Option<Action>) {
    let obs = st.services.get(&s.name);
    let running = obs.is_some_and(|o| o.running);
    let mut reasons = BTreeSet::new();
    let mut blocked: Vec<String> = Vec::new();
    let mut version_blocked = false;

    match obs {
        None => {
            reasons.insert(DriftReason::Missing);
        }
        Some(o) => {
            if !o.running {
                reasons.insert(DriftReason::Stopped);
            }
            if o.record.version != s.version {
                reasons.insert(DriftReason::Version);
                if o.record.failed_version.as_deref() == Some(s.version.as_str()) {
                    version_blocked = true;
                    blocked.push(format!(
                        "version {} failed its health check and was rolled back; \
                         change the manifest to retry",
                        s.version
                    ));
                }
            }
            if o.record.config_hash != s.config_hash() {
                reasons.insert(DriftReason::Config);
            }
            if o.running && st.facts.cgroup != CgroupMode::None && !memory_in_force(s, o) {
                reasons.insert(DriftReason::MemoryLimit);
            }
            if o.running && o.healthy == Some(false) {
                reasons.insert(DriftReason::Unhealthy);
            }
            if o.oom_killed {
                reasons.insert(DriftReason::OomKilled);
            }
        }
    }

    let mut port_blocked = false;
    for p in &s.ports {
        if let Some(l) = st.listeners.get(p) {
            if held_by_other(l, &s.name, running) {
                reasons.insert(DriftReason::Port);
                port_blocked = true;
                blocked.push(format!("port {p} held by {}", describe_holder(l)));
            }
        }
    }

    let has = |r: DriftReason| reasons.contains(&r);
    let kind = if s.suspend || port_blocked {
        // Never act on a suspended service; a stranger on a port is left alone.
        None
    } else if has(DriftReason::Missing) {
        Some(ActionKind::Start)
    } else if !version_blocked && (has(DriftReason::Version) || has(DriftReason::Config)) {
        Some(ActionKind::Upgrade)
    } else if has(DriftReason::Stopped) {
        // After a rollback, restart the release in place rather than start
        // something that could install the failed version again.
        Some(if version_blocked {
            ActionKind::Restart
        } else {
            ActionKind::Start
        })
    } else if has(DriftReason::MemoryLimit)
        || has(DriftReason::Unhealthy)
        || has(DriftReason::OomKilled)
    {
        // Restarted by its supervisor after an OOM kill: a fresh start
        // resets the count, so the plan is clean once it runs within limits.
        Some(ActionKind::Restart)
    } else {
        None
    };

    // Edges go to where Git places each dependency, never to an old copy
    // being pruned elsewhere.
    let mut after: Vec<InstanceId> = s
        .depends_on
        .iter()
        .filter(|d| **d != s.name)
        .flat_map(|d| desired_instances(desired, d))
        .collect();
    after.sort();
    after.dedup();
    let needs: Vec<Need> = s
        .depends_on
        .iter()
        .filter_map(|d| desired.services.get(d))
        .filter(|d| d.name != s.name && d.hosts.len() > 1)
        .map(|d| Need {
            service: d.name.clone(),
            at_least: d
                .hosts
                .len()
                .saturating_sub(d.rollout.max_unavailable.of(d.hosts.len()))
                .max(1),
        })
        .collect();
    let action = kind.map(|kind| Action {
        kind,
        service: s.name.clone(),
        host: host.to_string(),
        after,
        needs,
        pause: std::time::Duration::ZERO,
        reasons: reasons
            .iter()
            .copied()
            .filter(|r| {
                *r != DriftReason::Port
                    && !(version_blocked && matches!(r, DriftReason::Version | DriftReason::Config))
            })
            .collect(),
    });

    let status = if s.suspend {
        Status::Suspended
    } else if reasons.is_empty() {
        Status::InSync
    } else {
        Status::Drifted
    };
    let sp = ServicePlan {
        service: s.name.clone(),
        host: host.to_string(),
        status,
        reasons: reasons.into_iter().collect(),
        desired_version: Some(s.version.clone()),
        observed_version: obs.map(|o| o.record.version.clone()),
        blocked: if blocked.is_empty() {
            None
        } else {
            Some(blocked.join("; "))
        },
        oom_kills: obs.map_or(0, |o| o.oom_kills),
    };
    (sp, action)
}

/// The limit in force matches Git. A cgroup that could not be read while the
/// service should be limited counts as not in force: the limit is not there.
fn memory_in_force(s: &Service, o: &ObservedService) -> bool {
    let known = o.memory_usage.is_some() || o.memory_limit.is_some();
    if !known {
        return s.memory.is_none();
    }
    limits_match(s.memory, o.memory_limit)
}

/// A listener on one of `name`'s ports that is not `name`. When the holder is
/// unknown (its fds could not be read) and the service runs, give it the
/// benefit of the doubt: it most likely is the service.
fn held_by_other(l: &Listener, name: &str, running: bool) -> bool {
    match &l.service {
        Some(n) => n != name,
        None => l.pid.is_some() || !running,
    }
}

fn describe_holder(l: &Listener) -> String {
    match (&l.service, l.pid, &l.comm) {
        (Some(svc), Some(pid), _) => format!("tend service {svc} (pid {pid})"),
        (Some(svc), None, _) => format!("tend service {svc}"),
        (None, Some(pid), Some(comm)) => format!("pid {pid} ({comm})"),
        (None, Some(pid), None) => format!("pid {pid}"),
        (None, None, _) => "an unknown process".to_string(),
    }
}
