//! Fault: the Git remote (a file:// bare repository) becomes unreachable, or
//! its branch is force-pushed to a history that drops the revision in force.
//! The controller (`tend run`'s loop, in this process) keeps the last good
//! revision, says why in /status, and its metric still names that revision.

use super::controller::{eventually, get_json, http, Fleet as Repo};
use std::path::Path;
use std::process::Command;
use tend::controller::{self, Running};

const NEVER: &str = "0 0 1 1 *";

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "e2e")
        .env("GIT_AUTHOR_EMAIL", "e2e@example.org")
        .env("GIT_COMMITTER_NAME", "e2e")
        .env("GIT_COMMITTER_EMAIL", "e2e@example.org")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn token(repo: &Repo) -> String {
    let t =
        std::fs::read_to_string(repo.tmp.path().join("token")).expect("token written by config()");
    format!("Bearer {}", t.trim())
}

async fn reconcile(r: &Running, auth: &str) -> serde_json::Value {
    let (code, body) = http(
        r.addr,
        "POST",
        "/reconcile?wait=true",
        &[("Authorization", auth)],
        b"",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Every service of the repo in sync at `version`.
async fn in_sync_at(r: &Running, repo: &Repo, version: &str) -> serde_json::Value {
    eventually(120, &format!("in sync at {version}"), || async {
        let st = get_json(r.addr, "/status").await;
        let all = repo.services.keys().all(|name| {
            st["hosts"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|h| h["services"].as_array().into_iter().flatten())
                .any(|s| {
                    s["name"] == name.as_str()
                        && s["status"] == "in_sync"
                        && s["observed_version"] == version
                })
        });
        all.then_some(st)
    })
    .await
}

async fn metrics(r: &Running) -> String {
    let (code, body) = http(r.addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(code, 200);
    body
}

fn in_force_metric(rev: &str) -> String {
    format!("tend_source_info{{revision=\"{rev}\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_remote_keeps_the_last_good_revision_and_status_says_why() {
    let repo = Repo::new("fault-git-gone", &["gone"]);
    let good = repo.commit(&repo.manifests("1", ""), "v1");
    let r = controller::spawn(repo.config(NEVER)).await.unwrap();
    in_sync_at(&r, &repo, "1").await;
    let auth = token(&repo);

    // A newer commit is pushed, then the remote goes away before it is fetched.
    let newer = repo.commit(&repo.manifests("2", ""), "v2");
    let moved = repo.tmp.path().join("fleet.git.away");
    std::fs::rename(repo.bare(), &moved).unwrap();
    let answer = reconcile(&r, &auth).await;
    assert_eq!(answer["reconcile"]["revision"], good.as_str(), "{answer}");
    let st = get_json(r.addr, "/status").await;
    assert_eq!(st["source"]["revision"], good.as_str(), "{}", st["source"]);
    let why = st["source"]["fetch_error"].as_str().unwrap_or_default();
    assert!(why.contains("cannot reach"), "{}", st["source"]);
    in_sync_at(&r, &repo, "1").await;
    let m = metrics(&r).await;
    assert!(m.contains(&in_force_metric(&good)), "{m}");
    assert!(!m.contains(&in_force_metric(&newer)), "{m}");

    // Back: the newer commit is applied, the error cleared.
    std::fs::rename(&moved, repo.bare()).unwrap();
    let answer = reconcile(&r, &auth).await;
    assert_eq!(answer["reconcile"]["revision"], newer.as_str(), "{answer}");
    let st = in_sync_at(&r, &repo, "2").await;
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
    in_sync_at(&r, &repo, "2").await;
    let auth = token(&repo);

    // Rewrite: drop v2, commit v3 on top of v1, force-push.
    git(&repo.work(), &["reset", "-q", "--hard", &first]);
    let rewritten = repo.commit_forced(&repo.manifests("3", ""), "v3 rewritten");
    assert_ne!(rewritten, good);
    let answer = reconcile(&r, &auth).await;
    assert_eq!(answer["reconcile"]["revision"], good.as_str(), "{answer}");
    let st = get_json(r.addr, "/status").await;
    assert_eq!(st["source"]["revision"], good.as_str(), "{}", st["source"]);
    let why = st["source"]["fetch_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("rewritten") && why.contains(&good),
        "{}",
        st["source"]
    );
    in_sync_at(&r, &repo, "2").await;
    let m = metrics(&r).await;
    assert!(m.contains(&in_force_metric(&good)), "{m}");
    assert!(!m.contains(&in_force_metric(&rewritten)), "{m}");
    r.stop().await;
}

trait ForcePush {
    fn commit_forced(&self, contents: &str, msg: &str) -> String;
}

impl ForcePush for Repo {
    fn commit_forced(&self, contents: &str, msg: &str) -> String {
        let dir = self.work().join("fleet");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("fleet.yaml"), contents).unwrap();
        git(&self.work(), &["add", "-A"]);
        git(&self.work(), &["commit", "-q", "-m", msg]);
        git(&self.work(), &["push", "-q", "-f", "origin", "main"]);
        git(&self.work(), &["rev-parse", "HEAD"])
    }
}
