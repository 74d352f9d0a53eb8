//! Queries (the probe's path) on the shell kept open per connection.

use super::common::{self, fleet};
use std::time::Duration;
use tend::transport::pool::Pool;
use tend::transport::Transport;

fn pool() -> Pool {
    common::test_pool(Duration::from_secs(60))
}

/// The pid of the shell that runs queries (`$$` in a subshell is its parent's).
async fn shell_pid(t: &dyn Transport) -> String {
    let out = t.query("echo $$").await.unwrap();
    assert!(out.success(), "{out:?}");
    out.stdout_lossy().trim().to_string()
}

/// Poll until `cond` holds, for at most `limit`; the result says whether it did.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_share_one_kept_shell_yet_each_starts_clean() {
    let Some(fleet) = fleet("queries_share_one_kept_shell_yet_each_starts_clean", 1) else {
        return;
    };
    let pool = pool();
    let h = fleet.host(0);
    let logins = h.accepted_logins();
    let t = pool.get(&h.tend_host()).unwrap();
    let pid = shell_pid(t.as_ref()).await;
    let out = t
        .query("X=leaked; set -e; printf 'no newline'; printf 'err\\n' >&2; exit 7")
        .await
        .unwrap();
    assert_eq!(out.stdout, b"no newline");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.status, Some(7));
    let out = t
        .query("false; echo \"X=${X-unset}\"; cat; echo read-eof")
        .await
        .unwrap();
    assert_eq!(out.stdout_lossy(), "X=unset\nread-eof\n", "{out:?}");
    assert_eq!(
        shell_pid(t.as_ref()).await,
        pid,
        "a query ran in another shell"
    );
    // An exec still gets a shell of its own.
    let exec_pid = t.exec("echo $$", b"").await.unwrap().stdout_lossy();
    assert_ne!(exec_pid.trim(), pid);
    assert_eq!(t.stats().connections(), 1);
    assert_eq!(h.accepted_logins() - logins, 1, "{}", h.sshd_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_with_a_syntax_error_fails_alone_and_the_shell_answers_the_next() {
    let Some(fleet) = fleet(
        "a_query_with_a_syntax_error_fails_alone_and_the_shell_answers_the_next",
        1,
    ) else {
        return;
    };
    let pool = pool();
    let t = pool.get(&fleet.host(0).tend_host()).unwrap();
    let pid = shell_pid(t.as_ref()).await;
    let out = t.query("if then 'unterminated").await.unwrap();
    assert_ne!(out.status, Some(0));
    assert!(!out.stderr.is_empty(), "{out:?}");
    assert_eq!(shell_pid(t.as_ref()).await, pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_kept_shell_is_replaced_on_the_same_connection() {
    let Some(fleet) = fleet("a_killed_kept_shell_is_replaced_on_the_same_connection", 1) else {
        return;
    };
    let pool = pool();
    let h = fleet.host(0);
    let t = pool.get(&h.tend_host()).unwrap();
    let pid = shell_pid(t.as_ref()).await;
    h.exec_ok(&format!("kill -9 {pid}")).unwrap();
    let again = shell_pid(t.as_ref()).await;
    assert_ne!(again, pid);
    assert_eq!(t.stats().connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_cut_off_by_a_timeout_closes_its_shell_and_the_next_gets_a_new_one() {
    let Some(fleet) = fleet(
        "a_query_cut_off_by_a_timeout_closes_its_shell_and_the_next_gets_a_new_one",
        1,
    ) else {
        return;
    };
    let pool = pool();
    let h = fleet.host(0);
    let t = pool.get(&h.tend_host()).unwrap();
    let pid = shell_pid(t.as_ref()).await;
    let cut = tokio::time::timeout(Duration::from_millis(500), t.query("sleep 30")).await;
    assert!(cut.is_err(), "the query should still be sleeping");
    let again = shell_pid(t.as_ref()).await;
    assert_ne!(again, pid, "the abandoned shell was reused");
    assert!(
        eventually(Duration::from_secs(20), || h
            .exec(&format!("kill -0 {pid}"))
            .map(|o| !o.status.success())
            .unwrap_or(false)),
        "the abandoned shell {pid} is still running:\n{}\n{}",
        String::from_utf8_lossy(&h.exec("ps -eo pid,ppid,args").unwrap().stdout),
        h.sshd_log()
    );
    assert_eq!(t.stats().connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_survive_sshd_restarts_by_reconnecting() {
    let Some(fleet) = fleet("queries_survive_sshd_restarts_by_reconnecting", 1) else {
        return;
    };
    let pool = pool();
    let h = fleet.host(0);
    let t = pool.get(&h.tend_host()).unwrap();
    let pid = shell_pid(t.as_ref()).await;
    h.kill_sshd().unwrap();
    assert!(t.query("true").await.is_err());
    h.start_sshd().unwrap();
    let again = shell_pid(t.as_ref()).await;
    assert_ne!(again, pid);
    assert_eq!(t.stats().connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prelude_is_defined_once_per_kept_shell() {
    let Some(fleet) = fleet("a_prelude_is_defined_once_per_kept_shell", 1) else {
        return;
    };
    let pool = pool();
    let h = fleet.host(0);
    let t = pool.get(&h.tend_host()).unwrap();
    // A prelude should only define functions; this one also counts its runs.
    let prelude = "echo run >> /srv/prelude-runs; greet() { printf 'hi %s' \"$1\"; }";
    for who in ["a", "b", "c"] {
        let out = t
            .query_prepared(prelude, &format!("greet {who}"))
            .await
            .unwrap();
        assert_eq!(out.stdout_lossy(), format!("hi {who}"));
    }
    assert_eq!(h.exec_ok("cat /srv/prelude-runs").unwrap(), "run\n");
    let other = "echo other >> /srv/prelude-runs; greet() { printf 'hello %s' \"$1\"; }";
    let out = t.query_prepared(other, "greet d").await.unwrap();
    assert_eq!(out.stdout_lossy(), "hello d");
    // A new shell defines it again.
    let pid = shell_pid(t.as_ref()).await;
    h.exec_ok(&format!("kill -9 {pid}")).unwrap();
    let out = t.query_prepared(other, "greet e").await.unwrap();
    assert_eq!(out.stdout_lossy(), "hello e");
    assert_eq!(
        h.exec_ok("cat /srv/prelude-runs").unwrap(),
        "run\nother\nother\n"
    );
}
