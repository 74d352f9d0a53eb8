//! The reconcile, as the pipeline it is: source → load → observe → plan →
//! apply → report. Each step is a method in the file named after it; the
//! policies (backoff, coalescing, health-check cadence) live beside it.

use super::coalesce::{Queued, Trigger};
use super::context::{now_unix, Context, Good};
use super::engine::{ActionOutcome, ActionResult, Engine};
use super::status::ActionSummary;
use crate::model::{Desired, Host, Observation};
use crate::plan::Plan;
use crate::source::Source;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// What one reconcile works on.
pub(super) struct Pass<'a> {
    pub id: u64,
    pub desired: &'a Arc<Desired>,
    pub revision: &'a str,
    pub hosts: &'a [Host],
    /// A manual trigger asked to act past windows that allow it.
    pub overriding: bool,
}

/// What the gates need besides the plan.
#[derive(Debug, Clone, Copy)]
pub(super) struct Gates<'a> {
    pub revision: &'a str,
    /// A manual trigger asked to act past windows that allow it.
    pub overriding: bool,
    /// The plan's actions will run: an approval may be used up by it (not
    /// by the plan published after the actions).
    pub acting: bool,
}

/// What one reconcile hands the ledger.
pub(super) struct Done<'a> {
    pub q: &'a Queued,
    pub started: f64,
    pub duration: f64,
    pub result: &'a str,
    pub revision: Option<&'a str>,
    pub error: Option<&'a str>,
    pub outcomes: &'a [ActionOutcome],
    /// The plan before the actions (versions before) and after them.
    pub before: &'a Plan,
    pub after: &'a Plan,
    pub desired: Option<&'a Desired>,
    pub plan_id: Option<String>,
}

pub(super) struct Worker {
    pub(super) ctx: Arc<Context>,
    pub(super) source: Source,
    pub(super) engine: Engine,
}

