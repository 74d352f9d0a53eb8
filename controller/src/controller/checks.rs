//! HTTP health checks of running services, run by the loop between a host's
//! probe and the plan. The probe judges `command` and `tcp` checks itself;
//! an HTTP check needs a request, made through the host's transport
//! (`Transport::connect_tcp`, a tunnel, not an exec) with
//! [`crate::health::check_once`].
//!
//! A check runs when its `interval` has passed since the last one (a new
//! process is checked at once); in between, the cached verdict stands, so a
//! no-op tick costs nothing more than the probe. A service is reported
//! unhealthy only after `retries` consecutive failures, and healthy again
//! after one pass.

use crate::apply::HealthVerdict;
use crate::model::{Desired, Health, HealthCheck, HostState, ObservedService, Service};
use std::collections::{BTreeMap, BTreeSet};
use tokio::time::Instant;

/// HTTP checks run at once on one host.
pub const PER_HOST: usize = 8;

/// The process a check was about (pid, start time): a restart starts over.
pub type Process = (Option<u32>, Option<u64>);

fn process(o: &ObservedService) -> Process {
    (o.record.pid, o.record.start_time)
}

/// What the cache knows of one service.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub process: Process,
    /// When its last check started.
    pub checked: Instant,
    /// Consecutive failed checks.
    pub failures: u32,
    /// None until the first pass or the `retries`-th failure in a row.
    pub healthy: Option<bool>,
    pub last_error: Option<String>,
}

/// A check to run now.
#[derive(Debug, Clone, PartialEq)]
pub struct Due {
    pub service: String,
    pub process: Process,
    pub health: Health,
}

/// How one recorded check changed the verdict (for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    BecameHealthy,
    BecameUnhealthy,
}

/// Last check and verdict of every HTTP-checked service, by (host, service).
#[derive(Debug, Default)]
pub struct Cache {
    entries: BTreeMap<(String, String), Entry>,
}

/// The HTTP check that applies to a running service: the desired one, when
/// the recorded release is the desired one (what the apply stage's gate
/// checks too).
fn http_check<'a>(s: &'a Service, o: &ObservedService) -> Option<&'a Health> {
    let h = s.health.as_ref()?;
    let http = matches!(h.check, HealthCheck::Http { .. });
    let current = o.record.version == s.version && o.record.config_hash == s.config_hash();
    (http && current && o.running).then_some(h)
}

