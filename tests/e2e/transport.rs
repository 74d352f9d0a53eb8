//! The SSH transport against real OpenSSH sshd hosts.

use super::common::{self, fleet};
use std::sync::Arc;
use std::time::Duration;
use tend::model::{Address, Host, SshTarget};
use tend::transport::hostkey;
use tend::transport::pool::{Pool, PoolOptions};
use tend::transport::TransportError;
use tend_e2e::testbed::TestHost;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn pool() -> Pool {
    common::test_pool(Duration::from_secs(60))
}

/// The host as tend sees it, with its ssh target changed by `f`.
fn host_with(h: &TestHost, f: impl FnOnce(&mut SshTarget)) -> Host {
    let mut host = h.tend_host();
    if let Address::Ssh(t) = &mut host.address {
        f(t);
    }
    host
}

fn offered_fingerprint(h: &TestHost) -> String {
    hostkey::fingerprint(&hostkey::parse_key_line(&h.host_key_line).unwrap())
}

fn expect_host_key_error(
    r: Result<tend::transport::ExecOutput, TransportError>,
    h: &TestHost,
) -> String {
    match r {
        Err(e @ TransportError::HostKey { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&h.name), "error does not name the host: {msg}");
            assert!(
                msg.contains(&offered_fingerprint(h)),
                "error does not name the offered key: {msg}"
            );
            msg
        }
        other => panic!("expected a host key refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ed25519_key_runs_a_script_with_exact_output_and_status_on_every_host() {
    let Some(fleet) = fleet(
        "an_ed25519_key_runs_a_script_with_exact_output_and_status_on_every_host",
        3,
    ) else {
        return;
    };
    let pool = pool();
    for h in fleet.hosts() {
        let t = pool.get(&h.tend_host()).unwrap();
        let out = t
            .exec(
                "printf 'out %s' \"$(hostname)\"; printf 'err\\n' >&2; exit 7",
                b"",
            )
            .await
            .unwrap();
        assert_eq!(out.stdout_lossy(), format!("out {}", h.name));
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(out.status, Some(7));
        let killed = t.exec("kill -9 $$", b"").await.unwrap();
        assert_eq!(
            killed.status, None,
            "a script killed by a signal has no exit status"
        );
        assert!(t.exec("true", b"").await.unwrap().success());
    }
    assert_eq!(pool.total_stats().connections(), 3);
    assert_eq!(pool.total_stats().execs(), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rsa_key_logs_in_in_pem_and_in_openssh_format() {
    let Some(fleet) = fleet("an_rsa_key_logs_in_in_pem_and_in_openssh_format", 3) else {
        return;
    };
    let pem = fleet.rsa_key().to_path_buf();
    assert!(std::fs::read_to_string(&pem)
        .unwrap()
        .starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let dir = tempfile::tempdir().unwrap();
    let openssh = dir.path().join("id_rsa");
    std::fs::copy(&pem, &openssh).unwrap();
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-p", "-P", "", "-N", "", "-f"])
        .arg(&openssh)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(std::fs::read_to_string(&openssh)
        .unwrap()
        .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    let pool = pool();
    for (h, key) in fleet.hosts().iter().zip([&pem, &openssh, &pem]) {
        let t = pool
            .get(&host_with(h, |t| t.identity = Some(key.clone())))
            .unwrap();
        let out = t.exec("hostname", b"").await.unwrap();
        assert_eq!(out.stdout_lossy().trim(), h.name, "with {}", key.display());
        assert!(
            h.sshd_log().contains("Accepted publickey for root"),
            "{}",
            h.sshd_log()
        );
        assert!(
            h.sshd_log().contains("RSA SHA256:"),
            "sshd did not log an RSA login: {}",
            h.sshd_log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_host_does_not_authorize_is_an_auth_error() {
    let Some(fleet) = fleet("a_key_the_host_does_not_authorize_is_an_auth_error", 1) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let stranger = dir.path().join("stranger");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&stranger)
        .status()
        .unwrap();
    assert!(st.success());
    let h = fleet.host(0);
    let t = pool()
        .get(&host_with(h, |t| t.identity = Some(stranger.clone())))
        .unwrap();
    let e = t.exec("true", b"").await.unwrap_err();
    assert_eq!(e.metric_label(), "auth", "{e}");
    assert!(e.to_string().contains(&h.name), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_bytes_arrive_exactly_and_large_output_comes_back_whole() {
    let Some(fleet) = fleet(
        "stdin_bytes_arrive_exactly_and_large_output_comes_back_whole",
        3,
    ) else {
        return;
    };
    let pool = pool();
    let data: Vec<u8> = (0..=255u8).cycle().take(3 * 1024 * 1024 + 17).collect();
    for h in fleet.hosts() {
        let t = pool.get(&h.tend_host()).unwrap();
        // cat echoes while we still write: needs concurrent write and read.
        let out = t.exec("cat", &data).await.unwrap();
        assert_eq!(out.stdout.len(), data.len());
        assert!(out.stdout == data, "stdin came back altered");
        let out = t
            .exec("cat > /tmp/in; wc -c < /tmp/in", b"\0\x01\xff'\"$(x)\n")
            .await
            .unwrap();
        assert_eq!(out.stdout_lossy().trim(), "10");
        assert_eq!(
            std::fs::read(h.path("/tmp/in")).unwrap(),
            b"\0\x01\xff'\"$(x)\n"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_script_runs_whole() {
    let Some(fleet) = fleet("a_large_script_runs_whole", 1) else {
        return;
    };
    let t = pool().get(&fleet.host(0).tend_host()).unwrap();
    let mut script = String::new();
    for i in 0..4000 {
        script.push_str(&format!("x{i}='{}'\n", "v".repeat(40)));
    }
    // Past Linux's 128 KiB limit for one argument; and the script still has its stdin.
    script.push_str("echo \"$x3999\"; cat; exit 3\n");
    assert!(script.len() > 180_000);
    let out = t.exec(&script, b"stdin\n").await.unwrap();
    assert_eq!(
        out.stdout_lossy(),
        format!("{}\nstdin\n", "v".repeat(40)),
        "{}",
        out.stderr_lossy()
    );
    assert_eq!(out.status, Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_host_key_is_refused() {
    let Some(fleet) = fleet("an_unknown_host_key_is_refused", 3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Knows the other hosts, not host0.
    let kh = common::known_hosts(dir.path(), &[fleet.host(1), fleet.host(2)]);
    let h = fleet.host(0);
    let pool = pool();
    let t = pool
        .get(&host_with(h, |t| {
            t.host_keys.clear();
            t.known_hosts = Some(kh.clone());
        }))
        .unwrap();
    let msg = expect_host_key_error(t.exec("touch /tmp/ran", b"").await, h);
    assert!(
        msg.contains(&kh.display().to_string()),
        "error does not say where it looked: {msg}"
    );
    assert!(!h.path("/tmp/ran").exists());
    assert_eq!(
        h.accepted_logins(),
        0,
        "tend authenticated to an unverified host"
    );
    // Same for an empty known_hosts, and for a missing one.
    std::fs::write(&kh, "").unwrap();
    let t = pool
        .get(&host_with(h, |t| {
            t.host_keys.clear();
            t.known_hosts = Some(dir.path().join("missing"));
        }))
        .unwrap();
    expect_host_key_error(t.exec("true", b"").await, h);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_host_key_is_refused() {
    let Some(fleet) = fleet("a_changed_host_key_is_refused", 3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pool = pool();
    // Pinned: host0 pinned with host1's key.
    let h = fleet.host(0);
    let other = fleet.host(1).host_key_line.clone();
    let t = pool
        .get(&host_with(h, |t| t.host_keys = vec![other.clone()]))
        .unwrap();
    let msg = expect_host_key_error(t.exec("true", b"").await, h);
    assert!(msg.contains("pinned"), "{msg}");
    // known_hosts: host2's address listed with host1's key.
    let h = fleet.host(2);
    let kh = dir.path().join("known_hosts");
    std::fs::write(&kh, format!("{} {}\n", h.ip, other)).unwrap();
    let t = pool
        .get(&host_with(h, |t| {
            t.host_keys.clear();
            t.known_hosts = Some(kh.clone());
        }))
        .unwrap();
    let msg = expect_host_key_error(t.exec("true", b"").await, h);
    assert!(msg.contains("different key"), "{msg}");
    assert_eq!(h.accepted_logins(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_known_hosts_key_is_refused() {
    let Some(fleet) = fleet("a_revoked_known_hosts_key_is_refused", 3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let kh = dir.path().join("known_hosts");
    let h = fleet.host(1);
    // The whole fleet's file plus a revocation of host1's key.
    let mut text = std::fs::read_to_string(fleet.known_hosts()).unwrap();
    text.push_str(&format!("@revoked * {}\n", h.host_key_line));
    std::fs::write(&kh, text).unwrap();
    let pool = Pool::new(PoolOptions {
        known_hosts: Some(kh.clone()),
        ..PoolOptions::default()
    });
    let unpinned = |h: &TestHost| host_with(h, |t| t.host_keys.clear());
    let msg = expect_host_key_error(pool.get(&unpinned(h)).unwrap().exec("true", b"").await, h);
    assert!(msg.contains("revoked"), "{msg}");
    // The others, in the same file, are fine.
    for other in [fleet.host(0), fleet.host(2)] {
        assert!(pool
            .get(&unpinned(other))
            .unwrap()
            .exec("true", b"")
            .await
            .unwrap()
            .success());
    }
    // OpenSSH agrees.
    let out = common::openssh(&kh, fleet.ed25519_key(), &h.ip, "true");
    assert_eq!(out.status.code(), Some(255));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_and_bracketed_known_hosts_entries_are_accepted() {
    let Some(fleet) = fleet("hashed_and_bracketed_known_hosts_entries_are_accepted", 3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let kh = dir.path().join("known_hosts");
    let alt = tend_e2e::testbed::ALT_PORT;
    let mut text = String::new();
    for h in fleet.hosts() {
        text.push_str(&format!(
            "{}\n[{}]:{alt} {}\n",
            h.known_hosts_line(),
            h.ip,
            h.host_key_line
        ));
    }
    std::fs::write(&kh, text).unwrap();
    // OpenSSH's own hashing.
    let st = std::process::Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(&kh)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let hashed = std::fs::read_to_string(&kh).unwrap();
    assert!(hashed.lines().all(|l| l.starts_with("|1|")), "{hashed}");
    assert!(!hashed.contains(&fleet.host(0).ip));
    let pool = pool();
    for h in fleet.hosts() {
        for port in [22, alt] {
            let t = pool
                .get(&Host {
                    name: format!("{}-{port}", h.name),
                    ..host_with(h, |t| {
                        t.host_keys.clear();
                        t.known_hosts = Some(kh.clone());
                        t.port = port;
                    })
                })
                .unwrap();
            let out = t.exec("hostname", b"").await.unwrap();
            assert_eq!(out.stdout_lossy().trim(), h.name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_with_its_link_down_times_out_while_the_others_answer() {
    let Some(fleet) = fleet(
        "a_host_with_its_link_down_times_out_while_the_others_answer",
        3,
    ) else {
        return;
    };
    let pool = Arc::new(Pool::new(PoolOptions {
        connect_timeout: Duration::from_secs(2),
        exec_timeout: Some(Duration::from_secs(5)),
        ..PoolOptions::default()
    }));
    let down = fleet.host(1);
    down.link_down().unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, h) in fleet.hosts().iter().enumerate() {
        let t = pool.get(&h.tend_host()).unwrap();
        tasks.spawn(async move { (i, t.exec("hostname", b"").await) });
    }
    // Callers queued behind the failing connect share its error rather than
    // each waiting out a connect timeout in turn (which would hit the exec timeout).
    for _ in 0..4 {
        let t = pool.get(&down.tend_host()).unwrap();
        tasks.spawn(async move { (1, t.exec("hostname", b"").await) });
    }
    let mut results = Vec::new();
    while let Some(r) = tasks.join_next().await {
        results.push(r.unwrap());
    }
    results.sort_by_key(|r| r.0);
    assert_eq!(results.len(), 7);
    assert_eq!(
        results[0].1.as_ref().unwrap().stdout_lossy().trim(),
        "host0"
    );
    assert_eq!(
        results[6].1.as_ref().unwrap().stdout_lossy().trim(),
        "host2"
    );
    for r in &results[1..6] {
        match &r.1 {
            Err(TransportError::Timeout { host, secs }) => {
                assert_eq!(host, "host1");
                assert_eq!(*secs, 2, "the connect timeout, not the exec timeout, fired");
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }
    down.link_up().unwrap();
    let out = pool
        .get(&down.tend_host())
        .unwrap()
        .exec("hostname", b"")
        .await
        .unwrap();
    assert_eq!(out.stdout_lossy().trim(), "host1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_cut_under_a_kept_connection_gives_timeout_then_recovers() {
    let Some(fleet) = fleet(
        "a_link_cut_under_a_kept_connection_gives_timeout_then_recovers",
        1,
    ) else {
        return;
    };
    let pool = Pool::new(PoolOptions {
        connect_timeout: Duration::from_secs(2),
        exec_timeout: Some(Duration::from_secs(4)),
        keepalive: Some(Duration::from_secs(1)),
        ..PoolOptions::default()
    });
    let h = fleet.host(0);
    let t = pool.get(&h.tend_host()).unwrap();
    assert!(t.exec("true", b"").await.unwrap().success());
    h.link_down().unwrap();
    let e = t.exec("true", b"").await.unwrap_err();
    assert_eq!(e.metric_label(), "timeout", "{e}");
    h.link_up().unwrap();
    assert!(t.exec("true", b"").await.unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_reconnects_after_sshd_is_killed_and_restarted() {
    let Some(fleet) = fleet("the_pool_reconnects_after_sshd_is_killed_and_restarted", 3) else {
        return;
    };
    let pool = pool();
    let h = fleet.host(2);
    let t = pool.get(&h.tend_host()).unwrap();
    assert!(t
        .exec("echo one > /srv/state", b"")
        .await
        .unwrap()
        .success());
    h.kill_sshd().unwrap();
    let e = t.exec("true", b"").await.unwrap_err();
    assert!(
        matches!(
            e,
            TransportError::Connect { .. } | TransportError::Lost { .. }
        ),
        "{e}"
    );
    h.start_sshd().unwrap();
    let out = t.exec("cat /srv/state", b"").await.unwrap();
    assert_eq!(out.stdout_lossy(), "one\n");
    assert_eq!(pool.stats("host2").unwrap().connections(), 2);
    assert!(std::sync::Arc::ptr_eq(
        &t,
        &pool.get(&h.tend_host()).unwrap()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_execs_in_a_row_open_exactly_one_connection() {
    let Some(fleet) = fleet("twenty_execs_in_a_row_open_exactly_one_connection", 3) else {
        return;
    };
    let pool = pool();
    let h = fleet.host(0);
    let before = h.accepted_logins();
    let log_before = h.sshd_log().len();
    for i in 0..20 {
        let t = pool.get(&h.tend_host()).unwrap();
        let out = t.exec(&format!("echo {i}"), b"").await.unwrap();
        assert_eq!(out.stdout_lossy().trim(), i.to_string());
    }
    let stats = pool.stats("host0").unwrap();
    assert_eq!(stats.connections(), 1);
    assert_eq!(stats.execs(), 20);
    assert_eq!(
        h.accepted_logins() - before,
        1,
        "sshd saw more than one login:\n{}",
        h.sshd_log()
    );
    let sessions = h.sshd_log()[log_before..]
        .lines()
        .filter(|l| l.contains("Connection from"))
        .count();
    assert_eq!(sessions, 1, "{}", h.sshd_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_concurrent_execs_on_one_host_all_succeed() {
    let Some(fleet) = fleet("thirty_concurrent_execs_on_one_host_all_succeed", 3) else {
        return;
    };
    let pool = pool();
    let t = pool.get(&fleet.host(1).tend_host()).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..30 {
        let t = t.clone();
        tasks.spawn(async move { (i, t.exec(&format!("sleep 0.2; echo {i}"), b"").await) });
    }
    let mut done = 0;
    while let Some(r) = tasks.join_next().await {
        let (i, out) = r.unwrap();
        let out = out.unwrap_or_else(|e| panic!("exec {i}: {e}"));
        assert_eq!(out.stdout_lossy().trim(), i.to_string());
        done += 1;
    }
    assert_eq!(done, 30);
    assert_eq!(t.stats().connections(), 1, "{}", fleet.host(1).sshd_log());
    assert_eq!(fleet.host(1).accepted_logins(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tcp_reaches_a_listener_on_the_hosts_own_loopback() {
    let Some(fleet) = fleet(
        "connect_tcp_reaches_a_listener_on_the_hosts_own_loopback",
        3,
    ) else {
        return;
    };
    let h = fleet.host(2);
    h.exec_ok("mkdir -p /srv/www && printf 'hello from host2' > /srv/www/hello.txt")
        .unwrap();
    let mut server = h
        .command("exec python3 -m http.server 8765 --bind 127.0.0.1 --directory /srv/www")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let probe = "python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 8765), 1)'";
    let mut up = false;
    for _ in 0..200 {
        if h.exec(probe).unwrap().status.success() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(up, "http.server did not start");
    let pool = pool();
    let t = pool.get(&h.tend_host()).unwrap();
    let mut s = t.connect_tcp(8765).await.unwrap();
    s.write_all(b"GET /hello.txt HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.unwrap();
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.0 200"), "{resp}");
    assert!(resp.ends_with("hello from host2"), "{resp}");
    assert_eq!(t.stats().tunnels(), 1);
    // Nothing listens there on host0's loopback: the tunnel open fails, the connection stays.
    let t0 = pool.get(&fleet.host(0).tend_host()).unwrap();
    let e = t0.connect_tcp(8765).await.err().unwrap();
    assert_eq!(e.metric_label(), "connect", "{e}");
    assert!(t0.exec("true", b"").await.unwrap().success());
    assert_eq!(t0.stats().connections(), 1);
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn any_quoted_string_arrives_on_the_host_as_exactly_its_bytes() {
    use proptest::prelude::*;
    let Some(fleet) = fleet(
        "any_quoted_string_arrives_on_the_host_as_exactly_its_bytes",
        1,
    ) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pool = pool();
    let t = pool.get(&fleet.host(0).tend_host()).unwrap();
    let piece = prop_oneof![
        Just("'".to_string()),
        Just("\"".to_string()),
        Just("$(touch /tmp/pwned)".to_string()),
        Just("`touch /tmp/pwned`".to_string()),
        Just("\\".to_string()),
        Just("\n".to_string()),
        Just("-n".to_string()),
        Just("$HOME".to_string()),
        Just("é✓😀".to_string()),
        "[^\u{0}]{0,8}",
    ];
    let words = proptest::collection::vec(piece, 0..8).prop_map(|v| v.concat());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
    runner
        .run(&words, |s| {
            let script = format!("printf %s {}", tend::shell::quote(&s).unwrap());
            let out = rt.block_on(t.exec(&script, b"")).unwrap();
            prop_assert_eq!(out.stdout, s.as_bytes().to_vec());
            // The kept shell quotes the script once more, into `eval`.
            let out = rt.block_on(t.query(&script)).unwrap();
            prop_assert_eq!(out.stdout, s.as_bytes().to_vec());
            prop_assert_eq!(out.status, Some(0));
            Ok(())
        })
        .unwrap();
    assert!(!fleet.host(0).path("/tmp/pwned").exists());
    assert_eq!(t.stats().connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_dies_mid_script_is_lost_not_hung_and_the_next_exec_reconnects() {
    let Some(fleet) = fleet(
        "a_connection_that_dies_mid_script_is_lost_not_hung_and_the_next_exec_reconnects",
        1,
    ) else {
        return;
    };
    let pool = pool();
    let t = pool.get(&fleet.host(0).tend_host()).unwrap();
    // The script kills the sshd process serving its own connection while
    // tend still has megabytes of stdin to send.
    let stdin = vec![b'x'; 8 * 1024 * 1024];
    let e = t.exec("kill -9 $PPID; sleep 5", &stdin).await.unwrap_err();
    assert_eq!(e.metric_label(), "lost", "{e}");
    let out = t.exec("echo again", b"").await.unwrap();
    assert_eq!(out.stdout_lossy(), "again\n");
    assert_eq!(t.stats().connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_trusted_only_by_its_rsa_host_key_is_accepted() {
    let Some(fleet) = fleet("a_host_trusted_only_by_its_rsa_host_key_is_accepted", 2) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pool = pool();
    // Pinned: sshd offers ed25519 first unless told what we can check.
    let h = fleet.host(0);
    let pin = h.rsa_host_key_line.clone();
    let t = pool
        .get(&host_with(h, |t| t.host_keys = vec![pin]))
        .unwrap();
    assert_eq!(
        t.exec("hostname", b"").await.unwrap().stdout_lossy().trim(),
        "host0"
    );
    // known_hosts with only the RSA key.
    let h = fleet.host(1);
    let kh = dir.path().join("known_hosts");
    std::fs::write(&kh, format!("{} {}\n", h.ip, h.rsa_host_key_line)).unwrap();
    let t = pool
        .get(&host_with(h, |t| {
            t.host_keys.clear();
            t.known_hosts = Some(kh.clone());
        }))
        .unwrap();
    assert_eq!(
        t.exec("hostname", b"").await.unwrap().stdout_lossy().trim(),
        "host1"
    );
}
