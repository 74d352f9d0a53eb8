//! The machine tend runs on: `sh -c SCRIPT` as a child process.

use super::{ExecOutput, Stream, Transport, TransportError, TransportStats};
use async_trait::async_trait;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const HOST: &str = "local";

#[derive(Debug, Default)]
pub struct LocalTransport {
    stats: TransportStats,
    exec_timeout: Option<Duration>,
}

impl LocalTransport {
    pub fn new() -> Self {
        Self::default()
    }

    /// Scripts running longer than `timeout` are killed and give `Timeout`.
    pub fn with_exec_timeout(timeout: Option<Duration>) -> Self {
        LocalTransport {
            stats: TransportStats::default(),
            exec_timeout: timeout,
        }
    }

    async fn run(&self, script: &str, stdin: &[u8]) -> Result<ExecOutput, TransportError> {
        let io = |e: std::io::Error| TransportError::Io {
            host: HOST.into(),
            why: e.to_string(),
        };
        // As over SSH: the script on stdin, so `ps` never shows it.
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(super::stdin_reader(script.len()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(io)?;
        // Feed stdin concurrently with reading output, else a chatty script deadlocks.
        let writer = child.stdin.take().map(|mut w| {
            let mut data = script.as_bytes().to_vec();
            data.extend_from_slice(stdin);
            tokio::spawn(async move {
                // A script that does not read its stdin closes the pipe: not an error.
                let _ = w.write_all(&data).await;
                let _ = w.shutdown().await;
            })
        });
        let out = child.wait_with_output().await.map_err(io)?;
        if let Some(w) = writer {
            let _ = w.await;
        }
        Ok(ExecOutput {
            stdout: out.stdout,
            stderr: out.stderr,
            status: out.status.code().map(|c| c as u32),
        })
    }
}

#[async_trait]
impl Transport for LocalTransport {
    async fn exec(&self, script: &str, stdin: &[u8]) -> Result<ExecOutput, TransportError> {
        self.stats.execs.fetch_add(1, Ordering::Relaxed);
        match self.exec_timeout {
            None => self.run(script, stdin).await,
            Some(t) => tokio::time::timeout(t, self.run(script, stdin))
                .await
                .map_err(|_| TransportError::Timeout {
                    host: HOST.into(),
                    secs: t.as_secs(),
                })?,
        }
    }

    async fn connect_tcp(&self, port: u16) -> Result<Box<dyn Stream>, TransportError> {
        let s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| TransportError::Connect {
                host: format!("{HOST} (127.0.0.1:{port})"),
                why: e.to_string(),
            })?;
        self.stats.tunnels.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(s))
    }

    fn stats(&self) -> &TransportStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_local_script_gives_its_output_and_status() {
        let t = LocalTransport::new();
        let out = t.exec("echo out; echo err >&2; exit 3", b"").await.unwrap();
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(out.status, Some(3));
        assert_eq!(t.stats().execs(), 1);
        assert_eq!(t.stats().connections(), 0);
    }

    #[tokio::test]
    async fn local_stdin_arrives_byte_for_byte() {
        let t = LocalTransport::new();
        let data: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
        let out = t.exec("cat", &data).await.unwrap();
        assert_eq!(out.stdout, data);
    }

    #[tokio::test]
    async fn a_local_script_past_its_timeout_gives_timeout() {
        let t = LocalTransport::with_exec_timeout(Some(Duration::from_millis(200)));
        let e = t.exec("sleep 5", b"").await.unwrap_err();
        assert_eq!(e.metric_label(), "timeout");
    }

    #[tokio::test]
    async fn a_local_tunnel_reaches_a_loopback_listener() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(b"hello").await.unwrap();
        });
        let t = LocalTransport::new();
        let mut s = t.connect_tcp(port).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        assert_eq!(buf, b"hello");
        assert_eq!(t.stats().tunnels(), 1);
    }
}
