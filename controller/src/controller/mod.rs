//! The controller loop: triggers → source → load → observe → plan → apply →
//! metrics, status and notifications. One reconcile at a time; each host in
//! its own task with its own timeout and backoff.

pub mod checks;
pub mod coalesce;
pub mod engine;
pub mod memory;
pub mod schedule;
pub mod status;

use crate::config::{Config, SourceSpec};
use crate::manifest::{self, Secrets};
use crate::metrics::{HostSample, Metrics, ServiceSample};
use crate::model::{Desired, Host, HostState, Observation};
use crate::notify::{Event, EventAction, EventKind, Notifier};
use crate::plan::{self, Plan, Status};
use crate::source::{self, Poll, Source};
use coalesce::{Coalescer, Queued, Ticket, Trigger};
use engine::{ActionOutcome, ActionResult, Engine};
use status::{
    unix_time, ActionRecord, ActionSummary, HostStatus, MemoryStatus, ReconcileRecord,
    ServiceStatus, SourceStatus, StatusReport,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, watch, Semaphore};

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    #[error("cannot listen on {addr}: {why}")]
    Listen { addr: String, why: String },
}

impl ControllerError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            ControllerError::Config(_) => "config",
            ControllerError::Source(e) => e.metric_label(),
            ControllerError::Listen { .. } => "listen",
        }
    }
}

/// The desired state of the last revision that validated.
#[derive(Debug, Clone)]
struct Good {
    revision: String,
    desired: Arc<Desired>,
}

/// Exponential backoff of one unreachable host.
#[derive(Debug, Clone, Default)]
struct Backoff {
    failures: u32,
    until: Option<Instant>,
    until_wall: Option<SystemTime>,
    last_reason: String,
}

const BACKOFF_BASE: Duration = Duration::from_secs(5);

impl Backoff {
    fn fail(&mut self, reason: String, max: Duration) {
        self.failures = self.failures.saturating_add(1);
        let factor = 1u32
            .checked_shl(self.failures.saturating_sub(1).min(16))
            .unwrap_or(u32::MAX);
        let delay = BACKOFF_BASE.saturating_mul(factor).min(max);
        self.until = Some(Instant::now() + delay);
        self.until_wall = Some(SystemTime::now() + delay);
        self.last_reason = reason;
    }
    fn waiting(&self) -> bool {
        self.until.is_some_and(|u| Instant::now() < u)
    }
}

#[derive(Debug)]
struct State {
    source: SourceStatus,
    good: Option<Good>,
    hosts: Vec<HostStatus>,
    last_actions: BTreeMap<(String, String), ActionRecord>,
    history: VecDeque<ReconcileRecord>,
    backoff: BTreeMap<String, Backoff>,
    /// Revision whose refusal was already notified (one message per bad commit).
    notified_invalid: Option<String>,
    /// Result of the previous reconcile: failures are notified once, not every tick.
    last_result: Option<String>,
    /// Last HTTP health check of each running service and its verdict.
    health: checks::Cache,
}

/// Shared by the loop and the HTTP server.
pub struct Context {
    pub config: Config,
    pub metrics: Metrics,
    pub coalescer: Arc<Coalescer>,
    pub token: Option<String>,
    pub webhook_secret: Option<String>,
    notifier: Notifier,
    state: Mutex<State>,
    ready: AtomicBool,
    /// Id of the last finished reconcile.
    finished: watch::Sender<u64>,
}

