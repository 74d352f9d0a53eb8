//! The Git remote over SSH (libgit2 + libssh2 against a real sshd), its
//! host key in a hashed known_hosts as `ssh-keygen -H` writes it
//! (`HashKnownHosts yes`), on sshd's second port: the controller follows the
//! branch. A hashed known_hosts that names the remote with another key is
//! refused: nothing is fetched, `/status` says why.

use super::common::fleet;
use super::common::hosts_yaml;
use super::common::http::{eventually, free_port, get_json};
use super::common::repo::{git, NEVER};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tend::config::{Config, GitAuth};
use tend::controller;
use tend_e2e::testbed::ALT_PORT;

/// `lines` written to `dir/name`, then hashed in place by `ssh-keygen -H`.
fn hashed_known_hosts(dir: &Path, name: &str, lines: &str) -> PathBuf {
    let kh = dir.join(name);
    std::fs::write(&kh, lines).unwrap();
    let out = Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(&kh)
        .output()
        .expect("ssh-keygen runs");
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&kh).unwrap();
    assert!(
        text.lines().all(|l| l.starts_with("|1|")),
        "not hashed: {text}"
    );
    kh
}

fn config(dir: &Path, url: &str, key: &Path, known_hosts: PathBuf, name: &str) -> Config {
    Config {
        repository: url.into(),
        branch: "main".into(),
        path: "fleet".into(),
        schedule: NEVER.into(),
        listen: format!("127.0.0.1:{}", free_port()),
        cache_dir: dir.join(format!("cache-{name}")),
        ident: format!("e2e-ssh-{name}"),
        host_timeout: Duration::from_secs(60),
        git: GitAuth {
            ssh_key: Some(key.to_path_buf()),
            known_hosts: Some(known_hosts),
            ..GitAuth::default()
        },
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_remote_over_ssh_is_trusted_through_a_hashed_known_hosts_entry() {
    let Some(f) = fleet(
        "a_git_remote_over_ssh_is_trusted_through_a_hashed_known_hosts",
        1,
    ) else {
        return;
    };
    let h = f.host(0);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    // The remote: a bare repository on the host, pushed to from here.
    let bare = h.path("/srv/fleet.git");
    std::fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "--bare", "-q", "-b", "main"]);
    git(dir, &["clone", "-q", bare.to_str().unwrap(), "work"]);
    let work = dir.join("work");
    git(&work, &["checkout", "-q", "-b", "main"]);
    std::fs::create_dir_all(work.join("fleet")).unwrap();
    std::fs::write(work.join("fleet/hosts.yaml"), hosts_yaml(&f)).unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "v1"]);
    git(&work, &["push", "-q", "origin", "main"]);
    let head = git(&work, &["rev-parse", "HEAD"]);
    let url = format!("ssh://root@{}:{ALT_PORT}/srv/fleet.git", h.ip);

    // Trusted: the host's key for [ip]:2222, hashed.
    let good = hashed_known_hosts(
        dir,
        "known_hosts",
        &format!("[{}]:{ALT_PORT} {}\n", h.ip, h.host_key_line),
    );
    let r = controller::spawn(config(dir, &url, f.ed25519_key(), good, "good"))
        .await
        .unwrap();
    let st = eventually(120, "the revision fetched over ssh", || async {
        let st = get_json(r.addr, "/status").await;
        (st["source"]["revision"] == head.as_str()).then_some(st)
    })
    .await;
    assert_eq!(st["source"]["manifests_valid"], true, "{}", st["source"]);
    r.stop().await;

    // The same name hashed with another ed25519 key: refused.
    let wrong = hashed_known_hosts(
        dir,
        "known_hosts_wrong",
        &format!(
            "[{}]:{ALT_PORT} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGnst4mKePMqZT/3w8l/8WAIgdmrLutHhTtjJNp63fL6\n",
            h.ip
        ),
    );
    let r = controller::spawn(config(dir, &url, f.ed25519_key(), wrong, "wrong"))
        .await
        .unwrap();
    let st = eventually(120, "the fetch refused", || async {
        let st = get_json(r.addr, "/status").await;
        st["source"]["fetch_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
            .then_some(st)
    })
    .await;
    let why = st["source"]["fetch_error"].as_str().unwrap_or_default();
    assert!(why.contains("different key"), "{}", st["source"]);
    assert!(st["source"]["revision"].is_null(), "{}", st["source"]);
    r.stop().await;
}
