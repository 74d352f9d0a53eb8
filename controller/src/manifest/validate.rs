//! Rules: raw documents → [`Desired`], collecting every problem on the way.

use super::raw::{self, At, EnvSource, HostDoc, ServiceDoc, S};
use super::tree::{normalize, Tree};
use super::{Diagnostic, Secrets, PLACEHOLDER_NOTE, UNRESOLVED};
use crate::model::{
    Address, Delivery, Desired, EnvValue, Health, HealthCheck, Host, Service, SourceFile,
    SourceTree, SshTarget, DEFAULT_ROOT,
};
use crate::record::RuntimeKind;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A document that parsed into its typed form.
#[derive(Debug, Clone)]
pub(crate) enum Parsed {
    Host(Box<HostDoc>),
    Service(Box<ServiceDoc>),
}

#[derive(Debug, Clone)]
pub(crate) struct ParsedDoc {
    pub file: String,
    pub doc: Parsed,
}

pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub(crate) const DEFAULT_RETRIES: u32 = 3;

#[derive(Default)]
pub(crate) struct Report {
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl Report {
    fn error(&mut self, file: &str, at: At, field: impl Into<String>, msg: impl Into<String>) {
        self.errors.push(Diagnostic::new(file, at, field, msg));
    }
    fn warn(&mut self, file: &str, at: At, field: impl Into<String>, msg: impl Into<String>) {
        self.warnings.push(Diagnostic::new(file, at, field, msg));
    }
}

/// Where a thing was written, for messages that point at two places.
#[derive(Debug, Clone)]
struct Origin {
    file: String,
    at: At,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.at.line, self.at.column)
    }
}

/// What the cross-document rules need to know about a service.
struct ServiceInfo {
    file: String,
    spec_at: At,
    host: S<String>,
    ports: Vec<S<u16>>,
    depends_on: Vec<S<String>>,
    health_port: Option<(u16, At, String)>,
}

struct HostInfo {
    file: String,
    capacity_at: At,
}

/// Applies every rule to `docs`; returns the desired state when there was no error.
pub(crate) fn build(
    docs: Vec<ParsedDoc>,
    tree: &dyn Tree,
    secrets: Secrets,
    report: &mut Report,
) -> Option<Desired> {
    let mut desired = Desired::default();
    let mut host_info: BTreeMap<String, HostInfo> = BTreeMap::new();
    let mut host_names: BTreeMap<String, Origin> = BTreeMap::new();
    let mut service_names: BTreeMap<String, Origin> = BTreeMap::new();
    let mut service_info: BTreeMap<String, ServiceInfo> = BTreeMap::new();

    for d in docs {
        match d.doc {
            Parsed::Host(h) => {
                let name = &h.metadata.value.name;
                if let Some(first) = host_names.get(&name.value) {
                    report.error(
                        &d.file,
                        name.at,
                        "metadata.name",
                        format!("duplicate Host `{}`: first defined at {first}", name.value),
                    );
                    continue;
                }
                host_names.insert(
                    name.value.clone(),
                    Origin {
                        file: d.file.clone(),
                        at: name.at,
                    },
                );
                let capacity_at = h
                    .spec
                    .value
                    .capacity
                    .as_ref()
                    .map(|c| c.at)
                    .unwrap_or(h.spec.at);
                if let Some(host) = host(&d.file, &h, report) {
                    host_info.insert(
                        host.name.clone(),
                        HostInfo {
                            file: d.file.clone(),
                            capacity_at,
                        },
                    );
                    desired.hosts.insert(host.name.clone(), host);
                }
            }
            Parsed::Service(s) => {
                let name = &s.metadata.value.name;
                if let Some(first) = service_names.get(&name.value) {
                    report.error(
                        &d.file,
                        name.at,
                        "metadata.name",
                        format!(
                            "duplicate Service `{}`: first defined at {first}",
                            name.value
                        ),
                    );
                    continue;
                }
                service_names.insert(
                    name.value.clone(),
                    Origin {
                        file: d.file.clone(),
                        at: name.at,
                    },
                );
                let spec = &s.spec.value;
                let info = ServiceInfo {
                    file: d.file.clone(),
                    spec_at: s.spec.at,
                    host: spec.host.clone(),
                    ports: spec.ports.clone(),
                    depends_on: spec.depends_on.clone(),
                    health_port: spec.health.as_ref().and_then(|h| {
                        let h = &h.value;
                        if let Some(c) = &h.http {
                            Some((
                                c.value.port.value,
                                c.value.port.at,
                                "spec.health.http.port".into(),
                            ))
                        } else {
                            h.tcp.as_ref().map(|c| {
                                (
                                    c.value.port.value,
                                    c.value.port.at,
                                    "spec.health.tcp.port".into(),
                                )
                            })
                        }
                    }),
                };
                service_info.insert(name.value.clone(), info);
                if let Some(svc) = service(&d.file, &s, tree, secrets, report) {
                    desired.services.insert(svc.name.clone(), svc);
                }
            }
        }
    }

    cross_checks(&desired, &host_names, &host_info, &service_info, report);
    report.errors.is_empty().then_some(desired)
}

