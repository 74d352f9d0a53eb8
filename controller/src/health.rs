//! Health checks, run from the controller through the host's transport.
//!
//! `http`: a minimal HTTP/1.1 GET to 127.0.0.1:port on the host (2xx is
//! healthy); `tcp`: a connect; `command`: argv run on the host in the current
//! release dir with the service's env (exit 0 is healthy).
//!
//! A gate ([`wait_healthy`]) passes on the first passing check; each check is
//! given `timeout`; the gate fails once `retries` × `interval` has passed
//! (at least one check is always made).

use crate::model::{Health, HealthCheck};
use crate::transport::{Transport, TransportError};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("health check timed out after {0:?}")]
    Timeout(Duration),
    #[error("health check: {0}")]
    Transport(#[from] TransportError),
    #[error("health check: HTTP status {0}")]
    Status(u16),
    #[error("health check: bad HTTP response: {0}")]
    BadResponse(String),
    #[error("health check: I/O: {0}")]
    Io(String),
    #[error("health check command exited with {0}")]
    Command(String),
    #[error("health check cannot be rendered: {0}")]
    Render(String),
}

impl HealthError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            HealthError::Timeout(_) => "timeout",
            HealthError::Transport(e) => e.metric_label(),
            HealthError::Status(_) => "status",
            HealthError::BadResponse(_) => "bad_response",
            HealthError::Io(_) => "io",
            HealthError::Command(_) => "command",
            HealthError::Render(_) => "render",
        }
    }
}

/// One check, bounded by `timeout`.
pub async fn check_once(
    t: &dyn Transport,
    root: &str,
    service: &str,
    check: &HealthCheck,
    timeout: Duration,
) -> Result<(), HealthError> {
    match tokio::time::timeout(timeout, check_inner(t, root, service, check)).await {
        Ok(r) => r,
        Err(_) => Err(HealthError::Timeout(timeout)),
    }
}

async fn check_inner(
    t: &dyn Transport,
    root: &str,
    service: &str,
    check: &HealthCheck,
) -> Result<(), HealthError> {
    match check {
        HealthCheck::Tcp { port } => {
            t.connect_tcp(*port).await?;
            Ok(())
        }
        HealthCheck::Http { port, path } => http_get(t, *port, path).await,
        HealthCheck::Command { command } => {
            let script = command_script(root, service, command)?;
            let out = t.exec(&script, &[]).await?;
            if out.success() {
                Ok(())
            } else {
                Err(HealthError::Command(match out.status {
                    Some(c) => format!("status {c}"),
                    None => "a signal".into(),
                }))
            }
        }
    }
}

fn command_script(root: &str, service: &str, argv: &[String]) -> Result<String, HealthError> {
    let q = |s: &str| crate::shell::quote(s).map_err(|e| HealthError::Render(e.to_string()));
    let words: Result<Vec<String>, HealthError> = argv.iter().map(|a| q(a)).collect();
    Ok(format!(
        "root={}\nsvc={}\ncd \"$root/releases/$svc/current\" || exit 1\nsh -c {} tend-health \"$root/env/$svc.env\" {} </dev/null\n",
        q(root)?,
        q(service)?,
        q("envf=$1; shift; if [ -r \"$envf\" ]; then set -a; . \"$envf\"; set +a; fi; exec \"$@\"")?,
        words?.join(" ")
    ))
}

async fn http_get(t: &dyn Transport, port: u16, path: &str) -> Result<(), HealthError> {
    let io = |e: std::io::Error| HealthError::Io(e.to_string());
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(HealthError::Render(format!(
            "path {path:?} is not a request target"
        )));
    }
    let mut s = t.connect_tcp(port).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: tend\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.map_err(io)?;
    s.flush().await.map_err(io)?;
    // The status line is all we need.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 4096 {
        let n = s.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let code = parse_status_line(&buf)?;
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(HealthError::Status(code))
    }
}

