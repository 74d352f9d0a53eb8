//! One transport per host, kept across reconciles.

use super::local::LocalTransport;
use super::ssh::{SshOptions, SshTransport};
use super::{Transport, TransportError, TransportStats};
use crate::model::{Address, Host};
use std::any::Any;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct PoolOptions {
    pub connect_timeout: Duration,
    /// Limit for one script (None: none).
    pub exec_timeout: Option<Duration>,
    pub keepalive: Option<Duration>,
    /// Private key for hosts that name none.
    pub default_identity: Option<PathBuf>,
    /// known_hosts for hosts that pin no key and name no file.
    pub known_hosts: Option<PathBuf>,
    /// Concurrent channels per connection (keep below sshd's MaxSessions, 10).
    pub max_channels: usize,
}

impl Default for PoolOptions {
    fn default() -> Self {
        let d = SshOptions::default();
        PoolOptions {
            connect_timeout: d.connect_timeout,
            exec_timeout: d.exec_timeout,
            keepalive: d.keepalive,
            default_identity: None,
            known_hosts: None,
            max_channels: d.max_channels,
        }
    }
}

/// What a higher layer remembers per host beside the pool's transports
/// (observe: the sockets each probe saw). Opaque here: the pool only tells
/// it to forget a host whose transport is replaced or dropped, since what it
/// holds was learned over that connection.
pub trait HostMemory: Any + Send + Sync {
    fn forget(&self, host: &str);
}

struct Entry {
    address: Address,
    transport: Arc<dyn Transport>,
}

pub struct Pool {
    opts: PoolOptions,
    entries: Mutex<HashMap<String, Entry>>,
    /// Counters of transports replaced or dropped, so totals never go down.
    retired: TransportStats,
    /// Per-host memories of higher layers, one of each type, made on first
    /// use: they live as long as the connections do.
    memories: Mutex<Vec<Arc<dyn HostMemory>>>,
}

impl Pool {
    pub fn new(opts: PoolOptions) -> Self {
        Pool {
            opts,
            entries: Mutex::new(HashMap::new()),
            retired: TransportStats::default(),
            memories: Mutex::new(Vec::new()),
        }
    }

    /// The pool's `T` (one per pool, made on first use).
    pub fn memory<T: HostMemory + Default>(&self) -> Arc<T> {
        let mut all = self.memories.lock().unwrap_or_else(|p| p.into_inner());
        for m in all.iter() {
            let any: Arc<dyn Any + Send + Sync> = m.clone();
            if let Ok(t) = any.downcast::<T>() {
                return t;
            }
        }
        let t = Arc::new(T::default());
        all.push(t.clone());
        t
    }

    fn forget(&self, host: &str) {
        let all = self.memories.lock().unwrap_or_else(|p| p.into_inner());
        for m in all.iter() {
            m.forget(host);
        }
    }

    pub fn options(&self) -> &PoolOptions {
        &self.opts
    }

    /// The host's transport (connected lazily, on first use). A host whose
    /// address changed gets a new one.
    pub fn get(&self, host: &Host) -> Result<Arc<dyn Transport>, TransportError> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = entries.get(&host.name) {
            if e.address == host.address {
                return Ok(e.transport.clone());
            }
        }
        let transport: Arc<dyn Transport> = match &host.address {
            Address::Local => Arc::new(LocalTransport::with_exec_timeout(self.opts.exec_timeout)),
            Address::Ssh(target) => Arc::new(SshTransport::new(
                &host.name,
                target.clone(),
                self.ssh_options(),
            )?),
        };
        if let Some(old) = entries.insert(
            host.name.clone(),
            Entry {
                address: host.address.clone(),
                transport: transport.clone(),
            },
        ) {
            self.retire(old.transport.stats());
            self.forget(&host.name);
        }
        Ok(transport)
    }

    /// Drop transports of hosts for which `keep` is false (hosts gone from Git).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<String> = entries.keys().filter(|k| !keep(k)).cloned().collect();
        for k in gone {
            self.forget(&k);
            if let Some(e) = entries.remove(&k) {
                self.retire(e.transport.stats());
            }
        }
    }

    /// A snapshot of one host's counters.
    pub fn stats(&self, host: &str) -> Option<TransportStats> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(host).map(|e| snapshot(&[e.transport.stats()]))
    }

    /// Counters summed over every host, including replaced transports.
    pub fn total_stats(&self) -> TransportStats {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<&TransportStats> = entries.values().map(|e| e.transport.stats()).collect();
        all.push(&self.retired);
        snapshot(&all)
    }

    fn retire(&self, s: &TransportStats) {
        self.retired
            .connections
            .fetch_add(s.connections(), Ordering::Relaxed);
        self.retired.execs.fetch_add(s.execs(), Ordering::Relaxed);
        self.retired
            .tunnels
            .fetch_add(s.tunnels(), Ordering::Relaxed);
    }

    fn ssh_options(&self) -> SshOptions {
        SshOptions {
            connect_timeout: self.opts.connect_timeout,
            exec_timeout: self.opts.exec_timeout,
            keepalive: self.opts.keepalive,
            max_channels: self.opts.max_channels,
            default_identity: self.opts.default_identity.clone(),
            known_hosts: self.opts.known_hosts.clone(),
        }
    }
}

