//! SSH via russh: one kept-open, authenticated connection per host.
//!
//! Each exec is one session channel running a fixed reader (`sh -c 's=$(head
//! -c N …); eval "$s"'`) that takes the script from stdin ahead of the
//! caller's stdin, so no script (and no env value in it) is ever in an argv
//! that `ps` shows; stdin is written then EOF'd while output is read, and the channel is always drained
//! to its end (an undrained channel stalls the whole connection). Channels per
//! connection are bounded below OpenSSH's MaxSessions (10). A dropped
//! connection is reopened once for a fresh exec; a script that may have
//! started is never re-run.

use super::conn::{Conn, Dial};
use super::hostkey::Trust;
use super::kept_shell::{KeptShell, ShellFailure};
use super::{ExecOutput, Stream, Transport, TransportError, TransportStats};
use crate::model::SshTarget;
use async_trait::async_trait;
use russh::client::Msg;
use russh::{Channel, ChannelMsg};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, OwnedSemaphorePermit};

/// How one SSH transport behaves; filled in by the pool.
#[derive(Debug, Clone)]
pub struct SshOptions {
    pub connect_timeout: Duration,
    /// Limit for one script, from channel open to exit (None: no limit).
    pub exec_timeout: Option<Duration>,
    /// Keepalive interval; 3 unanswered keepalives close the connection.
    pub keepalive: Option<Duration>,
    /// Concurrent session channels per connection.
    pub max_channels: usize,
    /// Key used when the target names none.
    pub default_identity: Option<PathBuf>,
    /// known_hosts used when the target pins no key and names no file.
    pub known_hosts: Option<PathBuf>,
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions {
            connect_timeout: Duration::from_secs(10),
            exec_timeout: Some(Duration::from_secs(600)),
            keepalive: Some(Duration::from_secs(15)),
            max_channels: 8,
            default_identity: None,
            known_hosts: None,
        }
    }
}

/// How often a refused channel open is retried on a live connection.
const MAX_REFUSALS: u32 = 50;

pub struct SshTransport {
    /// The Host's name, used in every error.
    name: String,
    target: SshTarget,
    trust: Trust,
    identity: Option<PathBuf>,
    opts: SshOptions,
    conn: Mutex<Option<Arc<Conn>>>,
    /// The kept-open shell for queries; taken out while one runs.
    shell: Mutex<Option<KeptShell>>,
    last_failure: StdMutex<Option<(Instant, TransportError)>>,
    stats: TransportStats,
}

impl std::fmt::Debug for SshTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshTransport")
            .field("name", &self.name)
            .field("address", &self.target.address)
            .field("port", &self.target.port)
            .finish_non_exhaustive()
    }
}

/// Which host keys to trust for `target`: its pins, else its known_hosts,
/// else the default one. Nothing at all is an error: never trust on first use.
pub fn trust_for(
    name: &str,
    target: &SshTarget,
    default_known_hosts: Option<&PathBuf>,
) -> Result<Trust, TransportError> {
    if !target.host_keys.is_empty() {
        return Ok(Trust::Pinned(target.host_keys.clone()));
    }
    match target.known_hosts.as_ref().or(default_known_hosts) {
        Some(p) => Ok(Trust::KnownHosts(p.clone())),
        None => Err(TransportError::HostKey {
            host: name.to_string(),
            why: format!(
                "{}:{} has no pinned host key and no known_hosts file is configured (tend never trusts on first use)",
                target.address, target.port
            ),
        }),
    }
}

impl SshTransport {
    /// Not connected yet: the first exec connects.
    pub fn new(name: &str, target: SshTarget, opts: SshOptions) -> Result<Self, TransportError> {
        let trust = trust_for(name, &target, opts.known_hosts.as_ref())?;
        let identity = target
            .identity
            .clone()
            .or_else(|| opts.default_identity.clone());
        Ok(SshTransport {
            name: name.to_string(),
            target,
            trust,
            identity,
            opts,
            conn: Mutex::new(None),
            shell: Mutex::new(None),
            last_failure: StdMutex::new(None),
            stats: TransportStats::default(),
        })
    }

    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    /// True while a connection is open (for tests and status).
    pub async fn is_connected(&self) -> bool {
        self.conn
            .lock()
            .await
            .as_ref()
            .is_some_and(|c| !c.handle.is_closed())
    }