impl Context {
    pub fn new(config: Config, source: &Source) -> Result<Arc<Context>, ControllerError> {
        let token = config.token()?;
        let webhook_secret = config.webhook_secret()?;
        let metrics = Metrics::new();
        metrics.manifests_valid(false);
        Ok(Arc::new(Context {
            notifier: Notifier::new(config.notifications.clone()),
            metrics,
            coalescer: Arc::new(Coalescer::new()),
            token,
            webhook_secret,
            state: Mutex::new(State {
                source: SourceStatus {
                    info: source.info(),
                    revision: None,
                    subject: None,
                    newest: None,
                    manifests_valid: false,
                    errors: vec![],
                    warnings: vec![],
                    fetch_error: None,
                    polled_at: None,
                },
                good: None,
                hosts: vec![],
                last_actions: BTreeMap::new(),
                history: VecDeque::new(),
                backoff: BTreeMap::new(),
                notified_invalid: None,
                last_result: None,
                health: checks::Cache::default(),
            }),
            ready: AtomicBool::new(false),
            finished: watch::channel(0).0,
            config,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Count and queue a trigger.
    pub fn trigger(&self, t: Trigger) -> Ticket {
        self.metrics.trigger(t.as_str());
        self.coalescer.trigger(t)
    }

    /// Wait until reconcile `id` (or a later one) has finished.
    pub async fn wait_for(&self, id: u64) {
        let mut rx = self.finished.subscribe();
        let _ = rx.wait_for(|done| *done >= id).await;
    }

    pub fn status(&self) -> StatusReport {
        let s = self.lock();
        StatusReport {
            controller: self.config.ident.clone(),
            version: env!("CARGO_PKG_VERSION"),
            ready: self.ready(),
            schedule: self.config.schedule.clone(),
            selector: self.config.selector.clone(),
            source: s.source.clone(),
            hosts: s.hosts.clone(),
            running: self.coalescer.running(),
            pending: self.coalescer.pending(),
            reconciles: s.history.iter().rev().cloned().collect(),
        }
    }

    pub fn reconcile_record(&self, id: u64) -> Option<ReconcileRecord> {
        self.lock().history.iter().find(|r| r.id == id).cloned()
    }

    fn notify(&self, event: Event) {
        if self.notifier.is_empty() {
            return;
        }
        let n = self.notifier.clone();
        tokio::spawn(async move {
            for e in n.send(&event).await {
                tracing::warn!("{e}");
            }
        });
    }
}

/// Build the source the config names.
pub fn make_source(config: &Config) -> Result<Source, ControllerError> {
    Ok(match config.source_spec() {
        SourceSpec::Git { url, branch } => {
            let token = match (&config.git.token_env, &config.git.token_file) {
                (Some(var), _) if std::env::var(var).is_ok_and(|v| !v.trim().is_empty()) => {
                    std::env::var(var).ok().map(|v| v.trim().to_string())
                }
                (_, Some(f)) => Some(crate::config::read_secret(f)?),
                _ => None,
            };
            Source::Git(source::git::GitSource::new(
                &url,
                &branch,
                &config.cache_dir,
                source::git::Credentials {
                    ssh_key: config.git.ssh_key.clone(),
                    known_hosts: config.git.known_hosts.clone(),
                    token,
                    username: config.git.username.clone(),
                },
                config.git.allow_rewrites,
            ))
        }
        SourceSpec::Dir { root } => Source::Dir(source::dir::DirSource::new(&root, &config.path)),
    })
}

/// The loop. Returns after `shutdown` resolves and the reconcile in progress
/// (if any) has finished.
pub async fn run(
    ctx: Arc<Context>,
    mut source: Source,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let sched = match schedule::Schedule::parse(&ctx.config.schedule) {
        Ok(s) => Some(tokio::spawn(schedule::run(
            s,
            ctx.coalescer.clone(),
            schedule::Clock::System,
        ))),
        Err(e) => {
            tracing::error!("schedule: {e}");
            None
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    if let Err(e) = source.watch(tx) {
        tracing::warn!("not watching the source: {e}");
    }
    let watcher = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                ctx.trigger(Trigger::Watch);
            }
        })
    };
    {
        let c = ctx.coalescer.clone();
        tokio::spawn(async move {
            shutdown.await;
            c.close();
        });
    }
    let mut worker = Worker {
        engine: Engine::new(&ctx.config),
        ctx: ctx.clone(),
        source,
    };
    ctx.trigger(Trigger::Startup);
    while let Some(q) = ctx.coalescer.next().await {
        worker.reconcile(q).await;
        ctx.coalescer.finish();
        // What the reconcile freed is not needed until the next one.
        memory::release_free();
    }
    if let Some(s) = sched {
        s.abort();
    }
    watcher.abort();
}

/// A controller running in this process: the loop and its HTTP server.
pub struct Running {
    pub ctx: Arc<Context>,
    /// Where the server listens (the real port when `listen` asked for 0).
    pub addr: std::net::SocketAddr,
    stop: watch::Sender<bool>,
    loop_task: tokio::task::JoinHandle<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Ask it to stop (the running reconcile finishes first).
    pub fn request_stop(&self) {
        let _ = self.stop.send(true);
    }

    /// A handle that asks for a stop (signal handlers).
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }

    /// Stop and wait for the loop and the server to end.
    pub async fn stop(self) {
        self.request_stop();
        self.wait().await;
    }

    /// Wait until stopped (by [`Running::request_stop`] or a stopper).
    pub async fn wait(self) {
        if let Err(e) = self.loop_task.await {
            tracing::error!("controller loop: {e}");
        }
        let _ = self.stop.send(true);
        match self.server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("server: {e}"),
            Err(e) => tracing::error!("server task: {e}"),
        }
    }
}

