//! Converge hosts to the desired state: lock, observe, plan, execute.
//!
//! Hosts run in parallel (bounded); on one host actions run one at a time in
//! plan order; across the fleet an action waits until everything in its
//! `after` converged (health-gated) — an action whose dependency failed is
//! skipped. Every script is safe to run again and the record is written
//! last, so a controller killed at any point leaves hosts the next run
//! converges from.

mod exec;
pub mod lock;
pub mod output;

use crate::model::{Desired, Observation};
use crate::observe::Transports;
use crate::plan::{Action, ActionKind, Plan};
use crate::transport::Transport;
use lock::{Claim, HostLock, LockError, Owner};
use output::Redactor;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Hosts to converge (names in the manifests); None: all.
    pub hosts: Option<Vec<String>>,
    /// Remove services tend installed that are no longer in Git.
    pub prune: bool,
    /// Prune even past `max_prune_share`.
    pub force_prune: bool,
    /// Largest share of a host's recorded services one run may prune.
    pub max_prune_share: f64,
    /// Actions running at once across the fleet (at most 4 per host).
    pub parallelism: usize,
    /// Hosts contacted at once to lock, observe and release them: each may
    /// need a new connection, whose handshake costs both ends CPU.
    pub concurrency: usize,
    /// Git revision being applied (written to the records).
    pub revision: Option<String>,
    /// This controller's name in lock owners (default: the hostname).
    pub controller: Option<String>,
    /// Break the lease held by this owner (controller name, machine or
    /// token), as an operator asked; reported as `host_lock_broken`.
    pub break_lock: Option<String>,
    /// How long a host lock lasts without being renewed by a script.
    pub lease: Duration,
    /// How long a script waits for another's `flock` to go.
    pub lock_wait: Duration,
    pub observe_timeout: Duration,
    /// Longest one host's actions may take in all (waits included): past it
    /// they are reported failed and the host is released.
    pub host_deadline: Duration,
    /// Health verdicts the caller already holds, by (host, service): the
    /// controller's HTTP checks, which the probe does not run. Applied to the
    /// observation under the lock where the probe left `healthy` unset and
    /// the process is still the one the verdict is about.
    pub health: BTreeMap<(String, String), HealthVerdict>,
    /// Sync windows and approval modes, held in the plan made under the lock
    /// too (the controller's; `tend apply` has none).
    pub gates: Option<Arc<crate::gate::Gates>>,
}

/// One service's health as its caller judged it, and of which process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthVerdict {
    pub pid: Option<u32>,
    pub start_time: Option<u64>,
    pub healthy: bool,
}

