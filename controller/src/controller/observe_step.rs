//! Observe: one probe per host, bounded by the host timeout and skipped
//! while the host backs off, then its due HTTP health checks.

use super::checks;
use super::worker::{join_all, Worker};
use crate::model::{Desired, Host, HostState, Observation};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// The cause of a host not contacted because it backs off: not a new error.
pub(super) const BACKOFF: &str = "backoff";

impl Worker {
    /// Observe hosts concurrently, each bounded by the host timeout; hosts in
    /// backoff are not contacted. A reachable host's due HTTP health checks
    /// run after its probe (see [`checks`]).
    pub(super) async fn observe(
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
                out.insert(h.name.clone(), Observation::unreachable(BACKOFF, reason));
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
                    Err(_) => Observation::unreachable(
                        "timeout",
                        format!("no answer within {}", humantime::format_duration(timeout)),
                    ),
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
                Observation::Unreachable { reason, cause } => {
                    ctx.metrics.host_error(&name, cause);
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
    pub(super) async fn check_http(&self, host: &Host, desired: &Desired, st: &mut HostState) {
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
}