// ------------------------------------------------------------------ hosts

fn host(file: &str, doc: &HostDoc, r: &mut Report) -> Option<Host> {
    let before = r.errors.len();
    let meta = &doc.metadata.value;
    dns_label(file, &meta.name, "metadata.name", r);
    let labels = labels(file, meta, r);
    let spec = &doc.spec.value;
    let addr = spec.address.value.trim();
    let local = addr == "local";
    let address = if local {
        for (set, field) in [
            (spec.port.as_ref().map(|p| p.at), "spec.port"),
            (spec.user.as_ref().map(|p| p.at), "spec.user"),
            (spec.identity.as_ref().map(|p| p.at), "spec.identity"),
            (spec.host_keys.first().map(|p| p.at), "spec.hostKeys"),
            (spec.known_hosts.as_ref().map(|p| p.at), "spec.knownHosts"),
        ] {
            if let Some(at) = set {
                r.warn(file, at, field, "has no effect on a `local` host");
            }
        }
        Address::Local
    } else {
        if !is_address(addr) {
            r.error(
                file,
                spec.address.at,
                "spec.address",
                format!("`{addr}` is not an IP address, a hostname or `local`"),
            );
        }
        let port = spec.port.as_ref().map(|p| p.value).unwrap_or(22);
        if port == 0 {
            if let Some(p) = &spec.port {
                r.error(file, p.at, "spec.port", "port 0 is not a port");
            }
        }
        let user = spec
            .user
            .as_ref()
            .map(|u| u.value.clone())
            .unwrap_or_else(|| "root".into());
        if let Some(u) = &spec.user {
            if u.value.is_empty() || u.value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                r.error(file, u.at, "spec.user", "not a user name");
            }
        }
        for (i, k) in spec.host_keys.iter().enumerate() {
            if let Err(why) = check_host_key(&k.value) {
                r.error(file, k.at, format!("spec.hostKeys[{i}]"), why);
            }
        }
        Address::Ssh(SshTarget {
            address: addr.to_string(),
            port,
            user,
            identity: spec.identity.as_ref().map(|p| PathBuf::from(&p.value)),
            host_keys: spec
                .host_keys
                .iter()
                .map(|k| k.value.trim().to_string())
                .collect(),
            known_hosts: spec.known_hosts.as_ref().map(|p| PathBuf::from(&p.value)),
        })
    };

    let root = match &spec.root {
        None => DEFAULT_ROOT.to_string(),
        Some(root) => match resolve_root(&root.value, local) {
            Ok(p) => p,
            Err(why) => {
                r.error(file, root.at, "spec.root", why);
                String::new()
            }
        },
    };

    let (mut capacity, mut reserved) = (None, 0);
    if let Some(c) = &spec.capacity {
        capacity = bytes_field(file, &c.value.memory, "spec.capacity.memory", r);
        if let Some(res) = &c.value.reserved {
            reserved = bytes_field(file, res, "spec.capacity.reserved", r).unwrap_or(0);
            if let Some(cap) = capacity {
                if reserved >= cap {
                    r.error(
                        file,
                        res.at,
                        "spec.capacity.reserved",
                        format!(
                            "reserved {} leaves nothing of capacity {}",
                            format_bytes(reserved),
                            format_bytes(cap)
                        ),
                    );
                }
            }
        }
    }

    (r.errors.len() == before).then(|| Host {
        name: meta.name.value.clone(),
        labels,
        address,
        root,
        capacity,
        reserved,
    })
}

