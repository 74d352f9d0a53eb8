//! A Git branch: a bare clone in the cache dir, the remote head asked for on
//! every poll (ls-remote: connect + list) and fetched only when it moved; files
//! are read from the commit's tree, never checked out.

use super::{Poll, Snapshot, SourceError, TreeFile};
use git2::{
    AutotagOption, CredentialType, Direction, FetchOptions, ObjectType, Oid, RemoteCallbacks,
    Repository, TreeWalkMode, TreeWalkResult,
};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Files larger than this are left out of a snapshot (manifest repos hold text).
const MAX_FILE: usize = 16 << 20;

#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub ssh_key: Option<PathBuf>,
    /// known_hosts for ssh remotes (plain or hashed entries, checked by the
    /// hosts' own code); without it libgit2's own check applies.
    pub known_hosts: Option<PathBuf>,
    /// HTTPS token (never logged).
    pub token: Option<String>,
    pub username: Option<String>,
}

pub struct GitSource {
    url: String,
    branch: String,
    bare: PathBuf,
    creds: Arc<Credentials>,
    allow_rewrites: bool,
    /// When set, a head commit without a valid signature by one of these is refused.
    signers: Option<Arc<super::signature::AllowedSigners>>,
    /// The commit of the last snapshot handed out.
    seen: Option<Oid>,
}

impl GitSource {
    /// `cache_dir/git/<hash of url>.git` holds the bare clone.
    pub fn new(
        url: &str,
        branch: &str,
        cache_dir: &Path,
        creds: Credentials,
        allow_rewrites: bool,
    ) -> GitSource {
        let tag = hex::encode(&Sha256::digest(url.as_bytes())[..8]);
        GitSource {
            url: url.into(),
            branch: branch.into(),
            bare: cache_dir.join("git").join(format!("{tag}.git")),
            creds: Arc::new(creds),
            allow_rewrites,
            signers: None,
            seen: None,
        }
    }

    /// Take only revisions whose head commit `signers` signed.
    pub fn verify_with(mut self, signers: super::signature::AllowedSigners) -> GitSource {
        self.signers = Some(Arc::new(signers));
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }
    pub fn branch(&self) -> &str {
        &self.branch
    }

    pub async fn poll(&mut self, in_force: Option<&str>) -> Result<Poll, SourceError> {
        let url = self.url.clone();
        let branch = self.branch.clone();
        let bare = self.bare.clone();
        let creds = self.creds.clone();
        let seen = self.seen;
        let in_force = in_force.and_then(|r| Oid::from_str(r).ok());
        let allow_rewrites = self.allow_rewrites;
        let signers = self.signers.clone();
        let res = tokio::task::spawn_blocking(move || {
            let res = poll_blocking(&url, &branch, &bare, &creds, seen, in_force, allow_rewrites)?;
            if let (Poll::Changed(s), Some(signers)) = (&res, &signers) {
                verify_head(&open_or_init(&bare)?, &s.revision, signers)?;
            }
            Ok::<Poll, SourceError>(res)
        })
        .await
        .map_err(|e| SourceError::Git(format!("poll task: {e}")))??;
        if let Poll::Changed(s) = &res {
            self.seen = Oid::from_str(&s.revision).ok();
        }
        Ok(res)
    }
}

fn open_or_init(bare: &Path) -> Result<Repository, SourceError> {
    match Repository::open_bare(bare) {
        Ok(r) => Ok(r),
        Err(_) => {
            std::fs::create_dir_all(bare).map_err(|e| super::io_err(bare, e))?;
            Ok(Repository::init_bare(bare)?)
        }
    }
}

/// Why the host-key check refused the remote: libgit2 reports only "invalid
/// or unknown remote ssh hostkey", so the reason is kept here for the error.
type Refusal = std::sync::Mutex<Option<String>>;

/// The host-key refusal if there was one, else libgit2's message.
fn why(e: &git2::Error, refused: &Refusal) -> String {
    refused
        .lock()
        .ok()
        .and_then(|mut r| r.take())
        .unwrap_or_else(|| e.message().to_string())
}

