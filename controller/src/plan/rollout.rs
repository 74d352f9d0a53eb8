//! Rollouts: a service's instance actions put into batches that never take
//! more than `maxUnavailable` instances down, halted by a version that
//! failed its gate anywhere, and (with `failureAction: rollback`) undone.
//!
//! Resumable by construction: everything here is read from the hosts'
//! records, so an interrupted rollout is planned again from where it stands.

use super::{Action, ActionKind, DriftReason, RolloutStatus, ServicePlan, Status};
use crate::instance::InstanceId;
use crate::model::{Desired, FailureAction, Observation, ObservedService, Service};
use std::collections::{BTreeMap, BTreeSet};

/// Reshape `actions` service by service; returns the progress of every
/// service with more than one instance. Only hosts in `selected` (None: all)
/// get batched actions; the others still count for availability.
pub(super) fn shape(
    desired: &Desired,
    observed: &BTreeMap<String, Observation>,
    selected: Option<&BTreeSet<String>>,
    services: &mut [ServicePlan],
    actions: &mut Vec<Action>,
) -> Vec<RolloutStatus> {
    let mut out = Vec::new();
    for s in desired.services.values() {
        if s.suspend {
            continue;
        }
        let st = shape_one(s, observed, selected, services, actions);
        if s.hosts.len() > 1 {
            out.push(st);
        }
    }
    out
}

fn record<'a>(
    observed: &'a BTreeMap<String, Observation>,
    host: &str,
    service: &str,
) -> Option<&'a ObservedService> {
    match observed.get(host) {
        Some(Observation::Reachable(st)) => st.services.get(service),
        _ => None,
    }
}

