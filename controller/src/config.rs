//! The controller's own configuration: `tend.yaml`.
//!
//! Everything has a default so that `tend run` without a file runs the demo.
//! Environment variables (`TEND_LISTEN`, `TEND_SCHEDULE`, ...) override the
//! file, so one file can serve several shards.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the demo listens, and where `tend status`/`tend trigger` look by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9617";
/// Manifests of the demo fleet, relative to the repository root.
pub const DEMO_PATH: &str = "manifests/demo";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {why}")]
    Read { file: String, why: String },
    #[error("{file}:{line}:{column}: {why}")]
    Syntax {
        file: String,
        line: u64,
        column: u64,
        why: String,
    },
    #[error("{file}: {why}")]
    Invalid { file: String, why: String },
    #[error("environment variable {var}: {why}")]
    Env { var: &'static str, why: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// A Git URL (`https://…`, `ssh://…`, `git@host:org/repo.git`, `file:///…`)
    /// or a local directory, which is watched for changes instead of polled.
    pub repository: String,
    /// Branch to follow (Git sources only).
    pub branch: String,
    /// Manifests directory inside the repository.
    pub path: String,
    /// Cron schedule: 5 POSIX fields, or 6 with seconds first.
    pub schedule: String,
    pub listen: String,
    /// File holding the bearer token for `POST /reconcile`.
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the bearer token.
    pub token_env: Option<String>,
    /// File holding the shared secret of push webhooks (GitHub / Gitea).
    pub webhook_secret_file: Option<PathBuf>,
    /// Credentials for the Git remote.
    pub git: GitAuth,
    /// Defaults for hosts that declare no identity / pinned keys.
    pub ssh: SshDefaults,
    /// Keys for secrets kept encrypted in Git.
    pub secrets: SecretsConfig,
    pub prune: PrunePolicy,
    /// Hosts probed at once. A no-op reconcile waits on round trips, not
    /// on the controller: a high default fits.
    pub concurrency: usize,
    /// Actions (install, start, stop, health gate) running at once across
    /// the fleet: a startup converge of many hosts is paced by it.
    pub apply_parallelism: usize,
    /// Longest one host's probe (observe, connect included) may take before
    /// it counts as unreachable.
    #[serde(with = "humantime_serde")]
    pub host_timeout: Duration,
    /// Longest a script waits on a host for another script's lock (`flock`).
    #[serde(with = "humantime_serde")]
    pub lock_wait: Duration,
    /// Longest one script (install, start, stop, prune) may run on a host.
    #[serde(with = "humantime_serde")]
    pub script_timeout: Duration,
    /// Longest one host's whole apply may take: past it, its actions still
    /// waiting or running are reported failed and its lock is released,
    /// while the other hosts carry on.
    #[serde(with = "humantime_serde")]
    pub host_deadline: Duration,
    /// Longest an unreachable host is left alone before the next attempt.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Only hosts carrying all these labels (sharding across controllers).
    pub selector: BTreeMap<String, String>,
    pub notifications: Vec<NotificationSink>,
    /// Bare clone of the repository and other controller-local files.
    pub cache_dir: PathBuf,
    /// This controller's name: owner of host locks, shown in status.
    pub ident: String,
    /// Reconciles kept in `/status`.
    pub history: usize,
    /// Sync windows: when drift may be acted on (`window` module).
    pub windows: Vec<crate::window::WindowSpec>,
    /// The record of what reconciles did (`ledger` module).
    pub ledger: crate::ledger::LedgerConfig,
    /// observe / approve / auto per service or host (`approval` module).
    pub mode: crate::approval::Modes,
    /// Report each reconciled revision to the forge as a commit status.
    pub commit_status: Option<crate::forge::ForgeConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GitAuth {
    /// Private key for `ssh://` and scp-style remotes.
    pub ssh_key: Option<PathBuf>,
    /// known_hosts for the Git server (ssh remotes).
    pub known_hosts: Option<PathBuf>,
    /// HTTPS token, from a file ...
    pub token_file: Option<PathBuf>,
    /// ... or an environment variable.
    pub token_env: Option<String>,
    /// User name sent with the token (GitHub accepts any; Gitea wants the owner).
    pub username: Option<String>,
    /// Take only revisions whose head commit carries a valid SSH signature by
    /// a key in this OpenSSH allowed-signers file (Git sources only).
    pub allowed_signers: Option<PathBuf>,
    /// Accept a branch whose new head does not descend from the revision in
    /// force (force push). Off: the old revision stays and status says why.
    pub allow_rewrites: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshDefaults {
    pub identity: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    /// Longest an SSH connection may take to set up (default 10 s).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// age identity file (`age-keygen` output) that decrypts `fromAge`
    /// values; read on every load, so a rotated key needs no restart.
    pub age_identities: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrunePolicy {
    /// Remove services tend installed that left Git.
    pub enabled: bool,
    /// Largest share of a host's services removed in one run (0..=1).
    pub max_share: f64,
    /// Ignore `max_share`.
    pub force: bool,
}

impl Default for PrunePolicy {
    fn default() -> Self {
        PrunePolicy {
            enabled: true,
            max_share: 0.5,
            force: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// The event as JSON.
    Generic,
    /// `{"text": …}` (Slack incoming webhook, Mattermost, …).
    Slack,
    /// `{"msgtype":"text","text":{"content": …}}`.
    Dingtalk,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationSink {
    pub kind: SinkKind,
    pub url: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            repository: ".".into(),
            branch: "main".into(),
            path: DEMO_PATH.into(),
            schedule: "*/10 * * * * *".into(),
            listen: DEFAULT_LISTEN.into(),
            token_file: None,
            token_env: None,
            webhook_secret_file: None,
            git: GitAuth::default(),
            ssh: SshDefaults::default(),
            secrets: SecretsConfig::default(),
            prune: PrunePolicy::default(),
            concurrency: 64,
            apply_parallelism: 16,
            host_timeout: Duration::from_secs(120),
            lock_wait: Duration::from_secs(30),
            script_timeout: Duration::from_secs(600),
            host_deadline: Duration::from_secs(1800),
            max_backoff: Duration::from_secs(300),
            selector: BTreeMap::new(),
            notifications: Vec::new(),
            cache_dir: PathBuf::from(".tend"),
            ident: default_ident(),
            history: 20,
            windows: Vec::new(),
            ledger: crate::ledger::LedgerConfig::default(),
            mode: crate::approval::Modes::default(),
            commit_status: None,
        }
    }
}

fn default_ident() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("tend@{host}")
}

/// Where the manifests come from, decided from `repository`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    Git { url: String, branch: String },
    Dir { root: PathBuf },
}

impl Config {
    /// The embedded demo: the current directory, `manifests/demo`.
    pub fn demo() -> Config {
        Config::default()
    }

    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let name = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError::Read {
            file: name.clone(),
            why: e.to_string(),
        })?;
        let mut cfg = Config::parse(&text, &name)?;
        // Relative paths in the file are relative to the file.
        if let Some(dir) = file.parent() {
            cfg.rebase(dir);
        }
        Ok(cfg)
    }

    pub fn parse(text: &str, name: &str) -> Result<Config, ConfigError> {
        let cfg: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| {
                let (line, column) = e
                    .location()
                    .map(|l| (l.line(), l.column()))
                    .unwrap_or((0, 0));
                // The library's message repeats the position and adds a snippet: keep the gist.
                let full = e.to_string();
                let first = full
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim_start_matches("error: ");
                let why = match first.split_once(": ") {
                    Some((pos, rest)) if pos.starts_with("line ") => rest.to_string(),
                    _ => first.to_string(),
                };
                ConfigError::Syntax {
                    file: name.into(),
                    line,
                    column,
                    why,
                }
            })?
        };
        cfg.validate().map_err(|why| ConfigError::Invalid {
            file: name.into(),
            why,
        })?;
        Ok(cfg)
    }

    fn rebase(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !dir.as_os_str().is_empty() {
                *p = dir.join(&*p);
            }
        };
        for p in [
            self.token_file.as_mut(),
            self.webhook_secret_file.as_mut(),
            self.git.ssh_key.as_mut(),
            self.git.known_hosts.as_mut(),
            self.git.token_file.as_mut(),
            self.git.allowed_signers.as_mut(),
            self.ssh.identity.as_mut(),
            self.ssh.known_hosts.as_mut(),
            self.ledger.path.as_mut(),
            self.commit_status.as_mut().map(|c| &mut c.token_file),
            self.secrets.age_identities.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
        fix(&mut self.cache_dir);
        if !is_git_url(&self.repository) {
            let mut r = PathBuf::from(&self.repository);
            fix(&mut r);
            self.repository = r.display().to_string();
        }
    }

    /// Apply `TEND_*` environment overrides.
    pub fn apply_env(&mut self) -> Result<(), ConfigError> {
        self.apply_env_from(|k| std::env::var(k).ok())
    }

    pub fn apply_env_from(
        &mut self,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let set = |v: &mut String, k: &str| {
            if let Some(x) = get(k).filter(|x| !x.is_empty()) {
                *v = x;
            }
        };
        set(&mut self.repository, "TEND_REPOSITORY");
        set(&mut self.branch, "TEND_BRANCH");
        set(&mut self.path, "TEND_PATH");
        set(&mut self.schedule, "TEND_SCHEDULE");
        set(&mut self.listen, "TEND_LISTEN");
        set(&mut self.ident, "TEND_IDENT");
        if let Some(v) = get("TEND_CACHE_DIR").filter(|x| !x.is_empty()) {
            self.cache_dir = v.into();
        }
        if let Some(v) = get("TEND_TOKEN_FILE").filter(|x| !x.is_empty()) {
            self.token_file = Some(v.into());
        }
        if let Some(v) = get("TEND_AGE_IDENTITIES").filter(|x| !x.is_empty()) {
            self.secrets.age_identities = Some(v.into());
        }
        if let Some(v) = get("TEND_SELECTOR").filter(|x| !x.is_empty()) {
            self.selector = parse_selectors(v.split(',')).map_err(|why| ConfigError::Env {
                var: "TEND_SELECTOR",
                why,
            })?;
        }
        if let Some(v) = get("TEND_CONCURRENCY").filter(|x| !x.is_empty()) {
            self.concurrency = v.parse().map_err(|e| ConfigError::Env {
                var: "TEND_CONCURRENCY",
                why: format!("{e}"),
            })?;
        }
        if let Some(v) = get("TEND_APPLY_PARALLELISM").filter(|x| !x.is_empty()) {
            self.apply_parallelism = v.parse().map_err(|e| ConfigError::Env {
                var: "TEND_APPLY_PARALLELISM",
                why: format!("{e}"),
            })?;
        }
        if let Some(v) = get("TEND_HOST_TIMEOUT").filter(|x| !x.is_empty()) {
            self.host_timeout = humantime::parse_duration(&v).map_err(|e| ConfigError::Env {
                var: "TEND_HOST_TIMEOUT",
                why: e.to_string(),
            })?;
        }
        self.validate().map_err(|why| ConfigError::Invalid {
            file: "environment".into(),
            why,
        })
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.repository.is_empty() {
            return Err("repository: must not be empty".into());
        }
        crate::controller::schedule::Schedule::parse(&self.schedule)
            .map_err(|e| format!("schedule: {e}"))?;
        self.listen_addr()?;
        if !(0.0..=1.0).contains(&self.prune.max_share) {
            return Err(format!(
                "prune.max_share: {} is not between 0 and 1",
                self.prune.max_share
            ));
        }
        if self.concurrency == 0 {
            return Err("concurrency: must be at least 1".into());
        }
        if self.apply_parallelism == 0 {
            return Err("apply_parallelism: must be at least 1".into());
        }
        if self.history == 0 {
            return Err("history: must be at least 1".into());
        }
        for (name, d) in [
            ("host_timeout", self.host_timeout),
            ("lock_wait", self.lock_wait),
            ("script_timeout", self.script_timeout),
            ("host_deadline", self.host_deadline),
        ] {
            if d.is_zero() {
                return Err(format!("{name}: must be positive"));
            }
        }
        crate::window::Windows::new(&self.windows).map_err(|e| e.to_string())?;
        if let Some(c) = &self.commit_status {
            if !(c.api_url.starts_with("https://") || c.api_url.starts_with("http://")) {
                return Err(format!(
                    "commit_status.api_url: {:?} is not an http(s) URL",
                    c.api_url
                ));
            }
            if c.repository.trim_matches('/').is_empty() {
                return Err("commit_status.repository: must not be empty".into());
            }
        }
        for n in &self.notifications {
            if !(n.url.starts_with("http://") || n.url.starts_with("https://")) {
                return Err(format!("notifications: {:?} is not an http(s) URL", n.url));
            }
        }
        Ok(())
    }

    /// Where the ledger is kept: `ledger.path`, or beside the Git cache.
    pub fn ledger_path(&self) -> PathBuf {
        self.ledger
            .path
            .clone()
            .unwrap_or_else(|| self.cache_dir.join("ledger.jsonl"))
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        self.listen
            .parse()
            .map_err(|e| format!("listen: {:?} is not host:port ({e})", self.listen))
    }

    pub fn source_spec(&self) -> SourceSpec {
        if is_git_url(&self.repository) {
            SourceSpec::Git {
                url: self.repository.clone(),
                branch: self.branch.clone(),
            }
        } else {
            SourceSpec::Dir {
                root: PathBuf::from(&self.repository),
            }
        }
    }

    /// The bearer token for `POST /reconcile`, if one is configured.
    pub fn token(&self) -> Result<Option<String>, ConfigError> {
        if let Some(var) = &self.token_env {
            if let Ok(v) = std::env::var(var) {
                if !v.trim().is_empty() {
                    return Ok(Some(v.trim().to_string()));
                }
            }
        }
        match &self.token_file {
            Some(f) => read_secret(f).map(Some),
            None => Ok(None),
        }
    }

    pub fn webhook_secret(&self) -> Result<Option<String>, ConfigError> {
        self.webhook_secret_file
            .as_deref()
            .map(read_secret)
            .transpose()
    }
}

