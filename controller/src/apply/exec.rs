//! One action on one host: compose the runtime's scripts behind the lock
//! prelude, run them, gate on health, roll back.

use super::lock::HostLock;
use super::output::{last_line, tail, Redactor};
use super::{ActionOutcome, ActionReport, ApplyOptions, Emit, Event};
use crate::model::{Delivery, Desired, Observation, ObservedService, Service, SourceTree};
use crate::plan::{Action, ActionKind};
use crate::record::{escape, PreviousRelease, Record};
use crate::runtime::{self, Release, RuntimeError, EXIT_LOCKED};
use crate::transport::{Transport, TransportError};
use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Lines of output kept per action.
const TAIL: usize = 40;

pub(crate) struct Ctx {
    pub desired: Desired,
    pub observed: BTreeMap<String, Observation>,
    pub opts: ApplyOptions,
    pub redactor: Redactor,
    pub emit: Emit,
}

impl Ctx {
    fn observed(&self, host: &str, service: &str) -> Option<&ObservedService> {
        match self.observed.get(host) {
            Some(Observation::Reachable(st)) => st.services.get(service),
            _ => None,
        }
    }
}

/// Accumulates what one action did.
struct Run<'a> {
    ctx: &'a Ctx,
    lock: &'a HostLock,
    t: &'a dyn Transport,
    action: &'a Action,
    output: String,
    oom: bool,
    release: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    #[error("{0}")]
    Render(#[from] RuntimeError),
    #[error("{0}")]
    Transport(#[from] crate::transport::TransportError),
    #[error("host is locked by {0}")]
    Locked(String),
    #[error("not tried: the host was lost by an earlier action ({0})")]
    HostLost(String),
    #[error("{0}")]
    Script(String),
    #[error("cannot pack the source: {0}")]
    Pack(String),
}

impl<'a> Run<'a> {
    fn step(&self, step: &str) {
        self.ctx.emit.send(Event::ActionStep {
            host: self.action.host.clone(),
            service: self.action.service.clone(),
            kind: self.action.kind,
            step: step.into(),
        });
    }

    /// Run `body` behind the lock prelude.
    async fn script(&mut self, body: &str, stdin: &[u8]) -> Result<String, StepError> {
        let script = super::lock::wrap(&self.lock.prelude()?, body);
        let out = {
            let _one = self.lock.scripts.lock().await;
            let gone = self.lock.lost.lock().map(|l| l.clone()).unwrap_or(None);
            if let Some(why) = gone {
                return Err(StepError::HostLost(why));
            }
            match self.t.exec(&script, stdin).await {
                Ok(out) => out,
                Err(e) => {
                    if matches!(
                        e,
                        TransportError::Lost { .. }
                            | TransportError::Timeout { .. }
                            | TransportError::Connect { .. }
                    ) {
                        if let Ok(mut l) = self.lock.lost.lock() {
                            *l = Some(e.to_string());
                        }
                    }
                    return Err(e.into());
                }
            }
        };
        let text =
            self.ctx
                .redactor
                .redact(&format!("{}{}", out.stdout_lossy(), out.stderr_lossy()));
        self.output.push_str(&text);
        if out.status == Some(EXIT_LOCKED) {
            let by = text
                .lines()
                .find_map(|l| l.strip_prefix("tend-locked "))
                .unwrap_or("unknown");
            return Err(StepError::Locked(by.to_string()));
        }
        if !out.success() {
            let status = out
                .status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "a signal".into());
            let why = last_line(&text);
            return Err(StepError::Script(if why.is_empty() {
                format!("script exited with {status}")
            } else {
                format!("script exited with {status}: {why}")
            }));
        }
        Ok(text)
    }

    /// Whether the service is alive, and whether the kernel OOM-killed in its cgroup.
    async fn status(&mut self, rt: &dyn runtime::Runtime) -> (bool, bool) {
        let Ok(script) = rt.status(&self.lock.root, &self.action.service) else {
            return (false, false);
        };
        let Ok(out) = self.t.exec(&script, &[]).await else {
            return (false, false);
        };
        let text = out.stdout_lossy();
        let mut alive = false;
        let mut oom = false;
        for l in text.lines() {
            if let Some(v) = l.strip_prefix("alive=") {
                alive = v.trim() == "1";
            }
            if let Some(v) = l.strip_prefix("oom_kill=") {
                oom = v.trim().parse::<u64>().map(|n| n > 0).unwrap_or(false);
            }
        }
        self.oom |= oom;
        (alive, oom)
    }

    /// Add the service's own last log lines to the action's output (the
    /// journal for systemd): what a person reads first when a gate fails.
    async fn log_tail(&mut self, rt: &dyn runtime::Runtime) {
        let Ok(script) = rt.logs(&self.lock.root, &self.action.service) else {
            return;
        };
        let Ok(out) = self.t.exec(&script, &[]).await else {
            return;
        };
        let text = self.ctx.redactor.redact(&out.stdout_lossy());
        if !text.trim().is_empty() {
            self.output.push_str(&format!(
                "--- {}'s last log lines ---\n{text}",
                self.action.service
            ));
        }
    }

    fn report(self, outcome: ActionOutcome, t0: Instant) -> ActionReport {
        ActionReport {
            action: self.action.clone(),
            outcome,
            duration: t0.elapsed(),
            output: tail(&self.output, TAIL),
            oom_killed: self.oom,
            release: self.release,
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Record lines the deploy adds to the release's static record.
fn extra_lines(prev: Option<&PreviousRelease>, failed: Option<&str>) -> String {
    let mut s = format!("deployed_at={}\n", now());
    if let Some(p) = prev {
        s.push_str(&format!(
            "previous_version={}\nprevious_config_hash={}\nprevious_release={}\n",
            escape(&p.version),
            escape(&p.config_hash),
            escape(&p.release)
        ));
    }
    if let Some(f) = failed {
        s.push_str(&format!("failed_version={}\n", escape(f)));
    }
    s
}

fn stage(root: &str, svc: &str, release: &str, extra: &str) -> Result<String, RuntimeError> {
    let mut o = runtime::vars(root, svc)?;
    o.push_str(&format!(
        "rel={}\n{{ cat \"$d/$rel/.tend/record\"; printf '%s' {}; }} > \"$root/records/.tmp-$svc.static\"\n",
        runtime::q(release)?,
        runtime::q(extra)?
    ));
    Ok(o)
}

/// The source tree as a tar stream (read by `tar -x` on the host).
pub fn source_tar(tree: &SourceTree) -> Result<Vec<u8>, std::io::Error> {
    let mut b = tar::Builder::new(Vec::new());
    for f in tree.files.iter() {
        let mut h = tar::Header::new_gnu();
        h.set_size(f.contents.len() as u64);
        h.set_mode(if f.executable { 0o755 } else { 0o644 });
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, &f.path, f.contents.as_slice())?;
    }
    b.into_inner()
}

pub(crate) async fn run_action(
    ctx: &Ctx,
    lock: &HostLock,
    t: &dyn Transport,
    a: &Action,
) -> ActionReport {
    let t0 = Instant::now();
    ctx.emit.send(Event::ActionStarted {
        host: a.host.clone(),
        service: a.service.clone(),
        kind: a.kind,
    });
    let mut run = Run {
        ctx,
        lock,
        t,
        action: a,
        output: String::new(),
        oom: false,
        release: None,
    };
    let outcome = match a.kind {
        ActionKind::Restart if ctx.observed(&a.host, &a.service).is_some() => {
            restart(&mut run).await
        }
        ActionKind::Start | ActionKind::Upgrade | ActionKind::Restart => {
            match ctx.desired.services.get(&a.service) {
                Some(s) if s.runs_on(&a.host) => deploy(&mut run, s).await,
                _ => ActionOutcome::Skipped(format!("{} is not in the manifests", a.service)),
            }
        }
        ActionKind::Stop => stop(&mut run).await,
        ActionKind::Prune => prune(&mut run).await,
        ActionKind::Rollback => explicit_rollback(&mut run).await,
    };
    run.report(outcome, t0)
}

fn fail(e: StepError) -> ActionOutcome {
    ActionOutcome::Failed(e.to_string())
}

async fn deploy(run: &mut Run<'_>, s: &Service) -> ActionOutcome {
    match deploy_inner(run, s).await {
        Ok(o) => o,
        Err(e) => fail(e),
    }
}

/// What a deploy runs on the host, given what the host recorded.
pub(crate) struct DeployPlan {
    pub release: String,
    pub previous: Option<PreviousRelease>,
    /// The release differs from the recorded one (a rollback has somewhere to go).
    pub switching: bool,
    pub body: String,
    pub stdin: Vec<u8>,
}

/// Install (if needed), stop what runs, switch, collect old releases, stage
/// the record, start. Pure: renders only.
pub(crate) fn deploy_plan(
    root: &str,
    s: &Service,
    recorded: Option<&Record>,
    revision: Option<&str>,
) -> Result<DeployPlan, StepError> {
    let rt = runtime::for_kind(s.runtime);
    let rel = Release::new(root, s, revision);
    // The release to fall back to: the one running now, unless it is this one.
    let prev: Option<PreviousRelease> = match recorded {
        Some(r) if r.release != rel.name && !r.release.is_empty() => Some(PreviousRelease {
            version: r.version.clone(),
            config_hash: r.config_hash.clone(),
            release: r.release.clone(),
        }),
        Some(r) => r.previous.clone(),
        None => None,
    };
    let switching = recorded.is_some_and(|r| r.release != rel.name);

    let mut body = runtime::install_release(rt, &rel)?;
    body.push_str(&rt.stop(root, &s.name)?);
    if let Some(old) = recorded.and_then(|r| r.runtime).filter(|k| *k != s.runtime) {
        body.push_str(&runtime::for_kind(old).stop(root, &s.name)?);
    }
    body.push_str(&runtime::switch(root, &s.name, &rel.name)?);
    let mut keep = vec![rel.name.as_str()];
    if let Some(p) = &prev {
        keep.push(p.release.as_str());
    }
    body.push_str(&runtime::gc_releases(root, &s.name, &keep)?);
    body.push_str(&stage(
        root,
        &s.name,
        &rel.name,
        &extra_lines(prev.as_ref(), None),
    )?);
    body.push_str(&runtime::run_start(root, &s.name, &rel.name)?);
    let stdin = match &s.delivery {
        Delivery::Source(tree) => source_tar(tree).map_err(|e| StepError::Pack(e.to_string()))?,
        _ => Vec::new(),
    };
    Ok(DeployPlan {
        release: rel.name,
        previous: prev,
        switching,
        body,
        stdin,
    })
}

async fn deploy_inner(run: &mut Run<'_>, s: &Service) -> Result<ActionOutcome, StepError> {
    let root = run.lock.root.clone();
    let rt = runtime::for_kind(s.runtime);
    let recorded = run
        .ctx
        .observed(&run.action.host, &s.name)
        .map(|o| o.record.clone());
    let DeployPlan {
        release,
        previous: prev,
        switching,
        body,
        stdin,
    } = deploy_plan(
        &root,
        s,
        recorded.as_ref(),
        run.ctx.opts.revision.as_deref(),
    )?;
    run.release = Some(release);
    run.script(&body, &stdin).await?;
    run.step("running");

    let Some(health) = &s.health else {
        let (alive, oom) = run.status(rt).await;
        if !alive {
            run.log_tail(rt).await;
        }
        return Ok(if alive {
            ActionOutcome::Succeeded
        } else {
            ActionOutcome::Failed(exited_message(oom, s))
        });
    };
    run.step("health");
    let err = match gate_while_alive(run, rt, &root, &s.name, health).await {
        Ok(()) => return Ok(ActionOutcome::Succeeded),
        Err(e) => e,
    };
    let (alive, oom) = run.status(rt).await;
    run.log_tail(rt).await;
    let mut why = format!("version {} is unhealthy: {err}", s.version);
    if !alive {
        why = format!("{}; {}", why, exited_message(oom, s));
    }
    match (switching, prev) {
        (true, Some(p)) => {
            run.step("rolling_back");
            let rolled = rollback(run, &p, &s.version, Some(s)).await;
            Ok(match rolled {
                Ok(()) => ActionOutcome::RolledBack(format!("{why}; rolled back to {}", p.version)),
                Err(e) => {
                    ActionOutcome::Failed(format!("{why}; rollback to {} failed: {e}", p.version))
                }
            })
        }
        _ => Ok(ActionOutcome::Failed(why)),
    }
}

/// The health gate, failing as soon as the service's process is gone
/// (from the third check on: a fresh process may still be starting) rather
/// than waiting out the whole budget.
async fn gate_while_alive(
    run: &mut Run<'_>,
    rt: &dyn runtime::Runtime,
    root: &str,
    service: &str,
    health: &crate::model::Health,
) -> Result<(), crate::health::HealthError> {
    let t = run.t;
    let mut gate = crate::health::Gate::new(health);
    loop {
        let err = match crate::health::check_once(t, root, service, &health.check, health.timeout)
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if gate.attempt >= 2 && !run.status(rt).await.0 {
            return Err(err);
        }
        if !gate.wait().await {
            return Err(err);
        }
    }
}

fn exited_message(oom: bool, s: &Service) -> String {
    if oom {
        match s.memory {
            Some(m) => format!("the kernel OOM-killed it (memory limit {m} bytes)"),
            None => "the kernel OOM-killed it".into(),
        }
    } else {
        "it is not running (see its log)".into()
    }
}

/// Switch back to `prev`, start it, record `failed_version`; gate on the
/// desired health check when given (the port usually stays the same).
async fn rollback(
    run: &mut Run<'_>,
    prev: &PreviousRelease,
    failed: &str,
    health_of: Option<&Service>,
) -> Result<(), StepError> {
    let root = run.lock.root.clone();
    let svc = run.action.service.clone();
    let current_rt = health_of.map(|s| s.runtime).or_else(|| {
        run.ctx
            .observed(&run.action.host, &svc)
            .and_then(|o| o.record.runtime)
    });
    let mut body = String::new();
    if let Some(k) = current_rt {
        body.push_str(&runtime::for_kind(k).stop(&root, &svc)?);
    }
    body.push_str(&runtime::switch(&root, &svc, &prev.release)?);
    body.push_str(&stage(
        &root,
        &svc,
        &prev.release,
        &extra_lines(None, Some(failed)),
    )?);
    body.push_str(&runtime::run_start(&root, &svc, &prev.release)?);
    run.release = Some(prev.release.clone());
    run.script(&body, &[]).await?;
    if let Some(h) = health_of.and_then(|s| s.health.as_ref()) {
        crate::health::wait_healthy(run.t, &root, &svc, h)
            .await
            .map_err(|e| {
                StepError::Script(format!("version {} is unhealthy too: {e}", prev.version))
            })?;
    }
    Ok(())
}

/// Restart the recorded release in place (memory limit or health drift, or
/// a stopped service whose desired version was rolled back): never installs.
async fn restart(run: &mut Run<'_>) -> ActionOutcome {
    match restart_inner(run).await {
        Ok(o) => o,
        Err(e) => fail(e),
    }
}

async fn restart_inner(run: &mut Run<'_>) -> Result<ActionOutcome, StepError> {
    let root = run.lock.root.clone();
    let svc = run.action.service.clone();
    let Some(o) = run.ctx.observed(&run.action.host, &svc) else {
        return Ok(ActionOutcome::Skipped("no record on the host".into()));
    };
    let rec = o.record.clone();
    let kind = rec.runtime.unwrap_or(crate::record::RuntimeKind::Process);
    let rt = runtime::for_kind(kind);
    let mut body = rt.stop(&root, &svc)?;
    body.push_str(&runtime::switch(&root, &svc, &rec.release)?);
    body.push_str(&stage(
        &root,
        &svc,
        &rec.release,
        &extra_lines(rec.previous.as_ref(), rec.failed_version.as_deref()),
    )?);
    body.push_str(&runtime::run_start(&root, &svc, &rec.release)?);
    run.release = Some(rec.release.clone());
    run.script(&body, &[]).await?;
    run.step("running");
    // The desired health check applies when the recorded release is the desired one.
    let desired = run.ctx.desired.services.get(&svc).cloned();
    let health = desired
        .as_ref()
        .filter(|s| s.version == rec.version && s.config_hash() == rec.config_hash)
        .and_then(|s| s.health.clone());
    if let Some(h) = health {
        run.step("health");
        if let Err(e) = crate::health::wait_healthy(run.t, &root, &svc, &h).await {
            let (_, oom) = run.status(rt).await;
            run.log_tail(rt).await;
            let mut why = format!("version {} is unhealthy after a restart: {e}", rec.version);
            if oom {
                why.push_str("; the kernel OOM-killed it");
            }
            return Ok(ActionOutcome::Failed(why));
        }
        return Ok(ActionOutcome::Succeeded);
    }
    let (alive, oom) = run.status(rt).await;
    if !alive {
        run.log_tail(rt).await;
    }
    Ok(if alive {
        ActionOutcome::Succeeded
    } else {
        ActionOutcome::Failed(if oom {
            "the kernel OOM-killed it".into()
        } else {
            "it is not running (see its log)".into()
        })
    })
}

async fn explicit_rollback(run: &mut Run<'_>) -> ActionOutcome {
    let Some(o) = run.ctx.observed(&run.action.host, &run.action.service) else {
        return ActionOutcome::Skipped("no record on the host".into());
    };
    let rec: Record = o.record.clone();
    let Some(prev) = rec.previous.clone() else {
        return ActionOutcome::Failed("no previous release to roll back to".into());
    };
    let desired = run.ctx.desired.services.get(&run.action.service).cloned();
    match rollback(run, &prev, &rec.version, desired.as_ref()).await {
        Ok(()) => ActionOutcome::Succeeded,
        Err(e) => fail(e),
    }
}

async fn stop(run: &mut Run<'_>) -> ActionOutcome {
    let root = run.lock.root.clone();
    let svc = run.action.service.clone();
    let kind = run
        .ctx
        .observed(&run.action.host, &svc)
        .and_then(|o| o.record.runtime)
        .or_else(|| run.ctx.desired.services.get(&svc).map(|s| s.runtime));
    let Some(kind) = kind else {
        return ActionOutcome::Skipped("runtime unknown".into());
    };
    let body = match runtime::for_kind(kind).stop(&root, &svc) {
        Ok(b) => b,
        Err(e) => return fail(e.into()),
    };
    match run.script(&body, &[]).await {
        Ok(_) => ActionOutcome::Succeeded,
        Err(e) => fail(e),
    }
}

async fn prune(run: &mut Run<'_>) -> ActionOutcome {
    let root = run.lock.root.clone();
    let svc = run.action.service.clone();
    // Only what tend installed: a record must be there.
    let Some(kind) = run
        .ctx
        .observed(&run.action.host, &svc)
        .map(|o| o.record.runtime)
    else {
        return ActionOutcome::Skipped("no record of it on the host".into());
    };
    let mut body = String::new();
    for k in [kind.unwrap_or(crate::record::RuntimeKind::Process)] {
        match runtime::for_kind(k).remove(&root, &svc) {
            Ok(b) => body.push_str(&b),
            Err(e) => return fail(e.into()),
        }
    }
    match run.script(&body, &[]).await {
        Ok(_) => ActionOutcome::Succeeded,
        Err(e) => fail(e),
    }
}