/// Set the caller's verdicts on the services the probe did not judge.
fn apply_verdicts(
    observed: &mut BTreeMap<String, Observation>,
    verdicts: &BTreeMap<(String, String), HealthVerdict>,
) {
    for ((host, service), v) in verdicts {
        let Some(Observation::Reachable(st)) = observed.get_mut(host) else {
            continue;
        };
        if let Some(o) = st.services.get_mut(service) {
            let same = o.record.pid == v.pid && o.record.start_time == v.start_time;
            if o.running && same && o.healthy.is_none() {
                o.healthy = Some(v.healthy);
            }
        }
    }
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            hosts: None,
            prune: false,
            force_prune: false,
            max_prune_share: 0.5,
            parallelism: 16,
            concurrency: crate::observe::DEFAULT_CONCURRENCY,
            revision: None,
            controller: None,
            break_lock: None,
            lease: Duration::from_secs(900),
            lock_wait: Duration::from_secs(30),
            observe_timeout: crate::observe::DEFAULT_TIMEOUT,
            host_deadline: Duration::from_secs(1800),
            health: BTreeMap::new(),
            gates: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome", content = "message")]
pub enum ActionOutcome {
    Succeeded,
    Failed(String),
    /// The new release failed its health gate; the previous one runs again.
    RolledBack(String),
    Skipped(String),
}

impl ActionOutcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            ActionOutcome::Succeeded => "succeeded",
            ActionOutcome::Failed(_) => "failed",
            ActionOutcome::RolledBack(_) => "rolled_back",
            ActionOutcome::Skipped(_) => "skipped",
        }
    }
    pub fn message(&self) -> Option<&str> {
        match self {
            ActionOutcome::Succeeded => None,
            ActionOutcome::Failed(m) | ActionOutcome::RolledBack(m) | ActionOutcome::Skipped(m) => {
                Some(m)
            }
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ActionReport {
    #[serde(flatten)]
    pub action: Action,
    #[serde(flatten)]
    pub outcome: ActionOutcome,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Last lines of the scripts' output, secrets redacted.
    pub output: Vec<String>,
    /// The kernel OOM-killed the service during this action.
    pub oom_killed: bool,
    /// Release directory the action installed or switched to.
    pub release: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApplyReport {
    pub plan: Plan,
    pub actions: Vec<ActionReport>,
    /// Hosts that could not be locked, with who holds them.
    pub locked: BTreeMap<String, String>,
    /// Whether pruning was on (prunes skipped while it is off are no failure).
    pub pruning: bool,
    /// Selected hosts that could not be locked or observed, with the error's
    /// metric label.
    #[serde(skip)]
    pub host_errors: BTreeMap<String, &'static str>,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
}

impl ApplyReport {
    /// Every action succeeded and every selected host was reached and locked.
    pub fn converged(&self) -> bool {
        self.locked.is_empty()
            && self.plan.unreachable.is_empty()
            && self.plan.services.iter().all(|s| s.blocked.is_none())
            && self.actions.iter().all(|a| {
                a.outcome == ActionOutcome::Succeeded
                    || (!self.pruning
                        && a.action.kind == ActionKind::Prune
                        && matches!(a.outcome, ActionOutcome::Skipped(_)))
            })
    }
    pub fn count(&self, kind: &str) -> usize {
        self.actions
            .iter()
            .filter(|a| a.outcome.as_str() == kind)
            .count()
    }
}

/// Progress, as it happens.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum Event {
    HostLocked {
        host: String,
    },
    HostLockFailed {
        host: String,
        why: String,
    },
    /// `--break-lock` took over the lease of the named holder.
    HostLockBroken {
        host: String,
        holder: String,
    },
    /// The lease could not be given back (it expires on its own).
    HostReleaseFailed {
        host: String,
        why: String,
    },
    HostObserved {
        host: String,
        reachable: bool,
    },
    Planned {
        actions: usize,
    },
    ActionStarted {
        host: String,
        service: String,
        kind: ActionKind,
    },
    /// A step inside an action: `running` (script done), `health`, `rolling_back`.
    ActionStep {
        host: String,
        service: String,
        kind: ActionKind,
        step: String,
    },
    ActionFinished {
        host: String,
        service: String,
        kind: ActionKind,
        outcome: ActionOutcome,
        #[serde(with = "humantime_serde")]
        duration: Duration,
    },
    HostReleased {
        host: String,
    },
}

pub type EventSender = tokio::sync::mpsc::UnboundedSender<Event>;

#[derive(Clone)]
pub(crate) struct Emit(Option<EventSender>);

impl Emit {
    pub(crate) fn send(&self, e: Event) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(e);
        }
    }
}

/// Observe and plan without locking or changing anything (`--dry-run`, the
/// confirmation prompt).
pub async fn preview(desired: &Desired, transports: &dyn Transports, opts: &ApplyOptions) -> Plan {
    let selected = selected_hosts(desired, opts);
    let observed = crate::observe::observe_all_with(
        transports,
        desired,
        &observe_set(desired, &selected),
        opts.observe_timeout,
        opts.concurrency,
    )
    .await;
    restrict(
        crate::plan::plan_for(desired, &observed, Some(&selected)),
        &selected,
    )
}

fn selected_hosts(desired: &Desired, opts: &ApplyOptions) -> BTreeSet<String> {
    match &opts.hosts {
        Some(h) => h
            .iter()
            .filter(|n| desired.hosts.contains_key(*n))
            .cloned()
            .collect(),
        None => desired.hosts.keys().cloned().collect(),
    }
}

