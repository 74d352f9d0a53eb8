//! Triggers coalesce: at most one reconcile runs and at most one waits. A
//! trigger that arrives while one is already waiting joins it.

use serde::Serialize;
use std::sync::Mutex;
use std::time::SystemTime;
use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Schedule,
    Api,
    Webhook,
    Watch,
    Startup,
    Cli,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Api => "api",
            Trigger::Webhook => "webhook",
            Trigger::Watch => "watch",
            Trigger::Startup => "startup",
            Trigger::Cli => "cli",
        }
    }
}

/// A reconcile waiting to run, or running.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Queued {
    pub id: u64,
    /// The first trigger that asked for it.
    pub trigger: Trigger,
    /// How many triggers this run answers.
    pub triggers: u64,
    /// A person asked to act past sync windows that allow a manual override.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub override_window: bool,
    #[serde(with = "super::status::unix_time")]
    pub queued_at: SystemTime,
}

/// What a caller of [`Coalescer::trigger`] learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Ticket {
    /// The reconcile that will answer this trigger.
    pub id: u64,
    /// True when the trigger joined a reconcile that was already waiting.
    pub coalesced: bool,
}

#[derive(Debug, Default)]
struct State {
    last_id: u64,
    pending: Option<Queued>,
    running: Option<Queued>,
    closed: bool,
}

#[derive(Debug, Default)]
pub struct Coalescer {
    state: Mutex<State>,
    wake: Notify,
}

impl Coalescer {
    pub fn new() -> Coalescer {
        Coalescer::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn trigger(&self, trigger: Trigger) -> Ticket {
        self.trigger_with(trigger, false)
    }

    /// A trigger that may ask to override sync windows; joining a waiting
    /// reconcile carries the ask over to it.
    pub fn trigger_with(&self, trigger: Trigger, override_window: bool) -> Ticket {
        let mut s = self.lock();
        if let Some(p) = s.pending.as_mut() {
            p.triggers += 1;
            p.override_window |= override_window;
            return Ticket {
                id: p.id,
                coalesced: true,
            };
        }
        s.last_id += 1;
        let id = s.last_id;
        s.pending = Some(Queued {
            id,
            trigger,
            triggers: 1,
            override_window,
            queued_at: SystemTime::now(),
        });
        drop(s);
        self.wake.notify_one();
        Ticket {
            id,
            coalesced: false,
        }
    }

    /// Wait for the next reconcile to run and mark it running. None once closed.
    /// One worker calls this; it calls [`Coalescer::finish`] when done.
    pub async fn next(&self) -> Option<Queued> {
        loop {
            {
                let mut s = self.lock();
                if s.closed {
                    return None;
                }
                if let Some(p) = s.pending.take() {
                    s.running = Some(p.clone());
                    return Some(p);
                }
            }
            self.wake.notified().await;
        }
    }

    pub fn finish(&self) {
        self.lock().running = None;
    }

    pub fn running(&self) -> Option<Queued> {
        self.lock().running.clone()
    }

    pub fn pending(&self) -> Option<Queued> {
        self.lock().pending.clone()
    }

    /// Stop handing out work; the reconcile in progress finishes.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_waiters();
        self.wake.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_thousand_triggers_in_a_burst_cause_at_most_two_reconciles() {
        let c = Arc::new(Coalescer::new());
        let runs = Arc::new(AtomicU64::new(0));
        let worker = {
            let (c, runs) = (c.clone(), runs.clone());
            tokio::spawn(async move {
                while let Some(_q) = c.next().await {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    c.finish();
                }
            })
        };
        let mut ids = std::collections::BTreeSet::new();
        for i in 0..1000 {
            ids.insert(c.trigger(Trigger::Api).id);
            if i == 0 {
                // Let the worker pick up the first one: the rest arrive mid-run.
                tokio::task::yield_now().await;
            }
        }
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(ids.len(), 2, "{ids:?}");
        c.close();
        worker.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_trigger_after_a_run_finished_runs_again() {
        let c = Coalescer::new();
        let t1 = c.trigger(Trigger::Schedule);
        let q = c.next().await.unwrap();
        assert_eq!(q.id, t1.id);
        let t2 = c.trigger(Trigger::Cli);
        assert!(!t2.coalesced);
        let t3 = c.trigger(Trigger::Webhook);
        assert!(t3.coalesced);
        assert_eq!(t3.id, t2.id);
        c.finish();
        let q2 = c.next().await.unwrap();
        assert_eq!((q2.id, q2.trigger, q2.triggers), (t2.id, Trigger::Cli, 2));
    }

    #[test]
    fn a_trigger_joining_a_waiting_reconcile_carries_its_window_override() {
        let c = Coalescer::new();
        c.trigger(Trigger::Schedule);
        assert!(!c.pending().unwrap().override_window);
        let t = c.trigger_with(Trigger::Cli, true);
        assert!(t.coalesced);
        assert!(c.pending().unwrap().override_window);
    }

    #[tokio::test(start_paused = true)]
    async fn closing_wakes_the_worker() {
        let c = Arc::new(Coalescer::new());
        let w = {
            let c = c.clone();
            tokio::spawn(async move { c.next().await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.close();
        assert_eq!(w.await.unwrap(), None);
    }
}