fn resolve_root(root: &str, local: bool) -> Result<String, String> {
    if root.contains('\0') || root.trim().is_empty() {
        return Err("not a path".into());
    }
    if root.trim_end_matches('/').is_empty() {
        return Err("tend's root cannot be `/`: give it a directory of its own".into());
    }
    if root.starts_with('/') {
        return Ok(root.trim_end_matches('/').to_string());
    }
    if !local {
        return Err(format!("`{root}` must be an absolute path on the host"));
    }
    // A local host's root may be relative (to the controller's working
    // directory) or under the controller user's home.
    let path = if let Some(rest) = root.strip_prefix("~/") {
        let home = std::env::var_os("HOME").ok_or("`~/` needs HOME to be set")?;
        PathBuf::from(home).join(rest)
    } else {
        std::env::current_dir()
            .map_err(|e| format!("cannot resolve `{root}`: no working directory: {e}"))?
            .join(root)
    };
    path.to_str()
        .map(|s| s.trim_end_matches('/').to_string())
        .ok_or_else(|| format!("`{root}` does not resolve to a UTF-8 path"))
}

fn is_address(s: &str) -> bool {
    if s.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn check_host_key(key: &str) -> Result<(), String> {
    use base64::Engine as _;
    const TYPES: &[&str] = &[
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    ];
    let hint = "expected an OpenSSH public key: `ssh-ed25519 AAAA...` (the contents of the host's /etc/ssh/ssh_host_ed25519_key.pub)";
    let mut words = key.split_whitespace();
    let (Some(kind), Some(b64)) = (words.next(), words.next()) else {
        return Err(hint.into());
    };
    if !TYPES.contains(&kind) {
        if TYPES.contains(&b64) {
            return Err(format!(
                "{hint}; this looks like a known_hosts line: drop the leading `{kind}`"
            ));
        }
        return Err(format!("unknown key type `{kind}`; {hint}"));
    }
    let blob = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| format!("the key is not valid base64; {hint}"))?;
    let inner = blob
        .get(..4)
        .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
        .and_then(|n| blob.get(4..4 + n));
    if inner != Some(kind.as_bytes()) {
        return Err(format!("the key data does not hold a `{kind}` key; {hint}"));
    }
    Ok(())
}

// ------------------------------------------------------------------ services