fn callbacks<'a>(url: &str, creds: &'a Credentials, refused: &'a Refusal) -> RemoteCallbacks<'a> {
    let port = ssh_port(url);
    let mut cb = RemoteCallbacks::new();
    // libgit2 calls back until it gets a working credential: bound the tries.
    let tries = AtomicU32::new(0);
    cb.credentials(move |_url, user_from_url, allowed| {
        if tries.fetch_add(1, Ordering::Relaxed) >= 3 {
            return Err(git2::Error::from_str("credentials refused"));
        }
        if allowed.contains(CredentialType::SSH_KEY) {
            if let Some(key) = &creds.ssh_key {
                return git2::Cred::ssh_key(user_from_url.unwrap_or("git"), None, key, None);
            }
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            if let Some(token) = &creds.token {
                let user = creds
                    .username
                    .as_deref()
                    .or(user_from_url)
                    .unwrap_or("x-access-token");
                return git2::Cred::userpass_plaintext(user, token);
            }
        }
        if allowed.contains(CredentialType::USERNAME) {
            return git2::Cred::username(user_from_url.unwrap_or("git"));
        }
        git2::Cred::default()
    });
    if let Some(kh) = &creds.known_hosts {
        cb.certificate_check(move |cert, host| {
            let Some(key) = cert.as_hostkey().and_then(|k| k.hostkey()) else {
                // Not ssh (TLS): leave it to libgit2's checks.
                return Ok(git2::CertificateCheckStatus::CertificatePassthrough);
            };
            check_host_key(kh, host, port, key)
                .map(|()| git2::CertificateCheckStatus::CertificateOk)
                .map_err(|why| {
                    let e = git2::Error::from_str(&why);
                    if let Ok(mut r) = refused.lock() {
                        *r = Some(why);
                    }
                    e
                })
        });
    }
    cb
}

/// Whether `known_hosts` trusts `key` (the raw key blob the server offered)
/// for `host:port`: the hosts' own check (`transport::hostkey`), so hashed
/// entries (`HashKnownHosts yes`), `[host]:port`, wildcards and `@revoked`
/// mean the same for the Git remote as for a managed host.
pub fn check_host_key(known_hosts: &Path, host: &str, port: u16, key: &[u8]) -> Result<(), String> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(key);
    let key = russh::keys::parse_public_key_base64(&b64)
        .map_err(|e| format!("the Git server {host} offered a host key tend cannot read: {e}"))?;
    let trust = crate::transport::hostkey::Trust::KnownHosts(known_hosts.to_path_buf());
    crate::transport::hostkey::verify(&trust, host, port, &key)
}

/// The SSH port of a Git URL: `ssh://[user@]host[:port]/path` (also
/// `git+ssh://`, `ssh+git://`), 22 for scp-style `user@host:path` and anything else.
pub fn ssh_port(url: &str) -> u16 {
    let Some((scheme, rest)) = url.split_once("://") else {
        return 22;
    };
    if !matches!(scheme, "ssh" | "git+ssh" | "ssh+git") {
        return 22;
    }
    let authority = rest.split('/').next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    // `[v6::addr]:port` or `host:port`.
    let port = match hostport.strip_prefix('[') {
        Some(v6) => v6.split_once("]:").map(|(_, p)| p),
        None => hostport.split_once(':').map(|(_, p)| p),
    };
    port.and_then(|p| p.parse().ok()).unwrap_or(22)
}

/// The commit the remote branch points at (ls-remote).
fn remote_head(
    repo: &Repository,
    url: &str,
    branch: &str,
    creds: &Credentials,
) -> Result<Oid, SourceError> {
    let refused = Refusal::default();
    let mut remote = repo.remote_anonymous(url)?;
    let conn = remote
        .connect_auth(
            Direction::Fetch,
            Some(callbacks(url, creds, &refused)),
            None,
        )
        .map_err(|e| SourceError::Unreachable {
            url: super::redact_url(url),
            why: why(&e, &refused),
        })?;
    let want = format!("refs/heads/{branch}");
    let heads = conn.list()?;
    heads
        .iter()
        .find(|h| h.name() == want)
        .map(|h| h.oid())
        .ok_or_else(|| SourceError::NoBranch {
            url: super::redact_url(url),
            branch: branch.into(),
        })
}