    fn timeout_err(&self, d: Duration) -> TransportError {
        TransportError::Timeout {
            host: self.name.clone(),
            secs: d.as_secs().max(1),
        }
    }

    /// The open connection, or a new one (one at a time: callers wait on the lock).
    /// Callers queued behind a connect that failed get its error at once
    /// instead of each waiting out their own timeout.
    async fn connection(&self) -> Result<Arc<Conn>, TransportError> {
        let asked = Instant::now();
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            if !c.handle.is_closed() {
                return Ok(c.clone());
            }
        }
        *guard = None;
        if let Some((at, e)) = self
            .last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            if *at >= asked {
                return Err(e.clone());
            }
        }
        let t = self.opts.connect_timeout;
        let res = match tokio::time::timeout(t, Conn::open(self.dial())).await {
            Ok(r) => r,
            Err(_) => Err(self.timeout_err(t)),
        };
        let conn = match res {
            Ok(c) => c,
            Err(e) => {
                *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now(), e.clone()));
                return Err(e);
            }
        };
        let conn = Arc::new(conn);
        let n = self.stats.connections.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(host = %self.name, address = %self.target.address, reconnect = n > 0, "ssh connected");
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// Forget `conn` if it is still the current one (it proved dead).
    async fn invalidate(&self, conn: &Arc<Conn>) {
        let mut guard = self.conn.lock().await;
        if guard.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *guard = None;
        }
    }

    fn dial(&self) -> Dial<'_> {
        Dial {
            name: &self.name,
            target: &self.target,
            trust: &self.trust,
            identity: self.identity.as_ref(),
            keepalive: self.opts.keepalive,
            max_channels: self.opts.max_channels,
        }
    }

    /// A session channel and its permit; reconnects once when the kept
    /// connection turns out dead (nothing has run yet, so that is safe).
    async fn open_session(
        &self,
    ) -> Result<(Arc<Conn>, OwnedSemaphorePermit, Channel<Msg>), TransportError> {
        let mut reconnected = false;
        let mut refusals: u32 = 0;
        loop {
            let conn = self.connection().await?;
            let permit =
                conn.channels
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|e| TransportError::Lost {
                        host: self.name.clone(),
                        why: e.to_string(),
                    })?;
            let t = self.opts.connect_timeout;
            match tokio::time::timeout(t, conn.handle.channel_open_session()).await {
                Ok(Ok(ch)) => return Ok((conn, permit, ch)),
                Ok(Err(russh::Error::ChannelOpenFailure(f))) if !conn.handle.is_closed() => {
                    // sshd said no (MaxSessions: a session we just closed may not be
                    // released yet). The connection is fine: back off, ask again.
                    refusals += 1;
                    if refusals > MAX_REFUSALS {
                        return Err(TransportError::Io {
                            host: self.name.clone(),
                            why: format!("the server keeps refusing session channels: {f:?}"),
                        });
                    }
                    drop(permit);
                    tokio::time::sleep(Duration::from_millis(10 * u64::from(refusals.min(10))))
                        .await;
                }
                Ok(Err(e)) => {
                    self.invalidate(&conn).await;
                    if reconnected {
                        return Err(TransportError::Lost {
                            host: self.name.clone(),
                            why: format!("opening a channel: {e}"),
                        });
                    }
                    reconnected = true;
                }
                Err(_) => {
                    // A silent peer (link down): do not wait a second time.
                    self.invalidate(&conn).await;
                    return Err(self.timeout_err(t));
                }
            }
        }
    }

    async fn run(&self, script: &str, stdin: &[u8]) -> Result<ExecOutput, TransportError> {
        // The script travels on stdin, never in the exec command: the
        // command is in sshd's and sh's /proc/PID/cmdline (mode 0444) for as
        // long as the script runs, and scripts carry env values.
        let reader = crate::shell::quote(&super::stdin_reader(script.len()))
            .map_err(|e| self.io(e.to_string()))?;
        let command = format!("sh -c {reader}");
        let prefix = script.as_bytes();
        let (conn, _permit, channel) = self.open_session().await?;
        let lost = |why: String| TransportError::Lost {
            host: self.name.clone(),
            why,
        };
        if let Err(e) = channel.exec(true, command.into_bytes()).await {
            self.invalidate(&conn).await;
            return Err(lost(format!("sending the script: {e}")));
        }
        let (mut rx, tx) = channel.split();
        let write = async {
            // A script that exits without reading stdin closes it: not an error.
            let mut ok = true;
            if !prefix.is_empty() {
                ok = tx.data(prefix).await.is_ok();
            }
            if ok && !stdin.is_empty() {
                let _ = tx.data(stdin).await;
            }
            let _ = tx.eof().await;
        };
        let read = async {
            let mut out = ExecOutput::default();
            let mut ended = false;
            let mut refused = false;
            while let Some(msg) = rx.wait().await {
                match msg {
                    ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
                    ChannelMsg::ExtendedData { data, ext: 1 } => {
                        out.stderr.extend_from_slice(&data)
                    }
                    ChannelMsg::ExitStatus { exit_status } => {
                        out.status = Some(exit_status);
                        ended = true;
                    }
                    ChannelMsg::ExitSignal { .. } => ended = true,
                    ChannelMsg::Failure => refused = true,
                    _ => {}
                }
            }
            (out, ended, refused)
        };
        // The reader decides when we are done: a writer still waiting for
        // window on a dead connection would otherwise hang forever.
        tokio::pin!(write, read);
        let mut written = false;
        let (out, ended, refused) = loop {
            tokio::select! {
                () = &mut write, if !written => written = true,
                r = &mut read => break r,
            }
        };
        if refused {
            return Err(TransportError::Io {
                host: self.name.clone(),
                why: "the server refused to run the command".into(),
            });
        }
        if !ended {
            if conn.handle.is_closed() {
                self.invalidate(&conn).await;
            }
            return Err(lost(
                "the channel ended without an exit status (the script may have run)".into(),
            ));
        }
        Ok(out)
    }

    /// A query on the kept shell: reused while its connection lives, opened
    /// anew once when it proves dead (a query is read-only, so running it
    /// again is safe). A second query at the same time takes an exec channel.
    async fn run_query(
        &self,
        prelude: Option<&str>,
        script: &str,
    ) -> Result<ExecOutput, TransportError> {
        let Ok(mut slot) = self.shell.try_lock() else {
            return match prelude {
                Some(p) => self.run(&format!("{p}\n{script}"), b"").await,
                None => self.run(script, b"").await,
            };
        };
        let mut fresh_tried = false;
        loop {
            let conn = self.connection().await?;
            let kept = slot
                .take()
                .filter(|k| Arc::ptr_eq(&k.conn, &conn) && !conn.handle.is_closed());
            let fresh = kept.is_none();
            let shell = match kept {
                Some(k) => k,
                None => {
                    fresh_tried = true;
                    let (conn, permit, channel) = self.open_session().await?;
                    KeptShell::open(conn, permit, channel)
                        .await
                        .map_err(|ShellFailure::Dead(why)| self.lost(why))?
                }
            };
            // Dropped mid-query (timeout, cancel): the channel is closed, not reused.
            let mut guard = Abandon(Some(shell));
            let Some(shell) = guard.0.as_mut() else {
                return Err(self.lost("the kept shell vanished".into()));
            };
            let res = match prelude {
                Some(p) => shell.query_prepared(p, script).await,
                None => shell.query(script).await,
            };
            match res {
                Ok(out) => {
                    *slot = guard.0.take();
                    return Ok(out);
                }
                Err(ShellFailure::Dead(why)) => {
                    if fresh || fresh_tried {
                        return Err(self.lost(why));
                    }
                    tracing::debug!(host = %self.name, %why, "kept shell ended; opening another");
                }
            }
        }
    }

    async fn bounded_query(
        &self,
        prelude: Option<&str>,
        script: &str,
    ) -> Result<ExecOutput, TransportError> {
        self.stats.execs.fetch_add(1, Ordering::Relaxed);
        match self.opts.exec_timeout {
            None => self.run_query(prelude, script).await,
            Some(t) => tokio::time::timeout(t, self.run_query(prelude, script))
                .await
                .map_err(|_| self.timeout_err(t))?,
        }
    }

    fn lost(&self, why: String) -> TransportError {
        TransportError::Lost {
            host: self.name.clone(),
            why,
        }
    }

    fn io(&self, why: String) -> TransportError {
        TransportError::Io {
            host: self.name.clone(),
            why,
        }
    }
}