fn service(
    file: &str,
    doc: &ServiceDoc,
    tree: &dyn Tree,
    secrets: Secrets,
    r: &mut Report,
) -> Option<Service> {
    let before = r.errors.len();
    let meta = &doc.metadata.value;
    let name = &meta.name.value;
    dns_label(file, &meta.name, "metadata.name", r);
    let labels = labels(file, meta, r);
    let spec = &doc.spec.value;
    let runtime = match spec.runtime.value {
        raw::Runtime::Process => RuntimeKind::Process,
        raw::Runtime::Systemd => RuntimeKind::Systemd,
        raw::Runtime::Podman => RuntimeKind::Podman,
    };

    // Delivery: at most one way to ship files; podman ships an image.
    let given: Vec<(&str, At)> = [
        ("source", spec.source.as_ref().map(|s| s.at)),
        ("artifact", spec.artifact.as_ref().map(|s| s.at)),
        ("image", spec.image.as_ref().map(|s| s.at)),
    ]
    .into_iter()
    .filter_map(|(n, at)| at.map(|at| (n, at)))
    .collect();
    if let [(first, _), rest @ ..] = given.as_slice() {
        for (other, at) in rest {
            r.error(
                file,
                *at,
                format!("spec.{other}"),
                format!("set one of source, artifact or image, not both {first} and {other}"),
            );
        }
    }
    if runtime == RuntimeKind::Podman {
        if spec.image.is_none() {
            r.error(
                file,
                spec.runtime.at,
                "spec.runtime",
                "runtime podman needs `image` (e.g. image: docker.io/library/mysql:8.0)",
            );
        }
        for (what, at) in [
            ("source", spec.source.as_ref().map(|s| s.at)),
            ("artifact", spec.artifact.as_ref().map(|s| s.at)),
        ] {
            if let Some(at) = at {
                r.error(
                    file,
                    at,
                    format!("spec.{what}"),
                    format!("runtime podman runs an image: `{what}` is for process and systemd services"),
                );
            }
        }
    } else if let Some(img) = &spec.image {
        r.error(
            file,
            img.at,
            "spec.image",
            format!("`image` needs runtime podman, not {runtime}"),
        );
    }

    let delivery = if let Some(src) = &spec.source {
        source_tree(file, &src.value.path, tree, r)
            .map(Delivery::Source)
            .unwrap_or(Delivery::None)
    } else if let Some(a) = &spec.artifact {
        let url = &a.value.url;
        if !(url.value.starts_with("https://") || url.value.starts_with("http://"))
            || url
                .value
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            r.error(
                file,
                url.at,
                "spec.artifact.url",
                "expected an http:// or https:// URL",
            );
        }
        let sha = a.value.sha256.value.trim().to_ascii_lowercase();
        if sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
            r.error(
                file,
                a.value.sha256.at,
                "spec.artifact.sha256",
                "expected 64 hex digits",
            );
        }
        Delivery::Artifact {
            url: url.value.clone(),
            sha256: sha,
        }
    } else if let Some(img) = &spec.image {
        if img.value.trim().is_empty()
            || img
                .value
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            r.error(file, img.at, "spec.image", "not an image reference");
        }
        Delivery::Image {
            image: img.value.clone(),
        }
    } else {
        Delivery::None
    };

    let version = match (&spec.version, &delivery) {
        (Some(v), _) => {
            let t = v.value.trim();
            if t.is_empty()
                || t.len() > 128
                || t.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                r.error(
                    file,
                    v.at,
                    "spec.version",
                    "a version is one word of at most 128 characters",
                );
            }
            t.to_string()
        }
        (None, Delivery::Source(src)) => format!("src-{}", &src.digest[..12]),
        (None, _) => {
            if spec.source.is_none() {
                r.error(
                    file,
                    doc.spec.at,
                    "spec.version",
                    "version is required unless the service has a `source` (then it is src-<digest>)",
                );
            }
            String::new()
        }
    };

    for (i, step) in spec.install.iter().enumerate() {
        if step.value.trim().is_empty() || step.value.contains('\0') {
            r.error(
                file,
                step.at,
                format!("spec.install[{i}]"),
                "an install step is a non-empty shell command",
            );
        }
    }
    if spec.command.is_empty() && runtime != RuntimeKind::Podman {
        r.error(
            file,
            doc.spec.at,
            "spec.command",
            format!("runtime {runtime} needs a `command` (argv list)"),
        );
    }
    for (i, a) in spec.command.iter().enumerate() {
        if a.value.contains('\0') || (i == 0 && a.value.is_empty()) {
            r.error(
                file,
                a.at,
                format!("spec.command[{i}]"),
                "not a usable argument",
            );
        }
    }

    let env = env(file, spec, secrets, r);

    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().enumerate() {
        if p.value == 0 {
            r.error(
                file,
                p.at,
                format!("spec.ports[{i}]"),
                "port 0 is not a port",
            );
        } else if ports.contains(&p.value) {
            r.error(
                file,
                p.at,
                format!("spec.ports[{i}]"),
                format!("port {} is listed twice", p.value),
            );
        } else {
            ports.push(p.value);
        }
    }

    let memory = spec.memory.as_ref().and_then(|m| {
        let b = bytes_field(file, m, "spec.memory", r)?;
        if b == 0 {
            r.error(
                file,
                m.at,
                "spec.memory",
                "a memory limit of 0 would stop the service from starting",
            );
        }
        Some(b)
    });

    let health = spec.health.as_ref().and_then(|h| health(file, h, r));

    let mut depends_on = Vec::new();
    for (i, dep) in spec.depends_on.iter().enumerate() {
        let field = format!("spec.dependsOn[{i}]");
        if &dep.value == name {
            r.error(
                file,
                dep.at,
                field,
                format!("`{name}` cannot depend on itself"),
            );
        } else if depends_on.contains(&dep.value) {
            r.error(
                file,
                dep.at,
                field,
                format!("`{}` is listed twice", dep.value),
            );
        } else {
            depends_on.push(dep.value.clone());
        }
    }

    (r.errors.len() == before).then(|| Service {
        name: name.clone(),
        labels,
        host: spec.host.value.clone(),
        runtime,
        version,
        delivery,
        install: spec.install.iter().map(|s| s.value.clone()).collect(),
        command: spec.command.iter().map(|s| s.value.clone()).collect(),
        env,
        ports,
        memory,
        health,
        depends_on,
        suspend: spec.suspend,
    })
}

