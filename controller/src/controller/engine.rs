//! The seam between the loop and the stages that touch hosts: `observe`
//! (one probe per host, read-only, no lock) and `apply::converge` (lock,
//! observe again under the lock, plan, act) — called only when the plan has
//! actions, so a no-op tick costs one round trip per host — plus a tunnel
//! per HTTP health check that is due (`check_health`).

use crate::apply::{self, ApplyOptions, HealthVerdict};
use crate::config::Config;
use crate::health::HealthError;
use crate::model::{Desired, Health, Host, Observation};
use crate::observe;
use crate::plan::{ActionKind, Plan};
use crate::transport::pool::{Pool, PoolOptions};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// How one action ended, in the words `tend apply --output json` uses
/// (`succeeded`, `failed`, `rolled_back`, `skipped`) for status, metrics and
/// notifications alike. Before 0.2, status and metrics said `success` and
/// `failure` for actions; a reconcile's result keeps `success`/`failure`/`partial`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionResult {
    Succeeded,
    Failed,
    RolledBack,
    Skipped,
}

impl ActionResult {
    pub const ALL: [ActionResult; 4] = [
        ActionResult::Succeeded,
        ActionResult::Failed,
        ActionResult::RolledBack,
        ActionResult::Skipped,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            ActionResult::Succeeded => "succeeded",
            ActionResult::Failed => "failed",
            ActionResult::RolledBack => "rolled_back",
            ActionResult::Skipped => "skipped",
        }
    }
}