/// `HTTP/1.x NNN ...` → NNN.
pub fn parse_status_line(buf: &[u8]) -> Result<u16, HealthError> {
    let line_end = buf
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(buf.len());
    let line = String::from_utf8_lossy(&buf[..line_end]);
    let mut parts = line.split(' ');
    let proto = parts.next().unwrap_or("");
    if !proto.starts_with("HTTP/1.") {
        return Err(HealthError::BadResponse(format!(
            "{:?}",
            truncate(&line, 60)
        )));
    }
    parts
        .next()
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|c| (100..600).contains(c))
        .ok_or_else(|| HealthError::BadResponse(format!("{:?}", truncate(&line, 60))))
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Gate on health: Ok after the first passing check, the last error once
/// `retries` × `interval` has passed. Polls faster than `interval` at
/// first (50 ms, doubling), so a service that is up in 100 ms passes in
/// about that — the budget, not the pace, is what the manifest sets.
pub async fn wait_healthy(
    t: &dyn Transport,
    root: &str,
    service: &str,
    health: &Health,
) -> Result<u32, HealthError> {
    let mut gate = Gate::new(health);
    loop {
        let err = match check_once(t, root, service, &health.check, health.timeout).await {
            Ok(()) => return Ok(gate.attempt),
            Err(e) => e,
        };
        if !gate.wait().await {
            return Err(err);
        }
    }
}

/// The pace and budget of one health gate, for callers that also look at
/// the process between checks (a crashed service fails at once).
pub struct Gate {
    deadline: tokio::time::Instant,
    pause: Duration,
    interval: Duration,
    pub attempt: u32,
}

impl Gate {
    pub fn new(health: &Health) -> Gate {
        let budget = health.interval * health.retries.max(1);
        Gate {
            deadline: tokio::time::Instant::now() + budget,
            pause: Duration::from_millis(50).min(health.interval),
            interval: health.interval,
            attempt: 1,
        }
    }

    /// Sleep until the next check; false once the budget is spent.
    pub async fn wait(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        if now >= self.deadline {
            return false;
        }
        tokio::time::sleep(self.pause.min(self.deadline - now)).await;
        self.pause = (self.pause * 2).min(self.interval.max(Duration::from_millis(50)));
        self.attempt += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::local::LocalTransport;

    #[test]
    fn a_status_line_gives_its_code() {
        assert_eq!(
            parse_status_line(b"HTTP/1.1 204 No Content\r\n").ok(),
            Some(204)
        );
        assert_eq!(
            parse_status_line(b"HTTP/1.0 503 Busy\r\nX: y").ok(),
            Some(503)
        );
        assert!(parse_status_line(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_status_line(b"HTTP/1.1 abc\r\n").is_err());
    }

    async fn serve_once(status: &'static str) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut b = [0u8; 1024];
                let _ = s.read(&mut b).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        port
    }

    fn gate(check: HealthCheck) -> Health {
        Health {
            check,
            interval: Duration::from_millis(10),
            timeout: Duration::from_secs(5),
            retries: 2,
        }
    }

    #[tokio::test]
    async fn a_2xx_answer_is_healthy_and_a_5xx_is_not() {
        let t = LocalTransport::new();
        let ok = serve_once("200 OK").await;
        let bad = serve_once("500 Oops").await;
        let h = gate(HealthCheck::Http {
            port: ok,
            path: "/health".into(),
        });
        assert!(wait_healthy(&t, "/nonexistent", "x", &h).await.is_ok());
        let h = gate(HealthCheck::Http {
            port: bad,
            path: "/health".into(),
        });
        assert!(matches!(
            wait_healthy(&t, "/nonexistent", "x", &h).await,
            Err(HealthError::Status(500))
        ));
    }

    #[tokio::test]
    async fn a_closed_port_is_unhealthy() {
        let t = LocalTransport::new();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let h = gate(HealthCheck::Tcp { port });
        assert!(wait_healthy(&t, "/nonexistent", "x", &h).await.is_err());
    }

    #[tokio::test]
    async fn a_command_check_runs_in_the_current_release_with_its_env() {
        let t = LocalTransport::new();
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("releases/svc/v1")).unwrap();
        std::os::unix::fs::symlink("v1", r.join("releases/svc/current")).unwrap();
        std::fs::write(r.join("releases/svc/v1/ok"), "").unwrap();
        std::fs::create_dir_all(r.join("env")).unwrap();
        std::fs::write(r.join("env/svc.env"), "WANT=\"ok\"\n").unwrap();
        let root_s = r.to_str().unwrap();
        let cmd = |c: &str| {
            gate(HealthCheck::Command {
                command: vec!["sh".into(), "-c".into(), c.into()],
            })
        };
        assert!(wait_healthy(&t, root_s, "svc", &cmd("test -f \"$WANT\""))
            .await
            .is_ok());
        assert!(wait_healthy(&t, root_s, "svc", &cmd("test -f missing"))
            .await
            .is_err());
    }
}
