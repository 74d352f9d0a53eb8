//! The controller's shared state: read by the HTTP server, written by the
//! loop. Neither imports the other; both import this.

use super::backoff::Backoff;
use super::checks;
use super::coalesce::{Coalescer, Ticket, Trigger};
use super::error::ControllerError;
use super::status::{
    unix_time, ActionRecord, HostStatus, ReconcileRecord, SourceStatus, StatusReport,
};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::Desired;
use crate::notify::{Event, Notifier};
use crate::plan::RolloutStatus;
use crate::source::Source;
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
}

pub struct Context {
    pub config: Config,
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
                rollouts: vec![],
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

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
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
            rollouts: s.rollouts.clone(),
            running: self.coalescer.running(),
            pending: self.coalescer.pending(),
            reconciles: s.history.iter().rev().cloned().collect(),
        }
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