fn fetch(
    repo: &Repository,
    url: &str,
    branch: &str,
    creds: &Credentials,
) -> Result<(), SourceError> {
    let refused = Refusal::default();
    let mut remote = repo.remote_anonymous(url)?;
    let mut fo = FetchOptions::new();
    fo.remote_callbacks(callbacks(url, creds, &refused));
    fo.download_tags(AutotagOption::None);
    let spec = format!("+refs/heads/{branch}:refs/remotes/origin/{branch}");
    remote
        .fetch(&[spec], Some(&mut fo), None)
        .map_err(|e| SourceError::Unreachable {
            url: super::redact_url(url),
            why: why(&e, &refused),
        })
}

fn poll_blocking(
    url: &str,
    branch: &str,
    bare: &Path,
    creds: &Credentials,
    seen: Option<Oid>,
    in_force: Option<Oid>,
    allow_rewrites: bool,
) -> Result<Poll, SourceError> {
    let repo = open_or_init(bare)?;
    let head = remote_head(&repo, url, branch, creds)?;
    if seen == Some(head) {
        return Ok(Poll::Unchanged {
            revision: head.to_string(),
        });
    }
    if repo.find_commit(head).is_err() {
        fetch(&repo, url, branch, creds)?;
    }
    let commit = repo
        .find_commit(head)
        .map_err(|e| SourceError::Git(format!("{head} not found after fetch: {}", e.message())))?;
    if let Some(old) = in_force {
        if old != head && !allow_rewrites && !repo.graph_descendant_of(head, old).unwrap_or(false) {
            return Err(SourceError::Rewritten {
                branch: branch.into(),
                old: old.to_string(),
                new: head.to_string(),
            });
        }
    }
    let files = read_tree(&repo, &commit.tree()?)?;
    Ok(Poll::Changed(Snapshot {
        revision: head.to_string(),
        subject: commit.summary().ok().flatten().unwrap_or("").to_string(),
        files,
    }))
}

/// The head commit carries a valid SSH signature by an allowed signer.
fn verify_head(
    repo: &Repository,
    revision: &str,
    signers: &super::signature::AllowedSigners,
) -> Result<(), SourceError> {
    let refuse = |why: String| SourceError::Signature {
        revision: revision.to_string(),
        why,
    };
    let oid = Oid::from_str(revision).map_err(|e| refuse(e.message().to_string()))?;
    let (sig, data) = match repo.extract_signature(&oid, None) {
        Ok(x) => x,
        Err(_) => return Err(refuse("the head commit is not signed".into())),
    };
    match signers.verify(&sig, &data) {
        Ok(who) => {
            tracing::info!(revision, signer = %who, "signature verified");
            Ok(())
        }
        Err(why) => Err(refuse(why)),
    }
}

