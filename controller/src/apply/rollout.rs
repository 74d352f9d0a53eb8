//! The second half of a failed rollout: after a batch's gate failed, the
//! instances already upgraded are taken back in the same run, under the
//! locks already held.

use super::exec;
use super::schedule::schedule;
use super::{restrict, ActionOutcome, ActionReport, CloneHandles, HostRun};
use crate::model::Desired;
use crate::observe::Transports;
use crate::plan::ActionKind;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// A rollout whose gate failed in this run, with `failureAction: rollback`:
/// observe its hosts again and take the instances already upgraded back,
/// under the same locks, as the plan says from their fresh records.
pub(super) async fn undo_failed_rollouts(
    desired: &Desired,
    transports: &dyn Transports,
    selected: &BTreeSet<String>,
    runs: &BTreeMap<String, HostRun>,
    ctx: &Arc<exec::Ctx>,
    done: &[ActionReport],
) -> Vec<ActionReport> {
    let failed: BTreeSet<&str> = done
        .iter()
        .filter(|r| {
            matches!(r.action.kind, ActionKind::Start | ActionKind::Upgrade)
                && matches!(
                    r.outcome,
                    ActionOutcome::RolledBack(_) | ActionOutcome::Failed(_)
                )
        })
        .filter_map(|r| desired.services.get(&r.action.service))
        .filter(|s| {
            s.hosts.len() > 1 && s.rollout.failure_action == crate::model::FailureAction::Rollback
        })
        .map(|s| s.name.as_str())
        .collect();
    if failed.is_empty() {
        return Vec::new();
    }
    let hosts: Vec<String> = runs
        .keys()
        .filter(|h| {
            failed
                .iter()
                .any(|s| desired.services.get(*s).is_some_and(|s| s.runs_on(h)))
        })
        .cloned()
        .collect();
    let fresh = crate::observe::observe_all_with(
        transports,
        desired,
        &hosts,
        ctx.opts.observe_timeout,
        ctx.opts.concurrency,
    )
    .await;
    let mut observed = ctx.observed.clone();
    observed.extend(fresh);
    let mut plan = restrict(
        crate::plan::plan_for(desired, &observed, Some(selected)),
        selected,
    );
    plan.actions
        .retain(|a| a.kind == ActionKind::Rollback && failed.contains(a.service.as_str()));
    if plan.actions.is_empty() {
        return Vec::new();
    }
    let ctx = Arc::new(exec::Ctx {
        desired: ctx.desired.clone(),
        observed,
        opts: ctx.opts.clone(),
        redactor: ctx.redactor.clone(),
        emit: ctx.emit.clone(),
    });
    schedule(&plan, runs.clone_handles(), ctx, HashMap::new()).await
}