/// Start the controller described by `config`: bind, serve, loop.
pub async fn spawn(config: Config) -> Result<Running, ControllerError> {
    let addr = config
        .listen_addr()
        .map_err(|why| ControllerError::Listen {
            addr: config.listen.clone(),
            why,
        })?;
    let source = make_source(&config)?;
    let ctx = Context::new(config, &source)?;
    let listener =
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| ControllerError::Listen {
                addr: addr.to_string(),
                why: e.to_string(),
            })?;
    let addr = listener.local_addr().map_err(|e| ControllerError::Listen {
        addr: addr.to_string(),
        why: e.to_string(),
    })?;
    let (stop, stop_rx) = watch::channel(false);
    let wait_stop = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let server = tokio::spawn(crate::server::serve(
        ctx.clone(),
        listener,
        wait_stop(stop_rx.clone()),
    ));
    let loop_task = tokio::spawn(run(ctx.clone(), source, wait_stop(stop_rx)));
    Ok(Running {
        ctx,
        addr,
        stop,
        loop_task,
        server,
    })
}

struct Worker {
    ctx: Arc<Context>,
    source: Source,
    engine: Engine,
}

fn now_unix() -> f64 {
    unix_time::secs(SystemTime::now())
}

fn selected(host: &Host, selector: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| host.labels.get(k) == Some(v))
}

/// The part of the desired state this controller owns (its selector's hosts).
/// Without a selector that is all of it, shared rather than copied.
fn shard(desired: &Arc<Desired>, selector: &BTreeMap<String, String>) -> Arc<Desired> {
    if selector.is_empty() {
        return desired.clone();
    }
    let hosts: BTreeMap<_, _> = desired
        .hosts
        .iter()
        .filter(|(_, h)| selected(h, selector))
        .map(|(k, h)| (k.clone(), h.clone()))
        .collect();
    let services = desired
        .services
        .iter()
        .filter(|(_, s)| hosts.contains_key(&s.host))
        .map(|(k, s)| (k.clone(), s.clone()))
        .collect();
    Arc::new(Desired { hosts, services })
}