/// Every blob of the tree: regular and executable files; symlinks and
/// submodules are left out.
pub fn read_tree(repo: &Repository, tree: &git2::Tree<'_>) -> Result<Vec<TreeFile>, SourceError> {
    let mut files = Vec::new();
    let mut err = None;
    tree.walk(TreeWalkMode::PreOrder, |root, entry| {
        if entry.kind() != Some(ObjectType::Blob) {
            return TreeWalkResult::Ok;
        }
        let mode = entry.filemode();
        if mode != 0o100644 && mode != 0o100755 {
            return TreeWalkResult::Ok;
        }
        let Ok(name) = entry.name() else {
            return TreeWalkResult::Ok;
        };
        match repo.find_blob(entry.id()) {
            Ok(blob) if blob.size() <= MAX_FILE => files.push(TreeFile {
                path: format!("{root}{name}"),
                executable: mode == 0o100755,
                contents: blob.content().to_vec(),
            }),
            Ok(_) => {}
            Err(e) => {
                err = Some(SourceError::from(e));
                return TreeWalkResult::Abort;
            }
        }
        TreeWalkResult::Ok
    })?;
    match err {
        Some(e) => Err(e),
        None => Ok(files),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use git2::Signature;

    fn commit(repo: &Repository, files: &[(&str, &str)], msg: &str) -> Oid {
        let mut index = repo.index().unwrap();
        let work = repo.workdir().unwrap().to_path_buf();
        for (p, c) in files {
            let full = work.join(p);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(&full, c).unwrap();
            index.add_path(Path::new(p)).unwrap();
        }
        index.write().unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = Signature::now("t", "t@example.org").unwrap();
        let parents: Vec<git2::Commit<'_>> = repo
            .head()
            .ok()
            .and_then(|h| h.peel_to_commit().ok())
            .into_iter()
            .collect();
        let parents: Vec<&git2::Commit<'_>> = parents.iter().collect();
        repo.commit(Some("HEAD"), &sig, &sig, msg, &tree, &parents)
            .unwrap()
    }

    fn upstream() -> (tempfile::TempDir, Repository) {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        repo.set_head("refs/heads/main").unwrap();
        (dir, repo)
    }

    #[tokio::test]
    async fn a_new_commit_is_fetched_and_an_old_one_is_not_read_again() {
        let (up, repo) = upstream();
        let c1 = commit(&repo, &[("manifests/a.yaml", "a: 1\n")], "first");
        let cache = tempfile::tempdir().unwrap();
        let url = format!("file://{}", up.path().display());
        let mut src = GitSource::new(&url, "main", cache.path(), Credentials::default(), false);

        let Poll::Changed(s) = src.poll(None).await.unwrap() else {
            panic!("first poll")
        };
        assert_eq!(s.revision, c1.to_string());
        assert_eq!(s.subject, "first");
        assert_eq!(
            s.files,
            vec![TreeFile {
                path: "manifests/a.yaml".into(),
                executable: false,
                contents: b"a: 1\n".to_vec()
            }]
        );
        assert!(matches!(
            src.poll(Some(&s.revision)).await.unwrap(),
            Poll::Unchanged { .. }
        ));

        let c2 = commit(&repo, &[("manifests/b.yaml", "b: 2\n")], "second");
        let Poll::Changed(s2) = src.poll(Some(&s.revision)).await.unwrap() else {
            panic!("second")
        };
        assert_eq!(s2.revision, c2.to_string());
        assert_eq!(s2.files.len(), 2);
    }

    #[tokio::test]
    async fn rewritten_history_is_refused() {
        let (up, repo) = upstream();
        let c1 = commit(&repo, &[("a", "1")], "first");
        let c2 = commit(&repo, &[("a", "2")], "second");
        let cache = tempfile::tempdir().unwrap();
        let url = format!("file://{}", up.path().display());
        let mut src = GitSource::new(&url, "main", cache.path(), Credentials::default(), false);
        let Poll::Changed(s) = src.poll(None).await.unwrap() else {
            panic!()
        };
        assert_eq!(s.revision, c2.to_string());
        // Force-push: main back to c1 plus a different commit.
        repo.reference("refs/heads/main", c1, true, "reset")
            .unwrap();
        let sig = Signature::now("t", "t@example.org").unwrap();
        let tree = repo.find_commit(c1).unwrap().tree().unwrap();
        let parent = repo.find_commit(c1).unwrap();
        repo.commit(
            Some("refs/heads/main"),
            &sig,
            &sig,
            "other",
            &tree,
            &[&parent],
        )
        .unwrap();
        let err = src.poll(Some(&s.revision)).await.unwrap_err();
        assert_eq!(err.metric_label(), "rewritten", "{err}");
    }

    // Two real ed25519 public keys (ssh-keygen), as known_hosts writes them.
    const A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIGnst4mKePMqZT/3w8l/8WAIgdmrLutHhTtjJNp63fL6";
    const B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAILzTgg3jmKaP81c9WHaf40L65QjD15URDS8jM9psPWSN";

    fn blob(b64: &str) -> Vec<u8> {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    }

    /// `|1|salt|hmac` as `ssh-keygen -H` writes it.
    fn hashed(name: &str, salt: &[u8]) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, salt);
        let tag = ring::hmac::sign(&k, name.as_bytes());
        format!("|1|{}|{}", b64.encode(salt), b64.encode(tag.as_ref()))
    }

    #[test]
    fn a_plain_known_host_matches_by_name_and_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let kh = dir.path().join("known_hosts");
        std::fs::write(
            &kh,
            format!("# comment\ngit.example,10.0.0.1 ssh-ed25519 {A}\n[git.other]:2222 ssh-ed25519 {B}\n"),
        )
        .unwrap();
        assert!(check_host_key(&kh, "git.example", 22, &blob(A)).is_ok());
        assert!(check_host_key(&kh, "git.other", 2222, &blob(B)).is_ok());
        let changed = check_host_key(&kh, "git.example", 22, &blob(B)).unwrap_err();
        assert!(changed.contains("different key"), "{changed}");
        let unknown = check_host_key(&kh, "evil.example", 22, &blob(A)).unwrap_err();
        assert!(unknown.contains("no entry for evil.example"), "{unknown}");
    }

    #[test]
    fn a_hashed_known_host_trusts_the_git_remote_on_its_port() {
        let dir = tempfile::tempdir().unwrap();
        let kh = dir.path().join("known_hosts");
        std::fs::write(
            &kh,
            format!(
                "{} ssh-ed25519 {A}\n{} ssh-ed25519 {B}\n",
                hashed("git.example", b"0123456789abcdefghij"),
                hashed("[git.other]:2222", b"saltsaltsaltsaltsalt"),
            ),
        )
        .unwrap();
        let port = ssh_port("git@git.example:org/fleet.git");
        assert!(check_host_key(&kh, "git.example", port, &blob(A)).is_ok());
        let port = ssh_port("ssh://git@git.other:2222/org/fleet.git");
        assert!(check_host_key(&kh, "git.other", port, &blob(B)).is_ok());
        // The hashed entry names one host and one key.
        assert!(check_host_key(&kh, "git.example", 22, &blob(B)).is_err());
        assert!(check_host_key(&kh, "git.other", 22, &blob(B)).is_err());
        assert!(check_host_key(&kh, "git.example2", 22, &blob(A)).is_err());
    }

    #[test]
    fn a_revoked_key_is_refused_for_the_git_remote_too() {
        let dir = tempfile::tempdir().unwrap();
        let kh = dir.path().join("known_hosts");
        std::fs::write(
            &kh,
            format!(
                "{} ssh-ed25519 {A}\n@revoked * ssh-ed25519 {A}\n",
                hashed("git.example", b"0123456789abcdefghij")
            ),
        )
        .unwrap();
        let why = check_host_key(&kh, "git.example", 22, &blob(A)).unwrap_err();
        assert!(why.contains("@revoked"), "{why}");
    }

    #[test]
    fn the_ssh_port_comes_from_the_url() {
        assert_eq!(ssh_port("ssh://git@git.example:2222/org/f.git"), 2222);
        assert_eq!(ssh_port("ssh://git.example/org/f.git"), 22);
        assert_eq!(ssh_port("git+ssh://u@[2001:db8::1]:2200/f.git"), 2200);
        assert_eq!(ssh_port("git@git.example:org/f.git"), 22);
        assert_eq!(ssh_port("https://git.example:8443/f.git"), 22);
    }

    #[tokio::test]
    async fn an_unreachable_remote_is_an_error_not_a_panic() {
        let cache = tempfile::tempdir().unwrap();
        let mut src = GitSource::new(
            "file:///nonexistent/tend-repo",
            "main",
            cache.path(),
            Credentials::default(),
            false,
        );
        let err = src.poll(None).await.unwrap_err();
        assert_eq!(err.metric_label(), "unreachable", "{err}");
    }
}
