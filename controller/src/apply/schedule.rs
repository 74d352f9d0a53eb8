//! Scheduling a plan's actions: each its own task, waiting for the
//! instances it depends on (any host), then for a slot on its host and in
//! the fleet; the prune guard decides which prunes may run at all.

use super::exec;
use super::lock::HostLock;
use super::{ActionOutcome, ActionReport, Event};
use crate::instance::InstanceId;
use crate::model::Observation;
use crate::plan::{Action, ActionKind, Plan, Status};
use crate::transport::Transport;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{watch, Semaphore};

/// Prune actions refused, with why: off, or past the share of a host.
pub(super) fn prune_guard(plan: &Plan, ctx: &exec::Ctx) -> HashMap<(String, String), String> {
    let mut out = HashMap::new();
    let mut by_host: BTreeMap<&str, Vec<&Action>> = BTreeMap::new();
    for a in plan.actions.iter().filter(|a| a.kind == ActionKind::Prune) {
        by_host.entry(a.host.as_str()).or_default().push(a);
    }
    for (host, prunes) in by_host {
        let why = if !ctx.opts.prune {
            Some("pruning is off (use --prune)".to_string())
        } else {
            let total = match ctx.observed.get(host) {
                Some(Observation::Reachable(st)) => st.services.len(),
                _ => 0,
            };
            let allowed = (ctx.opts.max_prune_share * total as f64).floor() as usize;
            if prunes.len() > allowed && !ctx.opts.force_prune {
                Some(format!(
                    "would remove {} of the {total} services tend installed on {host} (more than {:.0} %); use --force-prune",
                    prunes.len(),
                    ctx.opts.max_prune_share * 100.0
                ))
            } else {
                None
            }
        };
        if let Some(why) = why {
            for a in prunes {
                out.insert((a.host.clone(), a.service.clone()), why.clone());
            }
        }
    }
    out
}

/// What became of each instance's action, for those waiting on it.
type Done = HashMap<InstanceId, bool>;

/// Actions of one host running at once (their scripts still take turns).
const ACTIONS_PER_HOST: usize = 4;