impl From<&apply::ActionOutcome> for ActionResult {
    fn from(o: &apply::ActionOutcome) -> ActionResult {
        match o {
            apply::ActionOutcome::Succeeded => ActionResult::Succeeded,
            apply::ActionOutcome::Failed(_) => ActionResult::Failed,
            apply::ActionOutcome::RolledBack(_) => ActionResult::RolledBack,
            apply::ActionOutcome::Skipped(_) => ActionResult::Skipped,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionOutcome {
    pub kind: ActionKind,
    pub host: String,
    pub service: String,
    pub result: ActionResult,
    /// One line for people (why it failed or was skipped).
    pub message: Option<String>,
    /// What the host printed, secrets redacted (the caller keeps the tail).
    pub output: String,
    /// How long the action took.
    pub duration: std::time::Duration,
}

/// What one converge did.
#[derive(Debug, Default)]
pub struct Applied {
    pub outcomes: Vec<ActionOutcome>,
    /// Hosts locked by another controller or unreachable, as sentences.
    pub problems: Vec<String>,
    /// Those hosts with their error's metric label.
    pub host_errors: Vec<(String, &'static str)>,
}

/// Observes and converges hosts; keeps one transport per host across ticks.
/// Clones share the pool.
#[derive(Clone)]
pub struct Engine {
    pool: Arc<Pool>,
    opts: ApplyOptions,
}

impl Engine {
    pub fn new(config: &Config) -> Engine {
        let pool = Pool::new(PoolOptions {
            default_identity: config.ssh.identity.clone(),
            known_hosts: config.ssh.known_hosts.clone(),
            exec_timeout: Some(config.script_timeout),
            connect_timeout: config
                .ssh
                .connect_timeout
                .unwrap_or(PoolOptions::default().connect_timeout),
            ..PoolOptions::default()
        });
        let opts = ApplyOptions {
            hosts: None,
            prune: config.prune.enabled,
            force_prune: config.prune.force,
            max_prune_share: config.prune.max_share,
            parallelism: config.apply_parallelism,
            concurrency: config.concurrency,
            revision: None,
            controller: Some(config.ident.clone()),
            observe_timeout: config.host_timeout,
            lock_wait: config.lock_wait,
            host_deadline: config.host_deadline,
            ..ApplyOptions::default()
        };
        Engine {
            pool: Arc::new(pool),
            opts,
        }
    }

    /// Forget transports of hosts that left Git.
    pub fn retain_hosts(&self, desired: &Desired) {
        self.pool.retain(|h| desired.hosts.contains_key(h));
    }

    /// One probe of one host. The caller bounds it with the host timeout.
    pub async fn observe(&self, host: &Host, desired: &Desired) -> Observation {
        let t = match self.pool.get(host) {
            Ok(t) => t,
            Err(e) => return Observation::unreachable(e.metric_label(), e.to_string()),
        };
        let opts = observe::options_for(desired, &host.name);
        observe::observe_host_cached(
            t.as_ref(),
            host,
            &opts,
            Some(&self.pool.memory::<observe::SocketCache>()),
        )
        .await
    }

    /// One health check of `service` on `host` through its transport (an
    /// HTTP check opens a tunnel, not an exec), bounded by its timeout.
    pub async fn check_health(
        &self,
        host: &Host,
        service: &str,
        health: &Health,
    ) -> Result<(), HealthError> {
        let t = self.pool.get(host)?;
        crate::health::check_once(
            t.as_ref(),
            &host.root,
            service,
            &health.check,
            health.timeout,
        )
        .await
    }

    /// Converge the hosts that have actions in `plan`. `apply` locks each host,
    /// observes it again under the lock and plans from that, so what runs is
    /// what the host needs now, not what it needed a moment ago; `health`
    /// carries the loop's HTTP health verdicts into that observation (the
    /// probe does not make HTTP checks).
    pub async fn apply(
        &self,
        plan: &Plan,
        desired: &Desired,
        revision: &str,
        health: BTreeMap<(String, String), HealthVerdict>,
        gates: Arc<crate::gate::Gates>,
    ) -> Applied {
        let hosts: BTreeSet<String> = plan.actions.iter().map(|a| a.host.clone()).collect();
        let opts = ApplyOptions {
            hosts: Some(hosts.into_iter().collect()),
            revision: Some(revision.to_string()),
            health,
            gates: Some(gates),
            ..self.opts.clone()
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let log = tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                match serde_json::to_string(&ev) {
                    Ok(line) => tracing::info!(target: "tend::apply", "{line}"),
                    Err(_) => tracing::info!(target: "tend::apply", "{ev:?}"),
                }
            }
        });
        let report = apply::converge(desired, self.pool.as_ref(), &opts, Some(tx)).await;
        let _ = log.await;
        let mut problems: Vec<String> = report
            .locked
            .iter()
            .map(|(h, who)| format!("{h}: not converged, locked: {who}"))
            .collect();
        problems.extend(
            report
                .plan
                .unreachable
                .iter()
                .map(|(h, why)| format!("{h}: {why}")),
        );
        let outcomes = report
            .actions
            .iter()
            .map(|a| {
                let result = ActionResult::from(&a.outcome);
                ActionOutcome {
                    kind: a.action.kind,
                    host: a.action.host.clone(),
                    service: a.action.service.clone(),
                    result,
                    message: a.outcome.message().map(str::to_string),
                    output: a.output.join("\n"),
                    duration: a.duration,
                }
            })
            .collect();
        let host_errors = report
            .host_errors
            .iter()
            .map(|(h, c)| (h.clone(), *c))
            .collect();
        Applied {
            outcomes,
            problems,
            host_errors,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Address, HealthCheck};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn local() -> Host {
        Host {
            name: "here".into(),
            labels: Default::default(),
            address: Address::Local,
            root: "/nonexistent".into(),
            capacity: None,
            reserved: 0,
        }
    }

    fn http(port: u16, timeout: Duration) -> Health {
        Health {
            check: HealthCheck::Http {
                port,
                path: "/health".into(),
            },
            interval: Duration::from_secs(1),
            timeout,
            retries: 1,
        }
    }

    /// Answers every request with `status`, or never answers (`None`).
    async fn server(status: Option<&'static str>) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut s, _)) = l.accept().await {
                let mut b = [0u8; 1024];
                let _ = s.read(&mut b).await;
                match status {
                    Some(st) => {
                        let reply = format!("HTTP/1.1 {st}\r\nContent-Length: 0\r\n\r\n");
                        let _ = s.write_all(reply.as_bytes()).await;
                    }
                    None => held.push(s),
                }
            }
        });
        port
    }

    #[tokio::test]
    async fn an_http_check_is_a_tunnel_not_an_exec_and_a_hang_fails_at_its_timeout() {
        let e = Engine::new(&Config::default());
        let h = local();
        let ok = server(Some("200 OK")).await;
        let bad = server(Some("500 Oops")).await;
        let hang = server(None).await;
        let short = Duration::from_millis(300);
        assert!(e.check_health(&h, "web", &http(ok, short)).await.is_ok());
        assert!(matches!(
            e.check_health(&h, "web", &http(bad, short)).await,
            Err(HealthError::Status(500))
        ));
        assert!(matches!(
            e.check_health(&h, "web", &http(hang, short)).await,
            Err(HealthError::Timeout(_))
        ));
        let t = e.pool.get(&h).unwrap();
        assert_eq!((t.stats().tunnels(), t.stats().execs()), (3, 0));
    }
}