/// The selected hosts, those their services depend on, and those of the
/// other instances of their services (observed only, so a dependency's
/// health and a rollout's unavailable instances are known).
fn observe_set(desired: &Desired, selected: &BTreeSet<String>) -> Vec<String> {
    let mut set = selected.clone();
    for s in desired
        .services
        .values()
        .filter(|s| s.hosts.iter().any(|h| selected.contains(h)))
    {
        set.extend(s.hosts.iter().cloned());
        for d in &s.depends_on {
            if let Some(dep) = desired.services.get(d) {
                set.extend(dep.hosts.iter().cloned());
            }
        }
    }
    set.into_iter().collect()
}

/// Only the selected hosts' actions; the other hosts' services stay in the
/// plan (they decide whether a dependency is in sync).
fn restrict(mut plan: Plan, selected: &BTreeSet<String>) -> Plan {
    plan.actions.retain(|a| selected.contains(&a.host));
    plan.unreachable.retain(|h, _| selected.contains(h));
    plan
}

/// What makes a host the same host: where it is and tend's root there.
fn claim_key(h: &crate::model::Host) -> String {
    match &h.address {
        crate::model::Address::Local => format!("local:{}", h.root),
        crate::model::Address::Ssh(t) => format!("{}@{}:{}:{}", t.user, t.address, t.port, h.root),
    }
}

struct HostRun {
    lock: HostLock,
    t: Arc<dyn Transport>,
    _claim: Claim,
}