impl Worker {
    async fn reconcile(&mut self, q: Queued) {
        let ctx = self.ctx.clone();
        let timer = ctx.metrics.reconcile_timer();
        let started = now_unix();
        tracing::info!(id = q.id, trigger = q.trigger.as_str(), "reconcile");
        let mut problems: Vec<String> = Vec::new();

        // Source and load: a new revision that does not validate is not applied.
        self.refresh_source(&mut problems).await;
        let good = ctx.lock().good.clone();
        let Some(good) = good else {
            let error = problems
                .first()
                .cloned()
                .unwrap_or_else(|| "no valid revision yet".into());
            self.finish(q, started, timer, "failure", None, vec![], Some(error));
            return;
        };

        let desired = shard(&good.desired, &ctx.config.selector);
        self.engine.retain_hosts(&desired);
        ctx.lock().health.retain_hosts(&desired);
        let hosts: Vec<Host> = desired.hosts.values().cloned().collect();
        // A person asking for a reconcile wants every host tried now.
        let retry_all = matches!(q.trigger, Trigger::Api | Trigger::Cli | Trigger::Webhook);
        let mut observed = {
            let _t = ctx.metrics.phase_timer("observe");
            self.observe(&hosts, &desired, retry_all).await
        };
        let mut the_plan = {
            let _t = ctx.metrics.phase_timer("plan");
            plan::plan(&desired, &observed)
        };

        let mut outcomes = Vec::new();
        if !the_plan.actions.is_empty() {
            // What needs repair is visible while the repair runs.
            self.publish(&desired, &observed, &the_plan);
            {
                let _t = ctx.metrics.phase_timer("apply");
                let verdicts = ctx.lock().health.verdicts();
                let applied = self
                    .engine
                    .apply(&the_plan, &desired, &good.revision, verdicts)
                    .await;
                outcomes = applied.outcomes;
                problems.extend(applied.problems);
            }
            self.record_outcomes(q.id, &outcomes);
            // Show the state the actions left, not the one they repaired.
            let touched: BTreeSet<&str> =
                the_plan.actions.iter().map(|a| a.host.as_str()).collect();
            let again: Vec<Host> = hosts
                .iter()
                .filter(|h| touched.contains(h.name.as_str()))
                .cloned()
                .collect();
            let after = {
                let _t = ctx.metrics.phase_timer("observe");
                self.observe(&again, &desired, true).await
            };
            observed.extend(after);
            let _t = ctx.metrics.phase_timer("plan");
            the_plan = plan::plan(&desired, &observed);
        }

        self.publish(&desired, &observed, &the_plan);

        let failed = outcomes
            .iter()
            .filter(|o| o.result == ActionResult::Failure)
            .count();
        let rolled = outcomes
            .iter()
            .filter(|o| o.result == ActionResult::RolledBack)
            .count();
        for (h, why) in &the_plan.unreachable {
            problems.push(format!("{h}: {why}"));
        }
        let result = if hosts.is_empty() || the_plan.unreachable.len() < hosts.len() {
            if failed + rolled > 0 || !problems.is_empty() {
                "partial"
            } else {
                "success"
            }
        } else {
            "failure"
        };
        if !outcomes.is_empty() {
            self.notify_outcomes(q.id, &good.revision, &outcomes);
        }
        let summaries = outcomes
            .iter()
            .map(|o| ActionSummary {
                kind: o.kind.as_str().into(),
                host: o.host.clone(),
                service: o.service.clone(),
                result: o.result.as_str().into(),
            })
            .collect();
        let mut seen = BTreeSet::new();
        problems.retain(|p| seen.insert(p.clone()));
        let error = if problems.is_empty() {
            None
        } else {
            Some(problems.join("; "))
        };
        self.finish(
            q,
            started,
            timer,
            result,
            Some(good.revision),
            summaries,
            error,
        );
    }