fn shape_one(
    s: &Service,
    observed: &BTreeMap<String, Observation>,
    selected: Option<&BTreeSet<String>>,
    services: &mut [ServicePlan],
    actions: &mut Vec<Action>,
) -> RolloutStatus {
    let ours = |sp: &ServicePlan| sp.service == s.name && s.runs_on(&sp.host);
    let may_act = |h: &str| selected.is_none_or(|sel| sel.contains(h));
    let n = s.hosts.len();
    let mu = s.rollout.max_unavailable.of(n);

    // 1. A version that failed its gate on any instance stops the rollout.
    let failed_on: Vec<String> = s
        .hosts
        .iter()
        .filter(|h| {
            record(observed, h, &s.name)
                .is_some_and(|o| o.record.failed_version.as_deref() == Some(s.version.as_str()))
        })
        .cloned()
        .collect();
    let mut halted = None;
    if !failed_on.is_empty() {
        // Instances taken back by `failureAction: rollback` record the
        // version as failed too: name them all, not a guessed first.
        let why = format!(
            "the rollout of version {} stopped: it failed its health check \
             (rolled back on {}); change the manifest to retry",
            s.version,
            failed_on.join(", ")
        );
        halted = Some(why.clone());
        for sp in services.iter_mut().filter(|sp| ours(sp)) {
            if failed_on.contains(&sp.host) {
                continue; // already blocked by its own record
            }
            let o = record(observed, &sp.host, &s.name);
            let at_new = o.is_some_and(|o| o.record.version == s.version);
            let id = sp.id();
            if !at_new {
                // Not upgraded yet: it keeps the old version (or nothing).
                if let Some(a) = actions.iter_mut().find(|a| a.id() == id) {
                    if matches!(a.kind, ActionKind::Start | ActionKind::Upgrade) {
                        sp.blocked = Some(why.clone());
                        // A stopped old release is started again in place.
                        a.kind = ActionKind::Restart;
                        a.reasons.retain(|r| *r == DriftReason::Stopped);
                    }
                }
                actions.retain(|a| a.id() != id || !a.reasons.is_empty());
            } else if s.rollout.failure_action == FailureAction::Rollback
                && o.is_some_and(|o| o.record.previous.is_some())
                && may_act(&sp.host)
            {
                actions.retain(|a| a.id() != id);
                if !sp.reasons.contains(&DriftReason::RolloutFailed) {
                    sp.reasons.push(DriftReason::RolloutFailed);
                    sp.reasons.sort();
                }
                sp.status = Status::Drifted;
                actions.push(Action {
                    kind: ActionKind::Rollback,
                    service: s.name.clone(),
                    host: sp.host.clone(),
                    after: Vec::new(),
                    needs: Vec::new(),
                    reasons: vec![DriftReason::RolloutFailed],
                    pause: std::time::Duration::ZERO,
                });
            }
        }
    }

    // 2. Who is down now, who is being repaired, who would be taken down.
    let mut unavailable: BTreeSet<String> = BTreeSet::new();
    for h in &s.hosts {
        match observed.get(h) {
            None => {} // not observed: not counted either way
            Some(Observation::Unreachable { .. }) => {
                unavailable.insert(h.clone());
            }
            Some(Observation::Reachable(_)) => {
                let up = record(observed, h, &s.name)
                    .is_some_and(|o| o.running && o.healthy != Some(false));
                if !up {
                    unavailable.insert(h.clone());
                }
            }
        }
    }
    let mut repairs: Vec<InstanceId> = Vec::new();
    let mut disruptive: Vec<usize> = Vec::new();
    for (i, a) in actions.iter().enumerate() {
        if a.service != s.name || !s.runs_on(&a.host) || !may_act(&a.host) {
            continue;
        }
        if unavailable.contains(&a.host) {
            repairs.push(a.id());
        } else if matches!(
            a.kind,
            ActionKind::Upgrade | ActionKind::Restart | ActionKind::Rollback
        ) {
            // Undoing a failed rollout takes instances down too: batched
            // like the upgrade was.
            disruptive.push(i);
        }
    }
    let repairing: BTreeSet<&str> = repairs.iter().map(|r| r.host.as_str()).collect();
    let down_for_good = unavailable
        .iter()
        .filter(|h| !repairing.contains(h.as_str()))
        .count();
    let batch_size = mu.saturating_sub(down_for_good);

    // 3. Batches, in host order, each after the one before.
    let mut batches: Vec<Vec<String>> = Vec::new();
    if !repairs.is_empty() {
        batches.push(repairs.iter().map(|r| r.host.clone()).collect());
    }
    if !disruptive.is_empty() && batch_size == 0 {
        let why = format!(
            "waits: {} of {n} instances unavailable (maxUnavailable {})",
            unavailable.len(),
            s.rollout.max_unavailable
        );
        let held: BTreeSet<InstanceId> = disruptive.iter().map(|&i| actions[i].id()).collect();
        actions.retain(|a| !held.contains(&a.id()));
        for sp in services.iter_mut().filter(|sp| held.contains(&sp.id())) {
            sp.blocked = Some(why.clone());
        }
    } else if !disruptive.is_empty() {
        disruptive.sort_by(|&a, &b| actions[a].host.cmp(&actions[b].host));
        let mut before: Vec<InstanceId> = repairs.clone();
        let mut first = true;
        for chunk in disruptive.chunks(batch_size) {
            let ids: Vec<InstanceId> = chunk.iter().map(|&i| actions[i].id()).collect();
            for &i in chunk {
                let a = &mut actions[i];
                a.after.extend(before.iter().cloned());
                a.after.sort();
                a.after.dedup();
                if !first {
                    a.pause = s.rollout.pause_between;
                }
            }
            batches.push(ids.iter().map(|id| id.host.clone()).collect());
            before = ids;
            first = false;
        }
    }

    let current = services
        .iter()
        .filter(|sp| ours(sp))
        .filter(|sp| sp.status == Status::InSync)
        .count();
    let progress = progress(n, current, mu, halted.is_some());
    RolloutStatus {
        service: s.name.clone(),
        instances: n,
        current,
        progress,
        unavailable: unavailable.len(),
        max_unavailable: mu,
        batches,
        halted,
    }
}

/// `3/5 current, batch 2 of 3`: batches of `mu` counted from the instances
/// already current, so an interrupted rollout reads where it stands.
pub(super) fn progress(n: usize, current: usize, mu: usize, halted: bool) -> String {
    if current >= n {
        return format!("{n}/{n} current");
    }
    let mu = mu.max(1);
    let of = n.div_ceil(mu);
    let batch = (current / mu + 1).min(of);
    let state = if halted { ", halted" } else { "" };
    format!("{current}/{n} current, batch {batch} of {of}{state}")
}