impl Worker {
    pub(super) async fn reconcile(&mut self, q: Queued) {
        let ctx = self.ctx.clone();
        let timer = ctx.metrics.reconcile_timer();
        let started = now_unix();
        tracing::info!(id = q.id, trigger = q.trigger.as_str(), "reconcile");
        let mut problems: Vec<String> = Vec::new();
        ctx.lock().overrides.clear();
        // Only an authenticated POST /reconcile sets it (a schedule tick it
        // joined carries it too).
        let overriding = q.override_window;

        // Source and load: a new revision that does not validate is not applied.
        self.refresh_source(&mut problems).await;
        let good = ctx.lock().good.clone();
        let Some(good) = good else {
            let error = problems.first().cloned();
            let error = error.unwrap_or_else(|| "no valid revision yet".into());
            let done = Done {
                q: &q,
                started,
                duration: timer.elapsed().as_secs_f64(),
                result: "failure",
                revision: None,
                error: Some(&error),
                outcomes: &[],
                before: &Plan::default(),
                after: &Plan::default(),
                desired: None,
                plan_id: None,
            };
            self.record_ledger(done, vec![]).await;
            self.finish(q, started, timer, "failure", None, vec![], Some(error));
            return;
        };
        let desired = self.scope(&good);
        let hosts: Vec<Host> = desired.hosts.values().cloned().collect();

        // A person asking for a reconcile wants every host tried now.
        let retry_all = matches!(q.trigger, Trigger::Api | Trigger::Cli | Trigger::Webhook);
        let mut observed = self.observe_timed(&hosts, &desired, retry_all).await;
        let gates = Gates {
            revision: &good.revision,
            overriding,
            acting: true,
        };
        let mut the_plan = self.plan_timed(&desired, &observed, gates);

        let mut outcomes = Vec::new();
        let before = the_plan.clone();
        if !the_plan.actions.is_empty() {
            // What needs repair is visible while the repair runs.
            self.publish(&desired, &observed, &the_plan);
            let pass = Pass {
                id: q.id,
                desired: &desired,
                revision: &good.revision,
                hosts: &hosts,
                overriding,
            };
            let (done, touched) = self
                .apply_step(&pass, &the_plan, &mut observed, &mut problems)
                .await;
            outcomes = done;
            // Show the state the actions left, not the one they repaired.
            let again: Vec<Host> = hosts
                .iter()
                .filter(|h| touched.contains(&h.name))
                .cloned()
                .collect();
            observed.extend(self.observe_timed(&again, &desired, true).await);
            let gates = Gates {
                acting: false,
                ..gates
            };
            the_plan = self.plan_timed(&desired, &observed, gates);
        }

        self.publish(&desired, &observed, &the_plan);
        let result = result_of(&hosts, &the_plan, &outcomes, &mut problems);
        if !outcomes.is_empty() {
            self.notify_outcomes(q.id, &good.revision, &outcomes);
        }
        let error = join_problems(problems);
        let summaries = summaries(&outcomes);
        let overrode = ctx.lock().overrides.clone();
        let done = Done {
            q: &q,
            started,
            duration: timer.elapsed().as_secs_f64(),
            result,
            revision: Some(&good.revision),
            error: error.as_deref(),
            outcomes: &outcomes,
            before: &before,
            after: &the_plan,
            desired: Some(&desired),
            plan_id: ctx.lock().applying.take(),
        };
        self.record_ledger(done, overrode).await;
        self.post_commit_status(&good.revision, result, outcomes.len());
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

    /// The part of the good revision this controller owns, with the per-host
    /// memories (transports, health cache) of hosts that left it dropped.
    fn scope(&self, good: &Good) -> Arc<Desired> {
        let desired = shard(&good.desired, &self.ctx.config.selector);
        self.engine.retain_hosts(&desired);
        self.ctx.lock().health.retain_hosts(&desired);
        desired
    }

    async fn observe_timed(
        &self,
        hosts: &[Host],
        desired: &Arc<Desired>,
        retry_all: bool,
    ) -> BTreeMap<String, Observation> {
        let _t = self.ctx.metrics.phase_timer("observe");
        self.observe(hosts, desired, retry_all).await
    }

    fn plan_timed(
        &self,
        desired: &Desired,
        observed: &BTreeMap<String, Observation>,
        gates: Gates<'_>,
    ) -> Plan {
        let _t = self.ctx.metrics.phase_timer("plan");
        self.plan_gated(desired, observed, gates)
    }
}

/// `success` when everything converged, `failure` when no host was reached,
/// `partial` otherwise. Unreachable hosts become problems.
fn result_of(
    hosts: &[Host],
    the_plan: &Plan,
    outcomes: &[ActionOutcome],
    problems: &mut Vec<String>,
) -> &'static str {
    let failed = outcomes
        .iter()
        .filter(|o| matches!(o.result, ActionResult::Failed | ActionResult::RolledBack))
        .count();
    for (h, why) in &the_plan.unreachable {
        problems.push(format!("{h}: {why}"));
    }
    if hosts.is_empty() || the_plan.unreachable.len() < hosts.len() {
        if failed > 0 || !problems.is_empty() {
            "partial"
        } else {
            "success"
        }
    } else {
        "failure"
    }
}

fn summaries(outcomes: &[ActionOutcome]) -> Vec<ActionSummary> {
    outcomes
        .iter()
        .map(|o| ActionSummary {
            kind: o.kind.as_str().into(),
            host: o.host.clone(),
            service: o.service.clone(),
            result: o.result.as_str().into(),
        })
        .collect()
}

/// Each problem once, in the order seen.
fn join_problems(mut problems: Vec<String>) -> Option<String> {
    let mut seen = BTreeSet::new();
    problems.retain(|p| seen.insert(p.clone()));
    (!problems.is_empty()).then(|| problems.join("; "))
}

fn selected(host: &Host, selector: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| host.labels.get(k) == Some(v))
}

/// The part of the desired state this controller owns (its selector's hosts).
/// Without a selector that is all of it, shared rather than copied.
pub(super) fn shard(desired: &Arc<Desired>, selector: &BTreeMap<String, String>) -> Arc<Desired> {
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
        .filter(|(_, s)| s.hosts.iter().any(|h| hosts.contains_key(h)))
        .map(|(k, s)| {
            // Instances on other controllers' hosts are theirs to count.
            let mut s = s.clone();
            s.hosts.retain(|h| hosts.contains_key(h));
            (k.clone(), s)
        })
        .collect();
    Arc::new(Desired { hosts, services })
}

pub(super) async fn join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
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
    use std::time::Duration;

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

    #[test]
    fn a_problem_seen_twice_is_reported_once() {
        let p = vec!["a".to_string(), "b".into(), "a".into()];
        assert_eq!(join_problems(p).as_deref(), Some("a; b"));
        assert_eq!(join_problems(vec![]), None);
    }
}