/// `(service, observed, health)` of `host`'s running services with an HTTP check.
fn candidates<'a>(
    desired: &'a Desired,
    host: &'a str,
    st: &'a HostState,
) -> impl Iterator<Item = (&'a Service, &'a ObservedService, &'a Health)> + 'a {
    desired.services_on(host).filter_map(move |s| {
        let o = st.services.get(&s.name)?;
        http_check(s, o).map(|h| (s, o, h))
    })
}

impl Cache {
    pub fn get(&self, host: &str, service: &str) -> Option<&Entry> {
        self.entries.get(&(host.to_string(), service.to_string()))
    }

    /// The checks due on `host` at `now`, from its probe. Forgets services
    /// of `host` that no longer run with an HTTP check.
    pub fn due(&mut self, desired: &Desired, host: &str, st: &HostState, now: Instant) -> Vec<Due> {
        let mut keep = BTreeSet::new();
        let mut due = Vec::new();
        for (s, o, h) in candidates(desired, host, st) {
            keep.insert(s.name.clone());
            let fresh = match self.get(host, &s.name) {
                Some(e) => {
                    e.process == process(o) && now.saturating_duration_since(e.checked) < h.interval
                }
                None => false,
            };
            if !fresh {
                due.push(Due {
                    service: s.name.clone(),
                    process: process(o),
                    health: h.clone(),
                });
            }
        }
        self.entries
            .retain(|(h, s), _| h != host || keep.contains(s));
        due
    }

    /// Count the result of a check that started at `at`.
    pub fn record(
        &mut self,
        host: &str,
        d: &Due,
        result: Result<(), String>,
        at: Instant,
    ) -> Change {
        let e = self
            .entries
            .entry((host.to_string(), d.service.clone()))
            .or_insert_with(|| Entry {
                process: d.process,
                checked: at,
                failures: 0,
                healthy: None,
                last_error: None,
            });
        if e.process != d.process {
            *e = Entry {
                process: d.process,
                checked: at,
                failures: 0,
                healthy: None,
                last_error: None,
            };
        }
        let before = e.healthy;
        e.checked = at;
        match result {
            Ok(()) => {
                e.failures = 0;
                e.healthy = Some(true);
                e.last_error = None;
            }
            Err(why) => {
                e.failures = e.failures.saturating_add(1);
                if e.failures >= d.health.retries.max(1) {
                    e.healthy = Some(false);
                }
                e.last_error = Some(why);
            }
        }
        match (before, e.healthy) {
            (Some(false), Some(true)) => Change::BecameHealthy,
            (b, Some(false)) if b != Some(false) => Change::BecameUnhealthy,
            _ => Change::None,
        }
    }

    /// Set `healthy` on `host`'s HTTP-checked services from their verdicts
    /// (where the probe left it unset and the process is the one checked).
    pub fn apply(&self, desired: &Desired, host: &str, st: &mut HostState) {
        let verdicts: Vec<(String, bool)> = candidates(desired, host, st)
            .filter_map(|(s, o, _)| {
                let e = self.get(host, &s.name)?;
                let v = e.healthy.filter(|_| e.process == process(o))?;
                Some((s.name.clone(), v))
            })
            .collect();
        for (name, v) in verdicts {
            if let Some(o) = st.services.get_mut(&name) {
                if o.healthy.is_none() {
                    o.healthy = Some(v);
                }
            }
        }
    }

    /// The verdicts, for the apply stage's own observation under the lock.
    pub fn verdicts(&self) -> BTreeMap<(String, String), HealthVerdict> {
        self.entries
            .iter()
            .filter_map(|(k, e)| {
                e.healthy.map(|healthy| {
                    (
                        k.clone(),
                        HealthVerdict {
                            pid: e.process.0,
                            start_time: e.process.1,
                            healthy,
                        },
                    )
                })
            })
            .collect()
    }

    /// Forget hosts that left the shard.
    pub fn retain_hosts(&mut self, desired: &Desired) {
        self.entries
            .retain(|(h, _), _| desired.hosts.contains_key(h));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Address, CgroupMode, Delivery, Host, HostFacts};
    use crate::record::{Record, RuntimeKind};
    use std::time::Duration;

    const HOST: &str = "h";
    const INTERVAL: Duration = Duration::from_secs(10);

    fn web(retries: u32) -> Service {
        Service {
            name: "web".into(),
            labels: BTreeMap::new(),
            hosts: vec![HOST.into()],
            rollout: Default::default(),
            runtime: RuntimeKind::Process,
            version: "1".into(),
            delivery: Delivery::None,
            install: vec![],
            command: vec!["app".into()],
            env: BTreeMap::new(),
            ports: vec![8080],
            memory: None,
            health: Some(Health {
                check: HealthCheck::Http {
                    port: 8080,
                    path: "/health".into(),
                },
                interval: INTERVAL,
                timeout: Duration::from_secs(2),
                retries,
            }),
            depends_on: vec![],
            suspend: false,
        }
    }

    fn fleet(s: Service) -> Desired {
        let mut d = Desired::default();
        d.hosts.insert(
            HOST.into(),
            Host {
                name: HOST.into(),
                labels: BTreeMap::new(),
                address: Address::Local,
                root: "/tmp/x".into(),
                capacity: None,
                reserved: 0,
            },
        );
        d.services.insert(s.name.clone(), s);
        d
    }

    /// The probe's view: `web` running as `pid`, health not judged.
    fn probed(d: &Desired, pid: u32) -> HostState {
        let s = &d.services["web"];
        let mut st = HostState {
            facts: HostFacts {
                cgroup: CgroupMode::None,
                ..HostFacts::default()
            },
            ..HostState::default()
        };
        st.services.insert(
            "web".into(),
            ObservedService {
                record: Record {
                    name: "web".into(),
                    version: s.version.clone(),
                    config_hash: s.config_hash(),
                    pid: Some(pid),
                    start_time: Some(u64::from(pid) * 7),
                    ..Record::default()
                },
                running: true,
                memory_usage: None,
                memory_limit: None,
                oom_killed: false,
                oom_kills: 0,
                healthy: None,
            },
        );
        st
    }

    /// One tick: what is due now, each due check answered with `result`,
    /// and the verdict the plan would see.
    fn tick(
        c: &mut Cache,
        d: &Desired,
        pid: u32,
        result: Result<(), &str>,
    ) -> (usize, Vec<Change>, Option<bool>) {
        let mut st = probed(d, pid);
        let now = Instant::now();
        let due = c.due(d, HOST, &st, now);
        let changes = due
            .iter()
            .map(|x| c.record(HOST, x, result.map_err(str::to_string), now))
            .collect();
        c.apply(d, HOST, &mut st);
        (due.len(), changes, st.services["web"].healthy)
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_runs_once_per_interval_and_the_verdict_stands_in_between() {
        let d = fleet(web(3));
        let mut c = Cache::default();
        assert_eq!(
            tick(&mut c, &d, 10, Ok(())),
            (1, vec![Change::None], Some(true))
        );
        // Not due: the cached verdict, even though the service now fails.
        assert_eq!(tick(&mut c, &d, 10, Err("500")), (0, vec![], Some(true)));
        tokio::time::advance(INTERVAL - Duration::from_millis(1)).await;
        assert_eq!(tick(&mut c, &d, 10, Err("500")), (0, vec![], Some(true)));
        tokio::time::advance(Duration::from_millis(1)).await;
        // Due again: one failure of three is not yet unhealthy.
        assert_eq!(
            tick(&mut c, &d, 10, Err("500")),
            (1, vec![Change::None], Some(true))
        );
        assert_eq!(c.get(HOST, "web").unwrap().failures, 1);
        assert!(c.verdicts()[&(HOST.to_string(), "web".to_string())].healthy);
    }

    #[tokio::test(start_paused = true)]
    async fn unhealthy_after_retries_consecutive_failures_and_healthy_after_one_pass() {
        let d = fleet(web(3));
        let mut c = Cache::default();
        tick(&mut c, &d, 10, Ok(()));
        for n in 1..=2 {
            tokio::time::advance(INTERVAL).await;
            assert_eq!(
                tick(&mut c, &d, 10, Err("timed out")).2,
                Some(true),
                "failure {n}"
            );
        }
        // A pass in between starts the count over.
        tokio::time::advance(INTERVAL).await;
        assert_eq!(tick(&mut c, &d, 10, Ok(())).2, Some(true));
        for _ in 1..=2 {
            tokio::time::advance(INTERVAL).await;
            assert_eq!(tick(&mut c, &d, 10, Err("500")).2, Some(true));
        }
        tokio::time::advance(INTERVAL).await;
        assert_eq!(
            tick(&mut c, &d, 10, Err("500")),
            (1, vec![Change::BecameUnhealthy], Some(false))
        );
        let e = c.get(HOST, "web").unwrap();
        assert_eq!((e.failures, e.last_error.as_deref()), (3, Some("500")));
        let v = c.verdicts()[&(HOST.to_string(), "web".to_string())];
        assert_eq!(
            (v.pid, v.start_time, v.healthy),
            (Some(10), Some(70), false)
        );
        // Still failing: no new change, still unhealthy; between checks too.
        tokio::time::advance(INTERVAL).await;
        assert_eq!(
            tick(&mut c, &d, 10, Err("500")),
            (1, vec![Change::None], Some(false))
        );
        assert_eq!(tick(&mut c, &d, 10, Ok(())), (0, vec![], Some(false)));
        tokio::time::advance(INTERVAL).await;
        assert_eq!(
            tick(&mut c, &d, 10, Ok(())),
            (1, vec![Change::BecameHealthy], Some(true))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_process_is_checked_at_once_and_counts_from_zero() {
        let d = fleet(web(2));
        let mut c = Cache::default();
        // A first failure leaves a never-passed service unjudged (absent).
        assert_eq!(
            tick(&mut c, &d, 10, Err("refused")),
            (1, vec![Change::None], None)
        );
        tokio::time::advance(INTERVAL).await;
        assert_eq!(tick(&mut c, &d, 10, Err("refused")).2, Some(false));
        // Restarted: the old verdict is not about this process.
        assert_eq!(
            tick(&mut c, &d, 11, Err("refused")),
            (1, vec![Change::None], None)
        );
        assert_eq!(c.get(HOST, "web").unwrap().failures, 1);
        assert!(c.verdicts().is_empty());
        assert_eq!(
            tick(&mut c, &d, 12, Ok(())),
            (1, vec![Change::None], Some(true))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn only_running_current_releases_with_an_http_check_are_checked() {
        let d = fleet(web(1));
        let mut c = Cache::default();
        tick(&mut c, &d, 10, Err("500"));
        assert!(c.get(HOST, "web").is_some());
        // Stopped: not checked, and forgotten.
        let mut st = probed(&d, 10);
        st.services.get_mut("web").unwrap().running = false;
        tokio::time::advance(INTERVAL).await;
        assert!(c.due(&d, HOST, &st, Instant::now()).is_empty());
        assert!(c.get(HOST, "web").is_none());
        // An older release: its health check is not the desired one.
        let mut st = probed(&d, 10);
        st.services.get_mut("web").unwrap().record.version = "0".into();
        assert!(c.due(&d, HOST, &st, Instant::now()).is_empty());
        // A tcp check is the probe's.
        let mut tcp = web(1);
        tcp.health.as_mut().unwrap().check = HealthCheck::Tcp { port: 8080 };
        let d = fleet(tcp);
        assert!(c.due(&d, HOST, &probed(&d, 10), Instant::now()).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_verdict_the_probe_made_is_kept() {
        let d = fleet(web(1));
        let mut c = Cache::default();
        let mut st = probed(&d, 10);
        let now = Instant::now();
        for x in c.due(&d, HOST, &st, now) {
            c.record(HOST, &x, Err("500".into()), now);
        }
        st.services.get_mut("web").unwrap().healthy = Some(true);
        c.apply(&d, HOST, &mut st);
        assert_eq!(st.services["web"].healthy, Some(true));
        let mut other = d.clone();
        other.hosts.clear();
        c.retain_hosts(&other);
        assert!(c.get(HOST, "web").is_none());
    }
}