/// Run every action as its own task: it waits for the instances in its
/// `after` (any host), then for a slot on its host and in the fleet. So a
/// service with no dependencies never waits behind a sibling that waits on
/// another host. A host's prunes wait for its other actions.
pub(super) async fn schedule(
    plan: &Plan,
    runs: HashMap<String, (HostLock, Arc<dyn Transport>)>,
    ctx: Arc<exec::Ctx>,
    prune_refusals: HashMap<(String, String), String>,
) -> Vec<ActionReport> {
    let (done_tx, done_rx) = watch::channel::<Done>(HashMap::new());
    let done_tx = Arc::new(done_tx);
    let limit = Arc::new(Semaphore::new(ctx.opts.parallelism.max(1)));
    let host_limits: HashMap<String, Arc<Semaphore>> = runs
        .keys()
        .map(|h| (h.clone(), Arc::new(Semaphore::new(ACTIONS_PER_HOST))))
        .collect();
    let deps = Arc::new(Deps::new(plan));
    let deadline = tokio::time::Instant::now() + ctx.opts.host_deadline;
    let over = format!(
        "the host deadline of {} passed",
        humantime::format_duration(ctx.opts.host_deadline)
    );

    let mut tasks = tokio::task::JoinSet::new();
    for (i, a) in plan.actions.iter().enumerate() {
        let a = a.clone();
        let handle = runs.get(&a.host).cloned();
        let host_limit = host_limits.get(&a.host).cloned();
        let (ctx, done_tx, mut done_rx) = (ctx.clone(), done_tx.clone(), done_rx.clone());
        let (limit, deps) = (limit.clone(), deps.clone());
        let refusal = prune_refusals
            .get(&(a.host.clone(), a.service.clone()))
            .cloned();
        let over = over.clone();
        tasks.spawn(async move {
            let t0 = Instant::now();
            let skip = |why: String| ActionReport {
                action: a.clone(),
                outcome: ActionOutcome::Skipped(why),
                duration: t0.elapsed(),
                output: Vec::new(),
                oom_killed: false,
                release: None,
            };
            let report = match (refusal, &handle, host_limit) {
                (Some(why), _, _) => skip(why),
                (None, Some((lock, t)), Some(host_limit)) => {
                    let run = async {
                        match deps.wait(&a, i, &mut done_rx).await {
                            Err(why) => skip(why),
                            Ok(()) => {
                                if !a.pause.is_zero() {
                                    tokio::time::sleep(a.pause).await;
                                }
                                let _host = host_limit.acquire().await;
                                let _fleet = limit.acquire().await;
                                exec::run_action(&ctx, lock, t.as_ref(), &a).await
                            }
                        }
                    };
                    // A script cut off here goes on on the host behind its
                    // flock; the next run converges from what it leaves.
                    match tokio::time::timeout_at(deadline, run).await {
                        Ok(r) => r,
                        Err(_) => ActionReport {
                            outcome: ActionOutcome::Failed(over),
                            ..skip(String::new())
                        },
                    }
                }
                _ => skip(format!("host {} is not locked", a.host)),
            };
            ctx.emit.send(Event::ActionFinished {
                host: a.host.clone(),
                service: a.service.clone(),
                kind: a.kind,
                outcome: report.outcome.clone(),
                duration: report.duration,
            });
            let ok = report.outcome == ActionOutcome::Succeeded;
            done_tx.send_modify(|d| {
                d.insert(a.id(), ok);
            });
            (i, report)
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(report) => all.push(report),
            Err(e) => tracing::error!("apply task failed: {e}"),
        }
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

/// Who waits for whom, from the plan: by instance, never by name alone.
struct Deps {
    /// Position of each instance's action in plan order.
    index: HashMap<InstanceId, usize>,
    /// How each instance stands when it has no action.
    status: HashMap<InstanceId, Status>,
    /// Each host's actions other than prunes (what its prunes wait for).
    non_prunes: HashMap<String, Vec<(usize, InstanceId)>>,
}

impl Deps {
    fn new(plan: &Plan) -> Deps {
        let mut non_prunes: HashMap<String, Vec<(usize, InstanceId)>> = HashMap::new();
        for (i, a) in plan.actions.iter().enumerate() {
            if a.kind != ActionKind::Prune {
                non_prunes
                    .entry(a.host.clone())
                    .or_default()
                    .push((i, a.id()));
            }
        }
        Deps {
            index: plan
                .actions
                .iter()
                .enumerate()
                .map(|(i, a)| (a.id(), i))
                .collect(),
            status: plan.services.iter().map(|s| (s.id(), s.status)).collect(),
            non_prunes,
        }
    }

    /// Wait until every dependency of action `i` converged; Err(why) when
    /// one did not. A prune also waits (whatever the outcome) for the other
    /// actions of its host.
    async fn wait(
        &self,
        a: &Action,
        i: usize,
        done: &mut watch::Receiver<Done>,
    ) -> Result<(), String> {
        if a.kind == ActionKind::Prune {
            for (_, id) in self.non_prunes.get(&a.host).into_iter().flatten() {
                let _ = done.wait_for(|d| d.contains_key(id)).await;
            }
        }
        // By service: all of a service's instances, unless `needs` says fewer.
        let mut groups: BTreeMap<&str, Vec<&InstanceId>> = BTreeMap::new();
        for dep in &a.after {
            groups.entry(dep.service.as_str()).or_default().push(dep);
        }
        for (service, deps) in groups {
            let need = a
                .needs
                .iter()
                .find(|n| n.service == service)
                .map_or(deps.len(), |n| n.at_least.min(deps.len()));
            let mut ok = 0;
            let mut first_why = None;
            for dep in deps.iter().copied() {
                match self.converged(dep, i, done).await {
                    Ok(()) => ok += 1,
                    Err(why) => {
                        first_why.get_or_insert(why);
                    }
                }
            }
            if ok < need {
                let why = first_why.unwrap_or_default();
                return Err(if need == deps.len() {
                    why
                } else {
                    format!(
                        "{ok} of {} instances of {service} converged, it needs {need} ({why})",
                        deps.len()
                    )
                });
            }
        }
        Ok(())
    }

    /// Whether one dependency instance converged (waiting for its action).
    async fn converged(
        &self,
        dep: &InstanceId,
        i: usize,
        done: &mut watch::Receiver<Done>,
    ) -> Result<(), String> {
        match self.index.get(dep) {
            Some(&j) if j < i => {
                let seen = done
                    .wait_for(|d| d.contains_key(dep))
                    .await
                    .map_err(|_| format!("dependency {dep}: its result never came"))?;
                if seen.get(dep) != Some(&true) {
                    return Err(format!("dependency {dep} did not converge"));
                }
                Ok(())
            }
            Some(_) => Err(format!("dependency {dep} is planned after it")),
            None => match self.status.get(dep) {
                Some(Status::InSync) | Some(Status::Suspended) | None => Ok(()),
                Some(Status::Drifted) => Err(format!("dependency {dep} is drifted")),
                Some(Status::Unknown) => Err(format!(
                    "dependency {dep} is on a host that was not observed"
                )),
            },
        }
    }
}