fn snapshot(all: &[&TransportStats]) -> TransportStats {
    let out = TransportStats::default();
    for s in all {
        out.connections
            .fetch_add(s.connections(), Ordering::Relaxed);
        out.execs.fetch_add(s.execs(), Ordering::Relaxed);
        out.tunnels.fetch_add(s.tunnels(), Ordering::Relaxed);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SshTarget;

    fn host(name: &str, address: Address) -> Host {
        Host {
            name: name.into(),
            labels: Default::default(),
            address,
            root: crate::model::DEFAULT_ROOT.into(),
            capacity: None,
            reserved: 0,
        }
    }

    fn ssh(addr: &str, pins: Vec<String>) -> Address {
        Address::Ssh(SshTarget {
            address: addr.into(),
            port: 22,
            user: "root".into(),
            identity: None,
            host_keys: pins,
            known_hosts: None,
        })
    }

    #[tokio::test]
    async fn the_same_host_gets_the_same_transport_and_totals_add_up() {
        let pool = Pool::new(PoolOptions::default());
        let a = pool.get(&host("a", Address::Local)).unwrap();
        let b = pool.get(&host("a", Address::Local)).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        a.exec("true", b"").await.unwrap();
        pool.get(&host("b", Address::Local))
            .unwrap()
            .exec("true", b"")
            .await
            .unwrap();
        assert_eq!(pool.total_stats().execs(), 2);
        assert_eq!(pool.stats("a").unwrap().execs(), 1);
    }

    #[tokio::test]
    async fn a_changed_address_replaces_the_transport_without_losing_counts() {
        let pool = Pool::new(PoolOptions::default());
        let a = pool.get(&host("a", Address::Local)).unwrap();
        a.exec("true", b"").await.unwrap();
        let pin =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGnst4mKePMqZT/3w8l/8WAIgdmrLutHhTtjJNp63fL6"
                .to_string();
        let b = pool.get(&host("a", ssh("127.0.0.1", vec![pin]))).unwrap();
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(pool.total_stats().execs(), 1);
        assert_eq!(pool.stats("a").unwrap().execs(), 0);
    }

    /// Records the hosts it is told to forget.
    #[derive(Default)]
    struct Forgot(Mutex<Vec<String>>);

    impl HostMemory for Forgot {
        fn forget(&self, host: &str) {
            self.0.lock().unwrap().push(host.to_string());
        }
    }

    #[test]
    fn a_memory_is_one_per_pool_and_forgets_hosts_whose_transport_goes() {
        let pool = Pool::new(PoolOptions::default());
        let forgot = pool.memory::<Forgot>();
        assert!(Arc::ptr_eq(&forgot, &pool.memory::<Forgot>()));
        pool.get(&host("a", Address::Local)).unwrap();
        pool.get(&host("b", Address::Local)).unwrap();
        pool.get(&host("a", Address::Local)).unwrap();
        assert!(
            forgot.0.lock().unwrap().is_empty(),
            "same address, same transport"
        );
        let pin =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGnst4mKePMqZT/3w8l/8WAIgdmrLutHhTtjJNp63fL6"
                .to_string();
        pool.get(&host("a", ssh("127.0.0.1", vec![pin]))).unwrap();
        pool.retain(|h| h != "b");
        assert_eq!(*forgot.0.lock().unwrap(), ["a", "b"]);
    }

    #[test]
    fn an_ssh_host_without_pins_or_known_hosts_is_refused_up_front() {
        let pool = Pool::new(PoolOptions::default());
        let e = pool
            .get(&host("a", ssh("10.77.0.2", vec![])))
            .err()
            .unwrap();
        assert_eq!(e.metric_label(), "host_key");
        assert!(e.to_string().contains("never trusts on first use"), "{e}");
    }
}
