//! What the last probe of each host learned about the listening sockets
//! services hold, so the next probe can check those few sockets instead of
//! walking the kernel's socket table (the bulk of a probe's host CPU).
//!
//! Only offered when every port the probe must judge (the desired services'
//! ports and `tcp` checks) was held by a tend service last time: a port that
//! was free or held by a stranger always gets the full walk.

use super::ProbeOptions;
use crate::model::{HeldSocket, Observation};
use crate::transport::pool::HostMemory;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

/// Shared by clones (probes of many hosts run as separate tasks).
#[derive(Debug, Clone, Default)]
pub struct SocketCache {
    hosts: Arc<Mutex<HashMap<String, Held>>>,
}

#[derive(Debug, Clone, Default)]
struct Held {
    sockets: Vec<HeldSocket>,
    /// Ports whose listener was a tend service.
    by_service: BTreeSet<u16>,
}

impl SocketCache {
    /// The sockets to name in `host`'s next probe (empty: walk the table).
    pub fn known(&self, host: &str, opts: &ProbeOptions) -> Vec<HeldSocket> {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let Some(h) = hosts.get(host) else {
            return Vec::new();
        };
        known_sockets(h, opts)
    }

    /// Remember what a probe saw; an unreachable host is forgotten.
    pub fn update(&self, host: &str, obs: &Observation) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        match obs {
            Observation::Reachable(st) => {
                let by_service = st
                    .listeners
                    .iter()
                    .filter(|(_, l)| l.service.is_some())
                    .map(|(p, _)| *p)
                    .collect();
                hosts.insert(
                    host.to_string(),
                    Held {
                        sockets: st.held.clone(),
                        by_service,
                    },
                );
            }
            Observation::Unreachable { .. } => {
                hosts.remove(host);
            }
        }
    }
}

/// Kept in the transport pool, so a host's sockets go with its connection.
impl HostMemory for SocketCache {
    fn forget(&self, host: &str) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts.remove(host);
    }
}

fn known_sockets(h: &Held, opts: &ProbeOptions) -> Vec<HeldSocket> {
    let watched: BTreeSet<u16> = opts
        .ports
        .iter()
        .copied()
        .chain(opts.tcp_checks.iter().map(|(_, p)| *p))
        .collect();
    let covered = |p: &u16| h.by_service.contains(p) && h.sockets.iter().any(|s| s.port == *p);
    if watched.is_empty() || !watched.iter().all(covered) {
        return Vec::new();
    }
    h.sockets
        .iter()
        .filter(|s| watched.contains(&s.port))
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HostState, Listener};

    fn sock(port: u16, pid: u32) -> HeldSocket {
        HeldSocket {
            port,
            inode: 1000 + u64::from(port),
            pid,
            fd: 3,
        }
    }

    fn state(listeners: &[(u16, Option<&str>)], held: Vec<HeldSocket>) -> Observation {
        let mut st = HostState {
            held,
            ..HostState::default()
        };
        for (p, svc) in listeners {
            st.listeners.insert(
                *p,
                Listener {
                    pid: Some(1),
                    service: svc.map(str::to_string),
                    comm: None,
                },
            );
        }
        Observation::Reachable(st)
    }

    fn opts(ports: &[u16]) -> ProbeOptions {
        ProbeOptions {
            ports: ports.to_vec(),
            ..ProbeOptions::default()
        }
    }

    #[test]
    fn sockets_every_watched_port_was_held_by_a_service_are_offered() {
        let c = SocketCache::default();
        c.update(
            "h",
            &state(
                &[(80, Some("web")), (22, None), (5432, Some("db"))],
                vec![sock(80, 10), sock(5432, 11)],
            ),
        );
        assert_eq!(
            c.known("h", &opts(&[80, 5432])),
            vec![sock(80, 10), sock(5432, 11)]
        );
        assert_eq!(c.known("h", &opts(&[80])), vec![sock(80, 10)]);
    }

    #[test]
    fn a_watched_port_that_was_free_or_a_strangers_means_the_full_walk() {
        let c = SocketCache::default();
        c.update(
            "h",
            &state(&[(80, Some("web")), (81, None)], vec![sock(80, 10)]),
        );
        assert!(c.known("h", &opts(&[80, 81])).is_empty(), "stranger on 81");
        assert!(c.known("h", &opts(&[80, 82])).is_empty(), "82 was free");
        let tcp = ProbeOptions {
            tcp_checks: vec![("x".into(), 9)],
            ..opts(&[80])
        };
        assert!(c.known("h", &tcp).is_empty(), "a tcp check on a free port");
    }

    #[test]
    fn an_unreachable_or_unknown_host_offers_nothing() {
        let c = SocketCache::default();
        assert!(c.known("h", &opts(&[80])).is_empty());
        c.update("h", &state(&[(80, Some("web"))], vec![sock(80, 10)]));
        c.update("h", &Observation::unreachable("other", "down"));
        assert!(c.known("h", &opts(&[80])).is_empty());
    }

    #[test]
    fn no_watched_ports_means_no_known_sockets() {
        let c = SocketCache::default();
        c.update("h", &state(&[(80, Some("web"))], vec![sock(80, 10)]));
        assert!(c.known("h", &opts(&[])).is_empty());
    }
}