    /// Poll the source; on a new revision, load and validate it.
    async fn refresh_source(&mut self, problems: &mut Vec<String>) {
        let ctx = self.ctx.clone();
        let in_force = ctx.lock().good.as_ref().map(|g| g.revision.clone());
        let polled = {
            let _t = ctx.metrics.phase_timer("source");
            self.source.poll(in_force.as_deref()).await
        };
        let snap = match polled {
            Ok(Poll::Unchanged { .. }) => {
                let mut s = ctx.lock();
                s.source.fetch_error = None;
                s.source.polled_at = Some(now_unix());
                return;
            }
            Ok(Poll::Changed(snap)) => snap,
            Err(e) => {
                tracing::warn!("source: {e}");
                problems.push(format!("source: {e}"));
                let mut s = ctx.lock();
                s.source.fetch_error = Some(e.to_string());
                s.source.polled_at = Some(now_unix());
                return;
            }
        };
        let loaded = {
            let _t = ctx.metrics.phase_timer("load");
            manifest::load_tree(&snap.files, &ctx.config.path, Secrets::Resolve)
        };
        let mut s = ctx.lock();
        s.source.fetch_error = None;
        s.source.polled_at = Some(now_unix());
        s.source.newest = Some(snap.revision.clone());
        match loaded {
            Ok(l) => {
                tracing::info!(revision = %snap.revision, "manifests valid");
                let warnings: Vec<String> = l.warnings.iter().map(|w| w.to_string()).collect();
                s.good = Some(Good {
                    revision: snap.revision.clone(),
                    desired: Arc::new(l.desired),
                });
                s.source.revision = Some(snap.revision.clone());
                s.source.subject = Some(snap.subject);
                s.source.manifests_valid = true;
                s.source.errors.clear();
                s.source.warnings = warnings;
                ctx.metrics.manifests_valid(true);
                ctx.metrics.source(&snap.revision, self.source.branch());
            }
            Err(d) => {
                let errors: Vec<String> = d.0.iter().map(|x| x.to_string()).collect();
                tracing::warn!(revision = %snap.revision, "manifests refused: {d}");
                problems.push(format!(
                    "revision {} refused: {}",
                    source::short(&snap.revision),
                    errors.first().cloned().unwrap_or_default()
                ));
                s.source.manifests_valid = false;
                s.source.errors = errors.clone();
                ctx.metrics.manifests_valid(false);
                if s.notified_invalid.as_deref() != Some(snap.revision.as_str()) {
                    s.notified_invalid = Some(snap.revision.clone());
                    let kept = s
                        .good
                        .as_ref()
                        .map(|g| source::short(&g.revision).to_string());
                    drop(s);
                    ctx.notify(Event {
                        kind: EventKind::Failure,
                        controller: ctx.config.ident.clone(),
                        reconcile: None,
                        revision: Some(snap.revision.clone()),
                        summary: match kept {
                            Some(k) => format!("manifests refused; {k} stays in force"),
                            None => "manifests refused; nothing in force".into(),
                        },
                        actions: vec![],
                        errors,
                    });
                }
            }
        }
    }

    /// Observe hosts concurrently, each bounded by the host timeout; hosts in
    /// backoff are not contacted. A reachable host's due HTTP health checks
    /// run after its probe (see [`checks`]).
    async fn observe(
        &self,
        hosts: &[Host],
        desired: &Arc<Desired>,
        retry_all: bool,
    ) -> BTreeMap<String, Observation> {
        let ctx = &self.ctx;
        let timeout = ctx.config.host_timeout;
        let sem = Arc::new(Semaphore::new(ctx.config.concurrency));
        let mut out = BTreeMap::new();
        let mut tasks = Vec::new();
        for h in hosts {
            let waiting = {
                let s = ctx.lock();
                s.backoff
                    .get(&h.name)
                    .filter(|b| !retry_all && b.waiting())
                    .map(|b| {
                        format!(
                            "backing off after {} failures: {}",
                            b.failures, b.last_reason
                        )
                    })
            };
            if let Some(reason) = waiting {
                out.insert(h.name.clone(), Observation::Unreachable { reason });
                continue;
            }
            let (h, sem, desired) = (h.clone(), sem.clone(), desired.clone());
            // The engine is shared by reference through a scoped future set.
            tasks.push(async move {
                let _permit = sem.acquire().await;
                let o = match tokio::time::timeout(timeout, self.engine.observe(&h, &desired)).await
                {
                    Ok(Observation::Reachable(mut st)) => {
                        self.check_http(&h, &desired, &mut st).await;
                        Observation::Reachable(st)
                    }
                    Ok(o) => o,
                    Err(_) => Observation::Unreachable {
                        reason: format!("no answer within {}", humantime::format_duration(timeout)),
                    },
                };
                (h.name, o)
            });
        }
        let results = join_all(tasks).await;
        let max = ctx.config.max_backoff;
        let mut s = ctx.lock();
        for (name, o) in results {
            match &o {
                Observation::Reachable(_) => {
                    s.backoff.remove(&name);
                }
                Observation::Unreachable { reason } => {
                    s.backoff
                        .entry(name.clone())
                        .or_default()
                        .fail(reason.clone(), max);
                }
            }
            out.insert(name, o);
        }
        out
    }

