//! Fault: someone who should not be trusted. A host whose key is unknown or
//! changed is never logged in to (the others converge); a trigger without
//! the token gets 401, a webhook with a wrong signature 403; 10 000 triggers
//! in a burst are coalesced into at most two reconciles.

use super::apply::{httpd, ROOT};
use super::common::checks::assert_intact;
use super::common::fleet;
use super::common::http::{eventually, get_json, http};
use super::common::repo::{burst_while_one_runs, Repo};
use super::common::{self, fast_opts, fast_pool};
use tend::apply;
use tend::config::Config;
use tend::controller;
use tend::model::{Address, Desired};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_with_an_unknown_or_changed_key_are_refused_and_never_touched() {
    let Some(f) = fleet("hosts_with_an_unknown_or_changed_key_are_refused", 3) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // host0: known_hosts knows only the others. host1: pinned to host2's key.
    let kh = common::known_hosts(tmp.path(), &[f.host(1), f.host(2)]);
    let mut hosts = f.tend_hosts();
    if let Address::Ssh(t) = &mut hosts[0].address {
        t.host_keys.clear();
        t.known_hosts = Some(kh.clone());
    }
    if let Address::Ssh(t) = &mut hosts[1].address {
        t.host_keys = vec![f.host(2).host_key_line.clone()];
    }
    let svcs = (0..3).map(|i| {
        httpd(
            &format!("t{i}"),
            &f.host(i).name,
            19501 + i as u16,
            "1",
            "t\n",
        )
    });
    let d = Desired {
        hosts: hosts.into_iter().map(|h| (h.name.clone(), h)).collect(),
        services: svcs.map(|s| (s.name.clone(), s)).collect(),
    };
    let r = apply::converge(&d, &fast_pool(), &fast_opts(), None).await;
    assert!(!r.converged());
    for i in 0..2 {
        let h = f.host(i);
        let why = r
            .plan
            .unreachable
            .get(&h.name)
            .unwrap_or_else(|| panic!("{} not refused: {:?}", h.name, r.plan));
        assert!(why.contains("host key"), "{}: {why}", h.name);
        assert_eq!(
            h.accepted_logins(),
            0,
            "{}: logged in to an untrusted host",
            h.name
        );
        let left = h.exec_ok(&format!("ls -A {ROOT}")).unwrap();
        assert_eq!(left.trim(), "", "{}: tend wrote {left}", h.name);
    }
    assert_intact(f.host(2), ROOT, "t2", 19503, "1", "t\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_without_the_token_get_401_and_webhooks_with_a_wrong_signature_403() {
    let repo = Repo::new("fault-auth", &["fa"]);
    repo.commit(&repo.manifests("1", ""), "v1");
    let secret = repo.tmp.path().join("hook-secret");
    std::fs::write(&secret, "hook-s3cret\n").unwrap();
    let cfg = Config {
        webhook_secret_file: Some(secret),
        ..repo.config("0 0 1 1 *")
    };
    let r = controller::spawn(cfg).await.unwrap();
    let idle = || async {
        let st = get_json(r.addr, "/status").await;
        (st["running"].is_null() && st["pending"].is_null())
            .then(|| st["reconciles"][0]["id"].as_u64().unwrap_or(0))
    };
    let before = eventually(120, "first reconcile done", idle).await;
    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong")],
        vec![("Authorization", "Basic Zm9vOmJhcg==")],
    ] {
        let (code, body) = http(r.addr, "POST", "/reconcile", &headers, b"").await;
        assert_eq!(code, 401, "{headers:?}: {body}");
    }
    let payload = br#"{"ref":"refs/heads/main"}"#;
    for headers in [
        vec![],
        vec![("X-Hub-Signature-256", "sha256=00ff")],
        vec![(
            "X-Hub-Signature-256",
            "sha256=3f2a9bbd6c5e6f0e0b4d0b9f4c3b4e4a9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d",
        )],
        vec![("X-Gitea-Signature", "deadbeef")],
    ] {
        let (code, body) = http(r.addr, "POST", "/webhook", &headers, payload).await;
        assert_eq!(code, 403, "{headers:?}: {body}");
    }
    // None of them started anything. (The controller may retry on its own,
    // e.g. after a slow first reconcile on a loaded machine: those say so.)
    eventually(60, "idle", idle).await;
    let st = get_json(r.addr, "/status").await;
    let by_request: Vec<_> = st["reconciles"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|x| x["id"].as_u64().unwrap_or(0) > before)
        .filter(|x| matches!(x["trigger"].as_str(), Some("api" | "webhook" | "cli")))
        .collect();
    assert!(
        by_request.is_empty(),
        "a refused trigger ran a reconcile: {by_request:?}"
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_triggers_in_a_burst_cause_at_most_two_reconciles() {
    let repo = Repo::new("fault-burst", &["fb"]);
    repo.commit(&repo.manifests("1", ""), "v1");
    let r = controller::spawn(repo.config("0 0 1 1 *")).await.unwrap();
    let (ids, ran) = burst_while_one_runs(&r, &repo, 8, 1250).await;
    assert_eq!(
        ids.len(),
        1,
        "the burst joined one pending reconcile: {ids:?}"
    );
    assert!(ran <= 2, "{ran} reconciles for 10 001 triggers");
    let (_, m) = http(r.addr, "GET", "/metrics", &[], b"").await;
    assert!(
        m.contains("tend_triggers_total{trigger=\"api\"} 10001"),
        "{m}"
    );
    r.stop().await;
}