/// Read a one-line secret file; its contents never appear in the error.
pub fn read_secret(f: &Path) -> Result<String, ConfigError> {
    let s = std::fs::read_to_string(f).map_err(|e| ConfigError::Read {
        file: f.display().to_string(),
        why: e.to_string(),
    })?;
    let s = s.trim().to_string();
    if s.is_empty() {
        return Err(ConfigError::Invalid {
            file: f.display().to_string(),
            why: "empty".into(),
        });
    }
    Ok(s)
}

/// URLs and scp-style `user@host:path` are Git remotes; anything else is a directory.
pub fn is_git_url(s: &str) -> bool {
    if s.contains("://") {
        return true;
    }
    match s.split_once(':') {
        Some((before, _)) => before.contains('@') && !before.contains('/'),
        None => false,
    }
}

/// `key=value` items into a label selector.
pub fn parse_selectors<'a>(
    items: impl IntoIterator<Item = &'a str>,
) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for item in items {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("selector {item:?} is not key=value"))?;
        if k.is_empty() {
            return Err(format!("selector {item:?} has no key"));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_demo() {
        let c = Config::parse("", "tend.yaml").unwrap();
        assert_eq!(c.path, DEMO_PATH);
        assert_eq!(c.listen, DEFAULT_LISTEN);
        assert_eq!(c.source_spec(), SourceSpec::Dir { root: ".".into() });
    }

    #[test]
    fn windows_parse_and_a_bad_time_zone_is_refused_by_name() {
        let ok = "windows:\n  - name: freeze\n    kind: deny\n    schedule: '0 9 * * 1-5'\n    duration: 9h\n    timezone: Europe/Berlin\n    manual_override: true\n";
        let c = Config::parse(ok, "tend.yaml").unwrap();
        assert_eq!(c.windows.len(), 1);
        assert!(c.windows[0].manual_override);
        let bad = ok.replace("Europe/Berlin", "Europe/Nowhere");
        let e = Config::parse(&bad, "tend.yaml").unwrap_err().to_string();
        assert!(
            e.contains("\"freeze\"") && e.contains("Europe/Nowhere"),
            "{e}"
        );
    }

    #[test]
    fn a_full_file_parses() {
        let text = "repository: https://git.example/fleet.git\nbranch: prod\npath: fleet\n\
schedule: '*/5 * * * *'\nlisten: 0.0.0.0:9617\ntoken_file: /etc/tend/token\n\
prune: {enabled: true, max_share: 0.25}\nhost_timeout: 30s\nselector: {cloud: tencent}\n\
secrets: {age_identities: /etc/tend/age.key}\n\
notifications:\n  - {kind: slack, url: 'http://127.0.0.1:1/hook'}\n";
        let c = Config::parse(text, "tend.yaml").unwrap();
        assert_eq!(
            c.source_spec(),
            SourceSpec::Git {
                url: "https://git.example/fleet.git".into(),
                branch: "prod".into()
            }
        );
        assert_eq!(c.host_timeout, Duration::from_secs(30));
        assert_eq!(c.selector.get("cloud").map(String::as_str), Some("tencent"));
        assert_eq!(c.notifications[0].kind, SinkKind::Slack);
        assert_eq!(c.prune.max_share, 0.25);
        assert_eq!(
            c.secrets.age_identities.as_deref(),
            Some(Path::new("/etc/tend/age.key"))
        );
    }

    #[test]
    fn a_relative_age_identities_path_is_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tend.yaml");
        std::fs::write(&file, "secrets:\n  age_identities: age.key\n").unwrap();
        let c = Config::load(&file).unwrap();
        assert_eq!(c.secrets.age_identities, Some(dir.path().join("age.key")));
    }

    #[test]
    fn an_unknown_field_is_refused_with_its_line() {
        let err = Config::parse("branch: main\nschedul: '* * * * *'\n", "tend.yaml").unwrap_err();
        match err {
            ConfigError::Syntax { line, why, .. } => {
                assert_eq!(line, 2, "{why}");
                assert!(why.contains("schedul"), "{why}");
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn a_bad_schedule_is_refused() {
        let err = Config::parse("schedule: every minute\n", "tend.yaml").unwrap_err();
        assert!(err.to_string().contains("schedule"), "{err}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut c = Config::default();
        c.apply_env_from(|k| match k {
            "TEND_LISTEN" => Some("127.0.0.1:1234".into()),
            "TEND_SCHEDULE" => Some("0 * * * *".into()),
            "TEND_SELECTOR" => Some("role=apps,cloud=aliyun".into()),
            "TEND_AGE_IDENTITIES" => Some("/run/credentials/tend.service/age".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            c.secrets.age_identities.as_deref(),
            Some(Path::new("/run/credentials/tend.service/age"))
        );
        assert_eq!(c.listen, "127.0.0.1:1234");
        assert_eq!(c.schedule, "0 * * * *");
        assert_eq!(c.selector.len(), 2);
    }

    #[test]
    fn scp_style_remotes_are_git_and_paths_are_directories() {
        assert!(is_git_url("git@github.com:org/fleet.git"));
        assert!(is_git_url("file:///srv/fleet.git"));
        assert!(!is_git_url("/srv/fleet"));
        assert!(!is_git_url("./fleet:v2"));
    }
}