/// Env var names that hold secrets: their values must come from outside Git.
fn looks_secret(key: &str) -> bool {
    let k = key.to_ascii_uppercase();
    [
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "TOKEN",
        "API_KEY",
        "PRIVATE_KEY",
    ]
    .iter()
    .any(|w| k.contains(w))
}

fn env(
    file: &str,
    spec: &raw::ServiceSpec,
    secrets: Secrets,
    r: &mut Report,
) -> BTreeMap<String, EnvValue> {
    let mut out = BTreeMap::new();
    for (key, v) in &spec.env {
        let field = format!("spec.env.{key}");
        // Dots are allowed: container images read `discovery.type` and the like.
        let valid_key = key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if !valid_key {
            r.error(file, v.at, &field, "an environment variable name is letters, digits, `_` and `.`, not starting with a digit");
            continue;
        }
        let value = match &v.value {
            EnvSource::Literal(s) => {
                if looks_secret(key) && !s.is_empty() {
                    r.error(
                        file,
                        v.at,
                        &field,
                        "secrets never live in Git: use fromEnv or fromFile",
                    );
                    continue;
                }
                if s.contains('\0') {
                    r.error(
                        file,
                        v.at,
                        &field,
                        "an environment value cannot hold a NUL byte",
                    );
                    continue;
                }
                EnvValue::literal(s.clone())
            }
            EnvSource::FromEnv(name) => match std::env::var(name) {
                Ok(s) if !s.contains('\0') => EnvValue::secret(s),
                _ => match unresolved(
                    file,
                    v.at,
                    &field,
                    secrets,
                    format!("environment variable `{name}` is not set on the controller"),
                    r,
                ) {
                    Some(x) => x,
                    None => continue,
                },
            },
            EnvSource::FromFile(path) => match read_secret_file(path) {
                Ok(s) => EnvValue::secret(s),
                Err(why) => match unresolved(
                    file,
                    v.at,
                    &field,
                    secrets,
                    format!("cannot read `{path}` on the controller: {why}"),
                    r,
                ) {
                    Some(x) => x,
                    None => continue,
                },
            },
        };
        out.insert(key.clone(), value);
    }
    out
}

fn unresolved(
    file: &str,
    at: At,
    field: &str,
    secrets: Secrets,
    why: String,
    r: &mut Report,
) -> Option<EnvValue> {
    match secrets {
        Secrets::Resolve => {
            r.error(file, at, field, why);
            None
        }
        Secrets::Placeholder => {
            r.warn(file, at, field, format!("{why}; {PLACEHOLDER_NOTE}"));
            Some(EnvValue::secret(UNRESOLVED))
        }
    }
}

fn read_secret_file(path: &str) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let mut s = String::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
    if s.contains('\0') {
        return Err("holds a NUL byte".into());
    }
    // Files written with `echo` end in a newline that is not part of the secret.
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    Ok(s)
}

