//! Fault: the Git remote (a file:// bare repository) becomes unreachable, or
//! its branch is force-pushed to a history that drops the revision in force.
//! The controller (`tend run`'s loop, in this process) keeps the last good
//! revision, says why in /status, and its metric still names that revision.

use super::common::http::get_json;
use super::common::repo::{converged, git, metrics, trigger_and_wait, Repo, NEVER};
use tend::controller;

fn in_force_metric(rev: &str) -> String {
    format!("tend_source_info{{revision=\"{rev}\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_remote_keeps_the_last_good_revision_and_status_says_why() {
    let repo = Repo::new("fault-git-gone", &["gone"]);
    let good = repo.commit(&repo.manifests("1", ""), "v1");
    let r = controller::spawn(repo.config(NEVER)).await.unwrap();
    converged(&r, &repo, "1").await;

    // A newer commit is pushed, then the remote goes away before it is fetched.
    let newer = repo.commit(&repo.manifests("2", ""), "v2");
    let moved = repo.tmp.path().join("fleet.git.away");
    std::fs::rename(repo.bare(), &moved).unwrap();
    let answer = trigger_and_wait(&r).await;
    assert_eq!(answer["reconcile"]["revision"], good.as_str(), "{answer}");
    let st = get_json(r.addr, "/status").await;
    assert_eq!(st["source"]["revision"], good.as_str(), "{}", st["source"]);
    let why = st["source"]["fetch_error"].as_str().unwrap_or_default();
    assert!(why.contains("cannot reach"), "{}", st["source"]);
    converged(&r, &repo, "1").await;
    let m = metrics(&r).await;
    assert!(m.contains(&in_force_metric(&good)), "{m}");
    assert!(!m.contains(&in_force_metric(&newer)), "{m}");
    assert!(
        m.contains("tend_source_errors_total{reason=\"fetch\"} "),
        "the outage is a metric an alert can see: {m}"
    );

    // Back: the newer commit is applied, the error cleared.
    std::fs::rename(&moved, repo.bare()).unwrap();
    let answer = trigger_and_wait(&r).await;
    assert_eq!(answer["reconcile"]["revision"], newer.as_str(), "{answer}");
    let st = converged(&r, &repo, "2").await;
    assert!(st["source"]["fetch_error"].is_null(), "{}", st["source"]);
    assert!(metrics(&r).await.contains(&in_force_metric(&newer)));
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_pushed_history_is_refused_and_the_revision_in_force_stays() {
    let repo = Repo::new("fault-git-rewrite", &["rewrite"]);
    let first = repo.commit(&repo.manifests("1", ""), "v1");
    let good = repo.commit(&repo.manifests("2", ""), "v2");
    let r = controller::spawn(repo.config(NEVER)).await.unwrap();
    converged(&r, &repo, "2").await;

    // Rewrite: drop v2, commit v3 on top of v1, force-push.
    git(&repo.work(), &["reset", "-q", "--hard", &first]);
    let rewritten = repo.commit_forced(&repo.manifests("3", ""), "v3 rewritten");
    assert_ne!(rewritten, good);
    let answer = trigger_and_wait(&r).await;
    assert_eq!(answer["reconcile"]["revision"], good.as_str(), "{answer}");
    let st = get_json(r.addr, "/status").await;
    assert_eq!(st["source"]["revision"], good.as_str(), "{}", st["source"]);
    let why = st["source"]["fetch_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("rewritten") && why.contains(&good),
        "{}",
        st["source"]
    );
    converged(&r, &repo, "2").await;
    let m = metrics(&r).await;
    assert!(m.contains(&in_force_metric(&good)), "{m}");
    assert!(!m.contains(&in_force_metric(&rewritten)), "{m}");
    assert!(
        m.contains("tend_source_errors_total{reason=\"rewritten\"} "),
        "{m}"
    );
    r.stop().await;
}
