//! The controller's shared state: read by the HTTP server, written by the
//! loop. Neither imports the other; both import this.

use super::backoff::Backoff;
use super::checks;
use super::coalesce::{Coalescer, Ticket, Trigger};
use super::error::ControllerError;
use super::status::{
    unix_time, ActionRecord, Awaiting, HostStatus, LedgerSummary, ReconcileRecord, SourceStatus,
    StatusReport, WindowStatus,
};
use crate::config::Config;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::model::Desired;
use crate::notify::{Event, Notifier};
use crate::plan::RolloutStatus;
use crate::source::Source;
use crate::window::Windows;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::watch;

/// The desired state of the last revision that validated.
#[derive(Debug, Clone)]
pub(super) struct Good {
    pub(super) revision: String,
    pub(super) desired: Arc<Desired>,
}

#[derive(Debug)]
pub(super) struct State {
    pub(super) source: SourceStatus,
    pub(super) good: Option<Good>,
    pub(super) hosts: Vec<HostStatus>,
    pub(super) rollouts: Vec<RolloutStatus>,
    pub(super) last_actions: BTreeMap<(String, String), ActionRecord>,
    pub(super) history: VecDeque<ReconcileRecord>,
    pub(super) backoff: BTreeMap<String, Backoff>,
    /// Revision whose refusal was already notified (one message per bad commit).
    pub(super) notified_invalid: Option<String>,
    /// Result of the previous reconcile: failures are notified once, not every tick.
    pub(super) last_result: Option<String>,
    /// Last HTTP health check of each running service and its verdict.
    pub(super) health: checks::Cache,
    /// Window holds the running reconcile's manual override let through.
    pub(super) overrides: Vec<String>,
    /// Newest ledger entries first, for the status page.
    pub(super) ledger_recent: VecDeque<LedgerSummary>,
    /// The failure last written to the ledger (the same one is not repeated).
    pub(super) ledger_last_error: Option<String>,
    /// The plan published for approval, the id approved, the id applying.
    pub(super) awaiting: Option<Awaiting>,
    pub(super) approved: Option<String>,
    pub(super) applying: Option<String>,
    /// The (revision, outcome) last sent to the forge as a commit status.
    pub(super) forge_posted: Option<(String, String)>,
}

pub struct Context {
    pub config: Config,
    pub windows: Windows,
    pub ledger: Arc<Ledger>,
    pub metrics: Metrics,
    pub coalescer: Arc<Coalescer>,
    pub token: Option<String>,
    pub webhook_secret: Option<String>,
    notifier: Notifier,
    state: Mutex<State>,
    pub(super) ready: AtomicBool,
    /// Id of the last finished reconcile.
    pub(super) finished: watch::Sender<u64>,
}

impl Context {
    pub fn new(config: Config, source: &Source) -> Result<Arc<Context>, ControllerError> {
        let token = config.token()?;
        let webhook_secret = config.webhook_secret()?;
        let windows = Windows::new(&config.windows)?;
        let ledger = Arc::new(Ledger::open(config.ledger_path(), &config.ledger)?);
        let ledger_recent = ledger
            .page(super::status::LEDGER_RECENT, None, None)?
            .entries
            .iter()
            .map(LedgerSummary::of)
            .collect();
        let metrics = Metrics::new();
        metrics.manifests_valid(false);
        Ok(Arc::new(Context {
            windows,
            ledger,
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
                rollouts: vec![],
                last_actions: BTreeMap::new(),
                history: VecDeque::new(),
                backoff: BTreeMap::new(),
                notified_invalid: None,
                last_result: None,
                health: checks::Cache::default(),
                overrides: Vec::new(),
                ledger_recent,
                ledger_last_error: None,
                awaiting: None,
                approved: None,
                applying: None,
                forge_posted: None,
            }),
            ready: AtomicBool::new(false),
            finished: watch::channel(0).0,
            config,
        }))
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Count and queue a trigger.
    pub fn trigger(&self, t: Trigger) -> Ticket {
        self.trigger_with(t, false)
    }

    /// Count and queue a trigger that may override sync windows.
    pub fn trigger_with(&self, t: Trigger, override_window: bool) -> Ticket {
        self.metrics.trigger(t.as_str());
        self.coalescer.trigger_with(t, override_window)
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
            rollouts: s.rollouts.clone(),
            running: self.coalescer.running(),
            pending: self.coalescer.pending(),
            windows: self.window_status(chrono::Utc::now()),
            reconciles: s.history.iter().rev().cloned().collect(),
            ledger: s.ledger_recent.iter().cloned().collect(),
            awaiting_approval: s.awaiting.clone(),
        }
    }

    pub fn window_status(&self, now: chrono::DateTime<chrono::Utc>) -> Vec<WindowStatus> {
        let snap = self.windows.at(now);
        snap.states
            .iter()
            .map(|st| {
                let w = st.window;
                let until = st.until.or_else(|| w.next_start(now));
                WindowStatus {
                    name: w.spec.name.clone(),
                    kind: w.spec.kind,
                    schedule: w.spec.schedule.clone(),
                    timezone: w.spec.timezone.clone(),
                    active: st.until.is_some(),
                    until: until.map(|t| t.timestamp_millis() as f64 / 1000.0),
                    until_local: until.map(|t| crate::window::local_time(t, now, w.tz())),
                    manual_override: w.spec.manual_override,
                }
            })
            .collect()
    }

    /// Approve plan `id` if it is the one awaiting: Err(current id) if not.
    pub fn approve(&self, id: &str) -> Result<(), Option<String>> {
        let mut s = self.lock();
        let current = s.awaiting.as_ref().map(|a| a.pending.id.clone());
        if current.as_deref() != Some(id) {
            return Err(current);
        }
        tracing::info!(plan = id, "plan approved");
        s.approved = Some(id.to_string());
        Ok(())
    }

    pub fn reconcile_record(&self, id: u64) -> Option<ReconcileRecord> {
        self.lock().history.iter().find(|r| r.id == id).cloned()
    }

    pub(super) fn notify(&self, event: Event) {
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

pub(super) fn now_unix() -> f64 {
    unix_time::secs(SystemTime::now())
}