fn health(file: &str, h: &S<raw::HealthSpec>, r: &mut Report) -> Option<Health> {
    let spec = &h.value;
    let mut checks = Vec::new();
    if let Some(c) = &spec.http {
        let path = c
            .value
            .path
            .as_ref()
            .map(|p| p.value.clone())
            .unwrap_or_else(|| "/".into());
        if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            let at = c.value.path.as_ref().map(|p| p.at).unwrap_or(c.at);
            r.error(
                file,
                at,
                "spec.health.http.path",
                "an HTTP path starts with `/` and has no spaces",
            );
        }
        if c.value.port.value == 0 {
            r.error(
                file,
                c.value.port.at,
                "spec.health.http.port",
                "port 0 is not a port",
            );
        }
        checks.push(HealthCheck::Http {
            port: c.value.port.value,
            path,
        });
    }
    if let Some(c) = &spec.tcp {
        if c.value.port.value == 0 {
            r.error(
                file,
                c.value.port.at,
                "spec.health.tcp.port",
                "port 0 is not a port",
            );
        }
        checks.push(HealthCheck::Tcp {
            port: c.value.port.value,
        });
    }
    if let Some(c) = &spec.command {
        if c.value.first().is_none_or(|a| a.value.is_empty()) {
            r.error(
                file,
                c.at,
                "spec.health.command",
                "a command check is a non-empty argv list",
            );
        }
        checks.push(HealthCheck::Command {
            command: c.value.iter().map(|a| a.value.clone()).collect(),
        });
    }
    if checks.len() != 1 {
        r.error(
            file,
            h.at,
            "spec.health",
            "set exactly one of http, tcp or command",
        );
        return None;
    }
    let mut duration = |d: &Option<S<String>>, field: &str, default: Duration| match d {
        None => default,
        Some(d) => match humantime::parse_duration(d.value.trim()) {
            Ok(x) if !x.is_zero() => x,
            Ok(_) => {
                r.error(file, d.at, field, "must be more than 0s");
                default
            }
            Err(e) => {
                r.error(
                    file,
                    d.at,
                    field,
                    format!("not a duration like 30s or 1m: {e}"),
                );
                default
            }
        },
    };
    let interval = duration(&spec.interval, "spec.health.interval", DEFAULT_INTERVAL);
    let timeout = duration(&spec.timeout, "spec.health.timeout", DEFAULT_TIMEOUT);
    let retries = match &spec.retries {
        None => DEFAULT_RETRIES,
        Some(n) if n.value == 0 => {
            r.error(file, n.at, "spec.health.retries", "at least 1");
            DEFAULT_RETRIES
        }
        Some(n) => n.value,
    };
    Some(Health {
        check: checks.remove(0),
        interval,
        timeout,
        retries,
    })
}

fn source_tree(
    file: &str,
    path: &S<String>,
    tree: &dyn Tree,
    r: &mut Report,
) -> Option<SourceTree> {
    let Some(dir) = normalize(&path.value) else {
        r.error(
            file,
            path.at,
            "spec.source.path",
            "a source path is a directory relative to the repository root, without `..`",
        );
        return None;
    };
    let files = match tree.dir(&dir) {
        Ok(Some(f)) if !f.is_empty() => f,
        Ok(_) => {
            r.error(
                file,
                path.at,
                "spec.source.path",
                format!("source directory `{dir}` is not in the repository (source paths are relative to the repository root)"),
            );
            return None;
        }
        Err(why) => {
            r.error(
                file,
                path.at,
                "spec.source.path",
                format!("cannot read `{dir}`: {why}"),
            );
            return None;
        }
    };
    Some(SourceTree {
        digest: digest(&files),
        path: dir,
        files: Arc::new(files),
    })
}

/// sha256 over sorted (path, executable, contents), each length-prefixed.
pub(crate) fn digest(files: &[SourceFile]) -> String {
    let mut sorted: Vec<&SourceFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut h = Sha256::new();
    for f in sorted {
        h.update((f.path.len() as u64).to_le_bytes());
        h.update(f.path.as_bytes());
        h.update([u8::from(f.executable)]);
        h.update((f.contents.len() as u64).to_le_bytes());
        h.update(&f.contents);
    }
    hex::encode(h.finalize())
}

// ------------------------------------------------------------------ shared rules

/// RFC 1123 label: `a-z0-9` and `-`, alphanumeric at both ends, at most 63.
fn dns_label(file: &str, name: &S<String>, field: &str, r: &mut Report) {
    let n = &name.value;
    let ok = !n.is_empty()
        && n.len() <= 63
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !n.starts_with('-')
        && !n.ends_with('-');
    if !ok {
        r.error(
            file,
            name.at,
            field,
            format!("`{n}` is not a DNS label (RFC 1123): lowercase letters, digits and `-`, at most 63, starting and ending with a letter or digit"),
        );
    }
}