    /// Run `host`'s due HTTP health checks (at most [`checks::PER_HOST`] at
    /// once, each bounded by its timeout) and set `healthy` from the verdicts.
    async fn check_http(&self, host: &Host, desired: &Desired, st: &mut HostState) {
        let ctx = &self.ctx;
        let now = tokio::time::Instant::now();
        let due = ctx.lock().health.due(desired, &host.name, st, now);
        if !due.is_empty() {
            let sem = Semaphore::new(checks::PER_HOST);
            let results = join_all(
                due.iter()
                    .map(|d| async {
                        let _permit = sem.acquire().await;
                        self.engine.check_health(host, &d.service, &d.health).await
                    })
                    .collect(),
            )
            .await;
            let mut s = ctx.lock();
            for (d, r) in due.iter().zip(results) {
                let why = r.as_ref().err().map(|e| e.to_string());
                match s
                    .health
                    .record(&host.name, d, r.map_err(|e| e.to_string()), now)
                {
                    checks::Change::BecameUnhealthy => tracing::warn!(
                        host = %host.name,
                        service = %d.service,
                        retries = d.health.retries,
                        "unhealthy: {}",
                        why.unwrap_or_default()
                    ),
                    checks::Change::BecameHealthy => {
                        tracing::info!(host = %host.name, service = %d.service, "healthy again")
                    }
                    checks::Change::None => {}
                }
            }
        }
        ctx.lock().health.apply(desired, &host.name, st);
    }

    fn record_outcomes(&self, id: u64, outcomes: &[ActionOutcome]) {
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

    fn notify_outcomes(&self, id: u64, revision: &str, outcomes: &[ActionOutcome]) {
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
        let failed = actions.iter().filter(|a| a.result != "success").count();
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

    /// Metrics and status from one plan.
    fn publish(&self, desired: &Desired, observed: &BTreeMap<String, Observation>, p: &Plan) {
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
                Some(Observation::Unreachable { reason }) => (false, Some(reason.clone()), None),
                None => (false, Some("not observed".into()), None),
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
                services,
            });
        }
        s.hosts = hosts;
        drop(s);
        ctx.metrics.set_fleet(&host_samples, &service_samples);
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
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
            });
            while s.history.len() > ctx.config.history {
                s.history.pop_front();
            }
        }
        ctx.ready.store(true, Ordering::SeqCst);
        ctx.finished.send_replace(q.id);
    }
}

/// Await futures concurrently (no extra dependency for one join).
async fn join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut set = Vec::with_capacity(futs.len());
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if done[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => done[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    set.extend(done.into_iter().flatten());
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Address;

    fn host(name: &str, labels: &[(&str, &str)]) -> Host {
        Host {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            address: Address::Local,
            root: "/tmp/x".into(),
            capacity: None,
            reserved: 0,
        }
    }

    #[test]
    fn a_selector_keeps_only_matching_hosts() {
        let mut d = Desired::default();
        d.hosts
            .insert("a".into(), host("a", &[("cloud", "aliyun")]));
        d.hosts
            .insert("t".into(), host("t", &[("cloud", "tencent")]));
        let sel = crate::config::parse_selectors(["cloud=tencent"]).unwrap();
        let d = Arc::new(d);
        let s = shard(&d, &sel);
        assert_eq!(s.hosts.keys().collect::<Vec<_>>(), vec!["t"]);
        let all = shard(&d, &BTreeMap::new());
        assert_eq!(all.hosts.len(), 2);
        assert!(
            Arc::ptr_eq(&all, &d),
            "no selector: the same state, not a copy"
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let mut b = Backoff::default();
        let max = Duration::from_secs(60);
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            b.fail("x".into(), max);
            let d = b.until.unwrap().saturating_duration_since(Instant::now());
            assert!(d <= max);
            assert!(d + Duration::from_secs(1) >= last.min(max));
            last = d;
        }
        assert!(b.waiting());
        assert!(last > Duration::from_secs(50));
    }

    #[tokio::test]
    async fn join_all_keeps_order() {
        let r = join_all(vec![
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                1
            }) as std::pin::Pin<Box<dyn std::future::Future<Output = i32> + Send>>,
            Box::pin(async { 2 }),
        ])
        .await;
        assert_eq!(r, vec![1, 2]);
    }
}
