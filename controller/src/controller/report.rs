//! Report: what a reconcile did, to metrics, status, history and
//! notifications (failures notified once, not every tick).

use super::coalesce::Queued;
use super::context::now_unix;
use super::engine::{ActionOutcome, ActionResult};
use super::status::{
    self, unix_time, ActionRecord, ActionSummary, HostStatus, MemoryStatus, ReconcileRecord,
    ServiceStatus,
};
use super::worker::Worker;
use crate::metrics::{HostSample, ServiceSample};
use crate::model::{CgroupMode, Desired, Observation};
use crate::notify::{Event, EventAction, EventKind};
use crate::plan::{Plan, Status};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

impl Worker {
    pub(super) fn record_outcomes(&self, id: u64, outcomes: &[ActionOutcome]) {
        let ctx = &self.ctx;
        let mut s = ctx.lock();
        for o in outcomes {
            ctx.metrics.action(o.kind.as_str(), o.result.as_str());
            if o.result == ActionResult::RolledBack {
                ctx.metrics.rollback(&o.host, &o.service);
            }
            s.last_actions.insert(
                (o.host.clone(), o.service.clone()),
                ActionRecord {
                    kind: o.kind.as_str().into(),
                    result: o.result.as_str().into(),
                    reconcile: id,
                    at: now_unix(),
                    message: o.message.clone(),
                    output: status::tail(&o.output, status::OUTPUT_TAIL),
                },
            );
        }
    }

    pub(super) fn notify_outcomes(&self, id: u64, revision: &str, outcomes: &[ActionOutcome]) {
        let ctx = &self.ctx;
        let actions: Vec<EventAction> = outcomes
            .iter()
            .filter(|o| o.result != ActionResult::Skipped)
            .map(|o| EventAction {
                kind: o.kind.as_str().into(),
                host: o.host.clone(),
                service: o.service.clone(),
                result: o.result.as_str().into(),
                message: o.message.clone(),
            })
            .collect();
        if actions.is_empty() {
            return;
        }
        for o in outcomes
            .iter()
            .filter(|o| o.result == ActionResult::RolledBack)
        {
            ctx.notify(Event {
                kind: EventKind::Rollback,
                controller: ctx.config.ident.clone(),
                reconcile: Some(id),
                revision: Some(revision.into()),
                summary: format!("{} on {} rolled back", o.service, o.host),
                actions: vec![],
                errors: o.message.iter().cloned().collect(),
            });
        }
        let failed = actions
            .iter()
            .filter(|a| a.result != ActionResult::Succeeded.as_str())
            .count();
        let (kind, summary) = if failed == 0 {
            (
                EventKind::Applied,
                format!("{} action(s) succeeded", actions.len()),
            )
        } else {
            (
                EventKind::Failure,
                format!("{failed} of {} action(s) did not succeed", actions.len()),
            )
        };
        ctx.notify(Event {
            kind,
            controller: ctx.config.ident.clone(),
            reconcile: Some(id),
            revision: Some(revision.into()),
            summary,
            actions,
            errors: vec![],
        });
    }