#[async_trait]
impl Transport for SshTransport {
    async fn exec(&self, script: &str, stdin: &[u8]) -> Result<ExecOutput, TransportError> {
        self.stats.execs.fetch_add(1, Ordering::Relaxed);
        match self.opts.exec_timeout {
            None => self.run(script, stdin).await,
            Some(t) => tokio::time::timeout(t, self.run(script, stdin))
                .await
                .map_err(|_| self.timeout_err(t))?,
        }
    }

    async fn query(&self, script: &str) -> Result<ExecOutput, TransportError> {
        self.bounded_query(None, script).await
    }

    async fn query_prepared(
        &self,
        prelude: &str,
        script: &str,
    ) -> Result<ExecOutput, TransportError> {
        self.bounded_query(Some(prelude), script).await
    }

    async fn connect_tcp(&self, port: u16) -> Result<Box<dyn Stream>, TransportError> {
        let mut last = None;
        for _attempt in 0..2 {
            let conn = self.connection().await?;
            let t = self.opts.connect_timeout;
            let open =
                conn.handle
                    .channel_open_direct_tcpip("127.0.0.1", u32::from(port), "127.0.0.1", 0);
            match tokio::time::timeout(t, open).await {
                Ok(Ok(ch)) => {
                    self.stats.tunnels.fetch_add(1, Ordering::Relaxed);
                    let (ours, theirs) = tokio::io::duplex(TUNNEL_BUFFER);
                    tokio::spawn(pump_tunnel(ch, theirs, t));
                    return Ok(Box::new(ours));
                }
                Ok(Err(russh::Error::ChannelOpenFailure(f))) => {
                    return Err(TransportError::Connect {
                        host: self.name.clone(),
                        why: format!("127.0.0.1:{port} on the host: {f:?}"),
                    })
                }
                Ok(Err(e)) => {
                    self.invalidate(&conn).await;
                    last = Some(TransportError::Lost {
                        host: self.name.clone(),
                        why: format!("opening a tunnel: {e}"),
                    });
                }
                Err(_) => {
                    self.invalidate(&conn).await;
                    return Err(self.timeout_err(t));
                }
            }
        }
        Err(last.unwrap_or_else(|| TransportError::Lost {
            host: self.name.clone(),
            why: "no tunnel".into(),
        }))
    }