fn labels(file: &str, meta: &raw::Metadata, r: &mut Report) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in &meta.labels {
        let key_ok = !k.is_empty()
            && k.len() <= 63
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        if !key_ok {
            r.error(
                file,
                v.at,
                format!("metadata.labels.{k}"),
                "a label key is letters, digits, `-`, `_`, `.` and `/`, at most 63",
            );
        } else if v.value.len() > 63
            || v.value
                .chars()
                .any(|c| c.is_control() || c == ',' || c == '=')
        {
            r.error(
                file,
                v.at,
                format!("metadata.labels.{k}"),
                "a label value has at most 63 characters and no `,` or `=`",
            );
        }
        out.insert(k.clone(), v.value.clone());
    }
    out
}

fn bytes_field(file: &str, v: &S<raw::ByteSize>, field: &str, r: &mut Report) -> Option<u64> {
    match parse_bytes(&v.value.0) {
        Ok(b) => Some(b),
        Err(why) => {
            r.error(file, v.at, field, why);
            None
        }
    }
}

/// `512MiB`, `1.5GiB`, `2GB`, `100kB`, `1048576` → bytes. IEC units are
/// powers of 1024, SI units powers of 1000; bare `M`/`G` are refused as ambiguous.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim_start());
    let mult: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        u => {
            let hint = match u.chars().next().map(|c| c.to_ascii_uppercase()) {
                Some(p @ ('K' | 'M' | 'G' | 'T')) => {
                    let n = if num.is_empty() { "512" } else { num };
                    let iec = if p == 'K' {
                        "Ki".to_string()
                    } else {
                        format!("{p}i")
                    };
                    let si = if p == 'K' {
                        "k".to_string()
                    } else {
                        p.to_string()
                    };
                    format!(": `{u}` is ambiguous, write {n}{iec}B (or {n}{si}B)")
                }
                _ => ": units are B, KiB, MiB, GiB, TiB or kB, MB, GB, TB".to_string(),
            };
            return Err(format!("`{s}` is not a size{hint}"));
        }
    };
    let bad = || format!("`{s}` is not a size like 512MiB or 1.5GiB");
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.matches('.').count() > 1
    {
        return Err(bad());
    }
    let bytes = if let Some((whole, frac)) = num.split_once('.') {
        let whole: u64 = whole.parse().map_err(|_| bad())?;
        let scale = 10u64.checked_pow(frac.len() as u32).ok_or_else(bad)?;
        let frac: u64 = frac.parse().map_err(|_| bad())?;
        let w = whole.checked_mul(mult).ok_or_else(bad)?;
        let f = (frac as u128 * mult as u128 / scale as u128) as u64;
        w.checked_add(f).ok_or_else(bad)?
    } else {
        num.parse::<u64>()
            .map_err(|_| bad())?
            .checked_mul(mult)
            .ok_or_else(bad)?
    };
    Ok(bytes)
}

/// Bytes for people, in IEC units: `384MiB`, `1.8GiB`, `1.72GiB`.
pub fn format_bytes(b: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (u, m) in UNITS {
        if b >= m {
            let v = b as f64 / m as f64;
            let s = format!("{v:.2}");
            let s = s.trim_end_matches('0').trim_end_matches('.');
            return format!("{s}{u}");
        }
    }
    format!("{b}B")
}

// ------------------------------------------------------------------ cross-document