    pub(super) fn publish(
        &self,
        desired: &Desired,
        observed: &BTreeMap<String, Observation>,
        p: &Plan,
    ) {
        let ctx = &self.ctx;
        let mut s = ctx.lock();
        let mut service_samples = Vec::new();
        let mut by_host: BTreeMap<String, Vec<ServiceStatus>> = BTreeMap::new();
        for sp in &p.services {
            let obs = match observed.get(&sp.host) {
                Some(Observation::Reachable(st)) => st.services.get(&sp.service),
                _ => None,
            };
            service_samples.push(ServiceSample {
                host: sp.host.clone(),
                service: sp.service.clone(),
                in_sync: matches!(sp.status, Status::InSync | Status::Suspended),
                reasons: sp.reasons.iter().map(|r| r.as_str()).collect(),
                healthy: obs.and_then(|o| o.healthy),
                memory_usage: obs.and_then(|o| o.memory_usage),
                memory_limit: obs.and_then(|o| o.memory_limit),
                oom_kills: sp.oom_kills,
            });
            by_host
                .entry(sp.host.clone())
                .or_default()
                .push(ServiceStatus {
                    name: sp.service.clone(),
                    host: sp.host.clone(),
                    status: sp.status,
                    reasons: sp.reasons.clone(),
                    desired_version: sp.desired_version.clone(),
                    observed_version: sp.observed_version.clone(),
                    blocked: sp.blocked.clone(),
                    running: obs.map(|o| o.running),
                    healthy: obs.and_then(|o| o.healthy),
                    memory_usage: obs.and_then(|o| o.memory_usage),
                    memory_limit: obs.and_then(|o| o.memory_limit),
                    oom_kills: sp.oom_kills,
                    last_action: s
                        .last_actions
                        .get(&(sp.host.clone(), sp.service.clone()))
                        .cloned(),
                });
        }
        let mut host_samples = Vec::new();
        let mut hosts = Vec::new();
        for (name, h) in &desired.hosts {
            let (up, reason, available) = match observed.get(name) {
                Some(Observation::Reachable(st)) => (true, None, Some(st.facts.mem_available)),
                Some(Observation::Unreachable { reason, .. }) => {
                    (false, Some(reason.clone()), None)
                }
                None => (false, Some("not observed".into()), None),
            };
            let limits_note = match observed.get(name) {
                Some(Observation::Reachable(st)) if st.facts.cgroup == CgroupMode::None => Some(
                    "memory limits are not enforced: no writable memory cgroup on this host \
                     (as a normal user, or cgroup v2 without the memory controller delegated)"
                        .to_string(),
                ),
                _ => None,
            };
            let budget = p.memory.iter().find(|m| &m.host == name);
            let committed = budget
                .map(|b| b.committed)
                .unwrap_or_else(|| desired.services_on(name).filter_map(|s| s.memory).sum());
            host_samples.push(HostSample {
                host: name.clone(),
                up,
                committed,
                capacity: h.capacity,
                reserved: h.reserved,
                available: budget.and_then(|b| b.mem_available).or(available),
            });
            hosts.push(HostStatus {
                name: name.clone(),
                up,
                reason,
                backoff_until: s
                    .backoff
                    .get(name)
                    .filter(|b| b.waiting())
                    .and_then(|b| b.until_wall)
                    .map(unix_time::secs),
                labels: h.labels.clone(),
                limits_note,
                memory: Some(MemoryStatus {
                    capacity: h.capacity,
                    reserved: h.reserved,
                    committed,
                    available: budget.and_then(|b| b.mem_available).or(available),
                }),
                services: by_host.remove(name).unwrap_or_default(),
            });
        }
        // Services on hosts no longer in Git (plan may still report them).
        for (name, services) in by_host {
            hosts.push(HostStatus {
                name,
                up: false,
                reason: Some("not in Git".into()),
                backoff_until: None,
                labels: BTreeMap::new(),
                memory: None,
                limits_note: None,
                services,
            });
        }
        s.hosts = hosts;
        s.rollouts = p.rollouts.clone();
        drop(s);
        ctx.metrics.set_rollouts(&p.rollouts);
        ctx.metrics.set_fleet(&host_samples, &service_samples);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish(
        &self,
        q: Queued,
        started: f64,
        timer: crate::metrics::Timer,
        result: &str,
        revision: Option<String>,
        actions: Vec<ActionSummary>,
        error: Option<String>,
    ) {
        let ctx = &self.ctx;
        let duration = timer.elapsed().as_secs_f64();
        drop(timer);
        ctx.metrics.reconcile_done(
            q.trigger.as_str(),
            result,
            (result == "success").then(now_unix),
        );
        let previous = ctx.lock().last_result.replace(result.to_string());
        if result == "failure" && previous.as_deref() != Some("failure") {
            ctx.notify(Event {
                kind: EventKind::Failure,
                controller: ctx.config.ident.clone(),
                reconcile: Some(q.id),
                revision: revision.clone(),
                summary: format!("reconcile #{} failed", q.id),
                actions: vec![],
                errors: error.iter().cloned().collect(),
            });
        }
        tracing::info!(id = q.id, result, duration, "reconcile done");
        {
            let mut s = ctx.lock();
            let overrode = std::mem::take(&mut s.overrides);
            s.history.push_back(ReconcileRecord {
                id: q.id,
                trigger: q.trigger,
                triggers: q.triggers,
                started_at: started,
                duration_seconds: (duration * 1000.0).round() / 1000.0,
                result: result.into(),
                revision,
                actions,
                error,
                overrode,
            });
            while s.history.len() > ctx.config.history {
                s.history.pop_front();
            }
        }
        ctx.ready.store(true, Ordering::SeqCst);
        ctx.finished.send_replace(q.id);
    }
}
