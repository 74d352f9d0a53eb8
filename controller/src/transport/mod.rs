//! Transports run one script on a host and hand back what it printed.
//!
//! `ssh` (russh, one kept-open connection per host) and `local` (the machine
//! tend runs on). A transport knows nothing of services: runtimes render the
//! scripts, stages decide what to run.

mod conn;
pub mod hostkey;
mod kept_shell;
pub mod local;
pub mod pool;
pub mod ssh;

use async_trait::async_trait;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncRead, AsyncWrite};

/// What a script printed and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Exit status; None when the remote side gave none (killed by a signal).
    pub status: Option<u32>,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
    pub fn stdout_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("cannot connect to {host}: {why}")]
    Connect { host: String, why: String },
    #[error("host key of {host} is not trusted: {why}")]
    HostKey { host: String, why: String },
    #[error("authentication to {host} failed: {why}")]
    Auth { host: String, why: String },
    #[error("timed out after {secs}s talking to {host}")]
    Timeout { host: String, secs: u64 },
    #[error("connection to {host} lost: {why}")]
    Lost { host: String, why: String },
    #[error("I/O with {host}: {why}")]
    Io { host: String, why: String },
}

impl TransportError {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            TransportError::Connect { .. } => "connect",
            TransportError::HostKey { .. } => "host_key",
            TransportError::Auth { .. } => "auth",
            TransportError::Timeout { .. } => "timeout",
            TransportError::Lost { .. } => "lost",
            TransportError::Io { .. } => "io",
        }
    }
}

/// A byte stream to a TCP port on the host's own loopback (health checks).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

#[async_trait]
pub trait Transport: Send + Sync {
    /// Run `script` with `sh -s` semantics: the script text is the program,
    /// `stdin` is fed to it after the script (see each transport for how).
    async fn exec(&self, script: &str, stdin: &[u8]) -> Result<ExecOutput, TransportError>;

    /// Run a read-only `script` that needs no stdin (the probe). A transport
    /// may run it in a shell kept open between calls, and may run it again
    /// after a connection was lost mid-way.
    async fn query(&self, script: &str) -> Result<ExecOutput, TransportError> {
        self.exec(script, b"").await
    }

    /// [`Transport::query`] of `script` after `prelude`, a fixed text that
    /// only defines functions: a kept shell defines it once, not per query.
    async fn query_prepared(
        &self,
        prelude: &str,
        script: &str,
    ) -> Result<ExecOutput, TransportError> {
        self.query(&format!("{prelude}\n{script}")).await
    }

    /// Open a TCP stream to 127.0.0.1:`port` as seen from the host.
    async fn connect_tcp(&self, port: u16) -> Result<Box<dyn Stream>, TransportError>;

    /// Counters, for tests and metrics.
    fn stats(&self) -> &TransportStats;
}

/// Counted by every transport the same way.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Connections opened (ssh handshakes; 0 for local).
    pub connections: AtomicU64,
    /// Scripts run (each one round trip).
    pub execs: AtomicU64,
    /// TCP streams opened through the transport.
    pub tunnels: AtomicU64,
}

impl TransportStats {
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
    pub fn execs(&self) -> u64 {
        self.execs.load(Ordering::Relaxed)
    }
    pub fn tunnels(&self) -> u64 {
        self.tunnels.load(Ordering::Relaxed)
    }
}

/// The command that runs a script sent ahead of stdin: `head -c` reads
/// exactly its bytes (it never reads past N), the rest of stdin stays for
/// the script. What `ps` shows is this line, never the script.
pub fn stdin_reader(len: usize) -> String {
    format!("s=$(head -c {len} && echo x) && s=${{s%x}} && eval \"$s\"")
}