/// Converge the selected hosts. Takes a [`Desired`], which only exists when
/// the manifests loaded: nothing is ever pruned on a failed load.
pub async fn converge(
    desired: &Desired,
    transports: &dyn Transports,
    opts: &ApplyOptions,
    events: Option<EventSender>,
) -> ApplyReport {
    let started = Instant::now();
    let emit = Emit(events);
    let selected = selected_hosts(desired, opts);
    let owner = Owner::me(opts.controller.as_deref());

    // 1. Lock every selected host (in parallel).
    let mut locked: BTreeMap<String, String> = BTreeMap::new();
    let mut unreachable: BTreeMap<String, String> = BTreeMap::new();
    // The error label of each host that could not be locked or reached.
    let mut causes: BTreeMap<String, &'static str> = BTreeMap::new();
    let mut runs: BTreeMap<String, HostRun> = BTreeMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    let contact = Arc::new(tokio::sync::Semaphore::new(opts.concurrency.max(1)));
    for name in &selected {
        let Some(host) = desired.hosts.get(name) else {
            continue;
        };
        let claim = match Claim::take(name, &claim_key(host)) {
            Ok(c) => c,
            Err(e) => {
                emit.send(Event::HostLockFailed {
                    host: name.clone(),
                    why: e.to_string(),
                });
                locked.insert(name.clone(), e.to_string());
                continue;
            }
        };
        let t = match transports.transport(host) {
            Ok(t) => t,
            Err(e) => {
                causes.insert(name.clone(), e.metric_label());
                unreachable.insert(name.clone(), e.to_string());
                continue;
            }
        };
        let (name, root, owner) = (name.clone(), host.root.clone(), owner.clone());
        let (lease, wait) = (opts.lease, opts.lock_wait);
        let breaking = opts.break_lock.clone();
        let contact = contact.clone();
        tasks.spawn(async move {
            let _permit = contact.acquire_owned().await;
            let r = HostLock::acquire(
                t.as_ref(),
                &name,
                &root,
                &owner,
                (lease, wait),
                breaking.as_deref(),
            )
            .await;
            (name, t, claim, r)
        });
    }
    while let Some(done) = tasks.join_next().await {
        let Ok((name, t, claim, r)) = done else {
            continue;
        };
        match r {
            Ok((lock, broken)) => {
                if let Some(holder) = broken {
                    emit.send(Event::HostLockBroken {
                        host: name.clone(),
                        holder,
                    });
                }
                emit.send(Event::HostLocked { host: name.clone() });
                runs.insert(
                    name,
                    HostRun {
                        lock,
                        t,
                        _claim: claim,
                    },
                );
            }
            Err(LockError::Transport(e)) => {
                emit.send(Event::HostLockFailed {
                    host: name.clone(),
                    why: e.to_string(),
                });
                causes.insert(name.clone(), e.metric_label());
                unreachable.insert(name, e.to_string());
            }
            Err(e) => {
                causes.insert(name.clone(), e.metric_label());
                emit.send(Event::HostLockFailed {
                    host: name.clone(),
                    why: e.to_string(),
                });
                locked.insert(name, e.to_string());
            }
        }
    }

    // 2. Observe under the lock (and the hosts of dependencies, read only).
    let mut to_observe: Vec<String> = observe_set(desired, &selected)
        .into_iter()
        .filter(|h| !locked.contains_key(h) && !unreachable.contains_key(h))
        .collect();
    to_observe.sort();
    let mut observed = crate::observe::observe_all_with(
        transports,
        desired,
        &to_observe,
        opts.observe_timeout,
        opts.concurrency,
    )
    .await;
    apply_verdicts(&mut observed, &opts.health);
    for (h, o) in &observed {
        emit.send(Event::HostObserved {
            host: h.clone(),
            reachable: matches!(o, Observation::Reachable(_)),
        });
    }
    for (h, why) in &unreachable {
        let cause = causes.get(h).copied().unwrap_or("transport");
        observed.insert(h.clone(), Observation::unreachable(cause, why.clone()));
    }
    for (h, why) in &locked {
        observed.insert(h.clone(), Observation::unreachable("locked", why.clone()));
    }
    let mut errors: BTreeMap<String, &'static str> = causes;
    for (h, o) in &observed {
        if let Observation::Unreachable { cause, .. } = o {
            if selected.contains(h) {
                errors.entry(h.clone()).or_insert(cause);
            }
        }
    }

    // 3. Plan; act only where we hold the lock.
    let mut plan = restrict(
        crate::plan::plan_for(desired, &observed, Some(&selected)),
        &selected,
    );
    for h in locked.keys() {
        plan.unreachable.remove(h);
    }
    if let Some(g) = &opts.gates {
        g.hold(&mut plan);
    }
    emit.send(Event::Planned {
        actions: plan.actions.len(),
    });

    let ctx = Arc::new(exec::Ctx {
        desired: desired.clone(),
        observed,
        opts: opts.clone(),
        redactor: Redactor::for_desired(desired),
        emit: emit.clone(),
    });
    let prune_refusals = prune_guard(&plan, &ctx);
    let mut actions = schedule(&plan, runs.clone_handles(), ctx.clone(), prune_refusals).await;
    actions
        .extend(undo_failed_rollouts(desired, transports, &selected, &runs, &ctx, &actions).await);

    // 4. Give the locks back.
    let mut releases = tokio::task::JoinSet::new();
    for (name, run) in runs {
        let contact = contact.clone();
        releases.spawn(async move {
            let _permit = contact.acquire_owned().await;
            let r = run.lock.release(run.t.as_ref()).await;
            drop(run._claim);
            (name, r)
        });
    }
    while let Some(done) = releases.join_next().await {
        match done {
            Ok((host, Ok(()))) => emit.send(Event::HostReleased { host }),
            Ok((host, Err(e))) => {
                tracing::warn!(host = %host, "cannot release the lock: {e}");
                emit.send(Event::HostReleaseFailed {
                    host,
                    why: format!("{e}; the lease expires on its own"),
                });
            }
            Err(e) => tracing::error!("release task failed: {e}"),
        }
    }

    ApplyReport {
        plan,
        actions,
        locked,
        pruning: opts.prune,
        host_errors: errors,
        duration: started.elapsed(),
    }
}

trait CloneHandles {
    fn clone_handles(&self) -> HashMap<String, (HostLock, Arc<dyn Transport>)>;
}

impl CloneHandles for BTreeMap<String, HostRun> {
    fn clone_handles(&self) -> HashMap<String, (HostLock, Arc<dyn Transport>)> {
        self.iter()
            .map(|(k, v)| (k.clone(), (v.lock.clone(), v.t.clone())))
            .collect()
    }
}

mod rollout;
mod schedule;
use rollout::undo_failed_rollouts;
use schedule::{prune_guard, schedule};

#[cfg(test)]
mod move_tests;
#[cfg(test)]
mod tests;