fn cross_checks(
    desired: &Desired,
    host_names: &BTreeMap<String, Origin>,
    host_info: &BTreeMap<String, HostInfo>,
    services: &BTreeMap<String, ServiceInfo>,
    r: &mut Report,
) {
    // References.
    for (name, s) in services {
        if !host_names.contains_key(&s.host.value) {
            let known: Vec<&str> = host_names.keys().map(String::as_str).collect();
            r.error(
                &s.file,
                s.host.at,
                "spec.host",
                format!(
                    "unknown host `{}` (hosts: {})",
                    s.host.value,
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        }
        for (i, d) in s.depends_on.iter().enumerate() {
            if d.value != *name && !services.contains_key(&d.value) {
                r.error(
                    &s.file,
                    d.at,
                    format!("spec.dependsOn[{i}]"),
                    format!("unknown service `{}`", d.value),
                );
            }
        }
        if let Some((port, at, field)) = &s.health_port {
            if !s.ports.iter().any(|p| p.value == *port) {
                r.warn(
                    &s.file,
                    *at,
                    field,
                    format!("health check port {port} is not in the service's ports"),
                );
            }
        }
    }

    // Two services on one port of a host.
    let mut taken: BTreeMap<(&str, u16), (&str, Origin)> = BTreeMap::new();
    for (name, s) in services {
        for (i, p) in s.ports.iter().enumerate() {
            let origin = Origin {
                file: s.file.clone(),
                at: p.at,
            };
            match taken.get(&(s.host.value.as_str(), p.value)) {
                Some((other, first)) if *other != name.as_str() => r.error(
                    &s.file,
                    p.at,
                    format!("spec.ports[{i}]"),
                    format!(
                        "port {} on host `{}` is taken by both `{other}` ({first}) and `{name}` ({origin})",
                        p.value, s.host.value
                    ),
                ),
                Some(_) => {}
                None => {
                    taken.insert((s.host.value.as_str(), p.value), (name.as_str(), origin));
                }
            }
        }
    }

    cycles(services, r);

    // Memory budget per host: the sum of limits must fit capacity − reserved.
    for (hname, host) in &desired.hosts {
        let Some(capacity) = host.capacity else {
            continue;
        };
        let budget = capacity.saturating_sub(host.reserved);
        let mut parts = Vec::new();
        let mut sum = 0u64;
        for (sname, s) in services.iter().filter(|(_, s)| &s.host.value == hname) {
            match desired.services.get(sname).and_then(|svc| svc.memory) {
                Some(m) => {
                    sum = sum.saturating_add(m);
                    parts.push(format!("{sname} {}", format_bytes(m)));
                }
                None if desired.services.contains_key(sname) => r.warn(
                    &s.file,
                    s.spec_at,
                    "spec.memory",
                    format!("no memory limit: not counted in host `{hname}`'s budget"),
                ),
                None => {}
            }
        }
        if sum > budget {
            let info = &host_info[hname];
            r.error(
                &info.file,
                info.capacity_at,
                "spec.capacity",
                format!(
                    "memory overcommitted on host `{hname}`: limits sum to {} but capacity {} − reserved {} leaves {}, {} short ({})",
                    format_bytes(sum),
                    format_bytes(capacity),
                    format_bytes(host.reserved),
                    format_bytes(budget),
                    format_bytes(sum - budget),
                    parts.join(", ")
                ),
            );
        }
    }
}

/// Reports each dependency cycle once, as `a -> b -> a`.
fn cycles(services: &BTreeMap<String, ServiceInfo>, r: &mut Report) {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut mark: BTreeMap<&str, Mark> = services.keys().map(|k| (k.as_str(), Mark::New)).collect();
    let mut seen: BTreeSet<Vec<String>> = BTreeSet::new();

    fn visit<'a>(
        n: &'a str,
        services: &'a BTreeMap<String, ServiceInfo>,
        mark: &mut BTreeMap<&'a str, Mark>,
        stack: &mut Vec<&'a str>,
        seen: &mut BTreeSet<Vec<String>>,
        r: &mut Report,
    ) {
        mark.insert(n, Mark::Open);
        stack.push(n);
        let s = &services[n];
        for (i, d) in s.depends_on.iter().enumerate() {
            let Some((dep, _)) = services.get_key_value(&d.value) else {
                continue;
            };
            if dep == n {
                continue; // reported as self-dependency
            }
            match mark.get(dep.as_str()).copied() {
                Some(Mark::New) => visit(dep, services, mark, stack, seen, r),
                Some(Mark::Open) => {
                    let start = stack.iter().position(|x| *x == dep).unwrap_or(0);
                    let mut cycle: Vec<String> =
                        stack[start..].iter().map(|x| x.to_string()).collect();
                    let mut key = cycle.clone();
                    key.sort();
                    if seen.insert(key) {
                        cycle.push(dep.clone());
                        r.error(
                            &s.file,
                            d.at,
                            format!("spec.dependsOn[{i}]"),
                            format!("dependency cycle: {}", cycle.join(" -> ")),
                        );
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        mark.insert(n, Mark::Done);
    }

    let names: Vec<&str> = services.keys().map(String::as_str).collect();
    for n in names {
        if mark[n] == Mark::New {
            visit(n, services, &mut mark, &mut Vec::new(), &mut seen, r);
        }
    }
}
