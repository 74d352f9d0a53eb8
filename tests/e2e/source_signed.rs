//! Signed commits, with real `git commit -S` (gpg.format=ssh) and real
//! ssh-keygen keys: a commit signed by an allowed signer converges; an
//! unsigned one, one signed by a stranger and a tampered one each keep the
//! last good revision, say why in /status and count in
//! `tend_source_errors_total{reason="signature"}`.

use super::common::http::get_json;
use super::common::repo::{converged, git, metrics, trigger_and_wait, Repo, NEVER};
use std::path::{Path, PathBuf};
use std::process::Command;
use tend::controller;

fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, public.trim().to_string())
}

/// Write the fleet, commit signed with `key` (None: unsigned), push.
fn commit(repo: &Repo, contents: &str, msg: &str, key: Option<&Path>) -> String {
    let dir = repo.work().join("fleet");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("fleet.yaml"), contents).unwrap();
    git(&repo.work(), &["add", "-A"]);
    match key {
        Some(k) => {
            let k = k.display().to_string();
            let sk = format!("user.signingkey={k}");
            git(
                &repo.work(),
                &[
                    "-c",
                    "gpg.format=ssh",
                    "-c",
                    &sk,
                    "commit",
                    "-q",
                    "-S",
                    "-m",
                    msg,
                ],
            );
        }
        None => {
            git(&repo.work(), &["commit", "-q", "-m", msg]);
        }
    }
    git(&repo.work(), &["push", "-q", "origin", "main"]);
    git(&repo.work(), &["rev-parse", "HEAD"])
}

/// The refusal in /status and the metric, after a trigger.
async fn refused(r: &controller::Running, good: &str, why: &str) {
    let answer = trigger_and_wait(r).await;
    assert_eq!(answer["reconcile"]["revision"], good, "{answer}");
    let st = get_json(r.addr, "/status").await;
    assert_eq!(st["source"]["revision"], good, "{}", st["source"]);
    let e = st["source"]["fetch_error"].as_str().unwrap_or_default();
    assert!(e.contains(why), "expected {why:?}: {}", st["source"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_commits_signed_by_an_allowed_signer_are_followed() {
    let repo = Repo::new("signed", &["sig"]);
    let dir = repo.tmp.path();
    let (alice, alice_pub) = keygen(dir, "alice");
    let (mallory, _) = keygen(dir, "mallory");
    let signers = dir.join("allowed_signers");
    std::fs::write(&signers, format!("alice@example.org {alice_pub}\n")).unwrap();

    let good = commit(&repo, &repo.manifests("1", ""), "v1", Some(&alice));
    let mut config = repo.config(NEVER);
    config.git.allowed_signers = Some(signers);
    let r = controller::spawn(config).await.unwrap();
    converged(&r, &repo, "1").await;

    // Unsigned on top of signed ones.
    commit(&repo, &repo.manifests("2", ""), "v2 unsigned", None);
    refused(&r, &good, "not signed").await;
    // Signed, by a key not in the file.
    commit(
        &repo,
        &repo.manifests("3", ""),
        "v3 by mallory",
        Some(&mallory),
    );
    refused(&r, &good, "not in allowed_signers").await;
    // Signed by alice, then its message changed: the signature no longer fits.
    let signed = commit(&repo, &repo.manifests("4", ""), "v4", Some(&alice));
    let raw = git(&repo.work(), &["cat-file", "commit", &signed]);
    let tampered_text = format!("{}\n", raw.replace("\n\nv4", "\n\nv4 with a backdoor"));
    let tmp = dir.join("tampered");
    std::fs::write(&tmp, tampered_text).unwrap();
    let t = tmp.display().to_string();
    let tampered = git(&repo.work(), &["hash-object", "-t", "commit", "-w", &t]);
    git(&repo.work(), &["reset", "-q", "--hard", &tampered]);
    git(&repo.work(), &["push", "-q", "-f", "origin", "main"]);
    refused(&r, &good, "bad signature").await;
    converged(&r, &repo, "1").await;
    let m = metrics(&r).await;
    let n: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("tend_source_errors_total{reason=\"signature\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(n >= 3.0, "three refusals counted: {m}");

    // A signed commit by alice on top converges.
    let next = commit(&repo, &repo.manifests("5", ""), "v5", Some(&alice));
    let answer = trigger_and_wait(&r).await;
    assert_eq!(answer["reconcile"]["revision"], next.as_str(), "{answer}");
    converged(&r, &repo, "5").await;
    r.stop().await;
}
