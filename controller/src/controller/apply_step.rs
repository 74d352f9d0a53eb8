//! Apply: converge the hosts with actions, and keep the others looked after
//! meanwhile. A long action (a 60 s install) holds only its own host:
//! whenever a new trigger waits, the idle hosts are observed again and their
//! drift is repaired in this same reconcile. The trigger stays pending, so a
//! burst of triggers still makes one more reconcile, not many.

use super::engine::{ActionOutcome, Applied};
use super::worker::{Gates, Pass, Worker};
use crate::model::{Host, Observation};
use crate::plan::Plan;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

/// How often a long apply looks for a waiting trigger.
const IDLE_POLL: Duration = Duration::from_millis(250);

/// One reconcile's applies in flight, and the hosts they hold.
struct InFlight {
    set: JoinSet<(BTreeSet<String>, Applied)>,
    busy: BTreeSet<String>,
    /// Every host acted on in this reconcile: none is acted on twice, so a
    /// failing action is not retried in a loop while triggers keep coming.
    touched: BTreeSet<String>,
}

impl Worker {
    /// Run `first`'s actions; while they run, repair idle hosts whenever a
    /// trigger waits. Returns every action's outcome and the hosts acted on;
    /// `observed` ends with the latest observation of each host looked at.
    pub(super) async fn apply_step(
        &self,
        pass: &Pass<'_>,
        first: &Plan,
        observed: &mut BTreeMap<String, Observation>,
        problems: &mut Vec<String>,
    ) -> (Vec<ActionOutcome>, BTreeSet<String>) {
        let _t = self.ctx.metrics.phase_timer("apply");
        let mut flight = InFlight {
            set: JoinSet::new(),
            busy: BTreeSet::new(),
            touched: BTreeSet::new(),
        };
        self.dispatch(&mut flight, first, pass);
        let mut outcomes = Vec::new();
        let mut seen = self.waiting();
        let mut poll = tokio::time::interval(IDLE_POLL);
        loop {
            tokio::select! {
                done = flight.set.join_next() => match done {
                    None => break,
                    Some(Ok((held, applied))) => {
                        flight.busy.retain(|h| !held.contains(h));
                        problems.extend(applied.problems);
                        for (host, cause) in &applied.host_errors {
                            self.ctx.metrics.host_error(host, cause);
                        }
                        self.record_outcomes(pass.id, &applied.outcomes);
                        outcomes.extend(applied.outcomes);
                    }
                    Some(Err(e)) => tracing::error!("apply task failed: {e}"),
                },
                _ = poll.tick() => {
                    let now = self.waiting();
                    if now.is_some() && now != seen {
                        seen = now;
                        self.side_pass(&mut flight, pass, observed).await;
                    }
                }
            }
        }
        (outcomes, flight.touched)
    }

    /// The waiting trigger, as (reconcile id, triggers so far).
    fn waiting(&self) -> Option<(u64, u64)> {
        self.ctx.coalescer.pending().map(|q| (q.id, q.triggers))
    }

    /// Observe the idle hosts, plan, and start their actions.
    async fn side_pass(
        &self,
        flight: &mut InFlight,
        pass: &Pass<'_>,
        observed: &mut BTreeMap<String, Observation>,
    ) {
        let (desired, revision) = (pass.desired, pass.revision);
        let idle: Vec<Host> = pass
            .hosts
            .iter()
            .filter(|h| !flight.touched.contains(&h.name))
            .cloned()
            .collect();
        if idle.is_empty() {
            return;
        }
        observed.extend(self.observe(&idle, desired, false).await);
        let gates = Gates {
            revision,
            overriding: pass.overriding,
            acting: true,
        };
        let mut p = self.plan_gated(desired, observed, gates);
        p.actions.retain(|a| !flight.touched.contains(&a.host));
        self.publish(desired, observed, &p);
        if !p.actions.is_empty() {
            tracing::info!(
                actions = p.actions.len(),
                "repairing idle hosts while others apply"
            );
            self.dispatch(flight, &p, pass);
        }
    }

    fn dispatch(&self, flight: &mut InFlight, p: &Plan, pass: &Pass<'_>) {
        let (desired, revision) = (pass.desired, pass.revision);
        let held: BTreeSet<String> = p.actions.iter().map(|a| a.host.clone()).collect();
        if held.is_empty() {
            return;
        }
        flight.busy.extend(held.iter().cloned());
        flight.touched.extend(held.iter().cloned());
        let (engine, desired) = (self.engine.clone(), desired.clone());
        let (p, revision) = (p.clone(), revision.to_string());
        let verdicts = self.ctx.lock().health.verdicts();
        let args = Gates {
            revision: &revision,
            overriding: pass.overriding,
            acting: true,
        };
        let gates = Arc::new(self.gates(args, self.ctx.lock().applying.clone()));
        flight.set.spawn(async move {
            let applied = engine.apply(&p, &desired, &revision, verdicts, gates).await;
            (held, applied)
        });
    }
}