    fn stats(&self) -> &TransportStats {
        &self.stats
    }
}

/// Holds a kept shell while a query runs; closes it if the query never ends.
struct Abandon(Option<KeptShell>);

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(mut k) = self.0.take() {
            k.close_in_background();
        }
    }
}

/// Bytes buffered between a tunnel's channel and its user, each way.
const TUNNEL_BUFFER: usize = 16 * 1024;

/// Carry a direct-tcpip channel to and from `local` (the other end is the
/// caller's stream) until the host closes the channel.
///
/// The host closes it, not us: russh 0.65 keeps its record of a channel the
/// client closed first (the server's CLOSE reply finds the channel no longer
/// established and is ignored), about 3.7 KiB per tunnel for the life of the
/// connection: 0.9 MiB per round of health checks at 50 hosts × 5 services.
/// So when the caller drops its end, the channel gets EOF, what the host still
/// sends is read and discarded, and the channel is dropped once the host has
/// closed it; one that stays open longer than `linger` after that is closed
/// from here (and its record is lost, as before).
async fn pump_tunnel(mut ch: Channel<Msg>, mut local: tokio::io::DuplexStream, linger: Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; TUNNEL_BUFFER];
    let mut caller_open = true;
    let mut caller_reads = true;
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let expire = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = ch.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    // A caller that is gone reads nothing: keep draining.
                    if caller_reads && local.write_all(&data).await.is_err() {
                        caller_reads = false;
                    }
                }
                Some(ChannelMsg::Eof) if caller_reads => {
                    let _ = local.shutdown().await;
                }
                // The host closed it, and russh has dropped its record.
                Some(ChannelMsg::Close) | None => return,
                Some(_) => {}
            },
            n = local.read(&mut buf), if caller_open => match n {
                Ok(n) if n > 0 => {
                    if ch.data(&buf[..n]).await.is_err() {
                        return;
                    }
                }
                _ => {
                    caller_open = false;
                    let _ = ch.eof().await;
                    deadline = Some(tokio::time::Instant::now() + linger);
                }
            },
            () = expire => {
                let _ = ch.close().await;
                return;
            }
        }
    }
}
