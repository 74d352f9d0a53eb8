//! Small helpers: HTTP checks from the machine, per-host commands in parallel.

use anyhow::{bail, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use tend_e2e::testbed::TestHost;

/// GET / on ip:port answers 200 (one try, short timeouts).
pub fn http_ok(ip: &str, port: u16) -> bool {
    let Ok(addr) = format!("{ip}:{port}").parse::<SocketAddr>() else {
        return false;
    };
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(1000)));
    let _ = s.set_write_timeout(Some(Duration::from_millis(1000)));
    if s.write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 32];
    let mut got = 0;
    while got < 12 {
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => got += k,
        }
    }
    let head = String::from_utf8_lossy(&buf[..got]);
    head.starts_with("HTTP/1.") && head.get(9..12) == Some("200")
}

/// Poll until GET / answers 200; the time it took. Polls every 5 ms.
pub fn wait_http(ip: &str, port: u16, limit: Duration) -> Result<Duration> {
    let t0 = Instant::now();
    loop {
        if http_ok(ip, port) {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > limit {
            bail!("{ip}:{port} not healthy after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Poll until nothing accepts on ip:port.
pub fn wait_closed(ip: &str, port: u16, limit: Duration) -> Result<()> {
    let t0 = Instant::now();
    loop {
        let Ok(addr) = format!("{ip}:{port}").parse::<SocketAddr>() else {
            bail!("bad address {ip}:{port}");
        };
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            return Ok(());
        }
        if t0.elapsed() > limit {
            bail!("{ip}:{port} still accepts after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Run `cmd` in every host at once (nsenter, not ssh: sshd logs stay clean).
pub fn exec_all(hosts: &[TestHost], cmd: &str) -> Result<()> {
    let errors: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = hosts
            .iter()
            .map(|h| s.spawn(move || h.exec_ok(cmd)))
            .collect();
        handles
            .into_iter()
            .filter_map(|j| match j.join() {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(format!("{e:#}")),
                Err(_) => Some("a thread panicked".into()),
            })
            .collect()
    });
    if let Some(e) = errors.first() {
        bail!("{} host(s) failed; first: {e}", errors.len());
    }
    Ok(())
}

/// Every service of the workload on every host answers 200.
pub fn all_healthy(hosts: &[TestHost], ports: &[u16]) -> Result<()> {
    let mut bad = Vec::new();
    for h in hosts {
        for &p in ports {
            if !http_ok(&h.ip, p) {
                bad.push(format!("{}:{p}", h.name));
            }
        }
    }
    if !bad.is_empty() {
        bail!(
            "{} service(s) not healthy, e.g. {}",
            bad.len(),
            bad[..bad.len().min(5)].join(", ")
        );
    }
    Ok(())
}

/// `uptime`'s load averages, for the record.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// nproc, memory, kernel, OS: for BENCHMARKS.md.
pub fn machine() -> Vec<String> {
    let cmd = |p: &str, a: &[&str]| {
        std::process::Command::new(p)
            .args(a)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_default();
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_default();
    vec![
        format!("nproc: {}", cmd("nproc", &[])),
        format!("cpu: {cpu}"),
        format!("memory: {mem}"),
        format!("kernel: {}", cmd("uname", &["-sr"])),
        format!("os: {os}"),
        format!(
            "openssh: {}",
            String::from_utf8_lossy(
                &std::process::Command::new("ssh")
                    .arg("-V")
                    .output()
                    .map(|o| o.stderr)
                    .unwrap_or_default()
            )
            .trim()
        ),
    ]
}
