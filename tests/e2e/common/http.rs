//! HTTP against a controller or a service: one request per connection, and
//! polling until something holds.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request, `Connection: close`; (status, body).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    // Not listening (yet): status 0, so callers can poll.
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut buf = Vec::new();
    if s.write_all(req.as_bytes()).await.is_err()
        || s.write_all(body).await.is_err()
        || s.read_to_end(&mut buf).await.is_err()
    {
        return (0, String::new());
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (code, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub async fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (code, body) = http(addr, "GET", path, &[], b"").await;
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// `POST path` with an empty body as `auth` (an `Authorization` value).
pub async fn post_as(addr: SocketAddr, path: &str, auth: &str) -> (u16, String) {
    http(addr, "POST", path, &[("Authorization", auth)], b"").await
}

/// Poll `f` until it gives Some, for at most `secs` (a bound, not a measurement).
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("gave up waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The id of the newest reconcile (0: none yet) once nothing runs or waits.
pub async fn idle_reconcile(addr: SocketAddr) -> Option<u64> {
    let st = get_json(addr, "/status").await;
    (st["running"].is_null() && st["pending"].is_null())
        .then(|| st["reconciles"][0]["id"].as_u64().unwrap_or(0))
}

/// `tasks` concurrent tasks each POST `/reconcile` `each` times; every one is
/// answered 202. The reconcile ids they were given.
pub async fn trigger_burst(
    addr: SocketAddr,
    auth: &str,
    tasks: usize,
    each: usize,
) -> BTreeSet<u64> {
    let mut running = Vec::new();
    for _ in 0..tasks {
        let auth = auth.to_string();
        running.push(tokio::spawn(async move {
            let mut ids = BTreeSet::new();
            for _ in 0..each {
                let (code, body) = post_as(addr, "/reconcile", &auth).await;
                assert_eq!(code, 202, "{body}");
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                ids.insert(v["id"].as_u64().unwrap());
            }
            ids
        }));
    }
    let mut ids = BTreeSet::new();
    for t in running {
        ids.extend(t.await.unwrap());
    }
    ids
}
