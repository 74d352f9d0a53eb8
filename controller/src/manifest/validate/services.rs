//! Service documents: runtime, delivery, env and secrets, health, source trees.

use super::rules::{bytes_field, dns_label, labels, port_not_zero};
use super::{Report, DEFAULT_INTERVAL, DEFAULT_RETRIES, DEFAULT_TIMEOUT};
use crate::manifest::encrypted::{self, AgeError};
use crate::manifest::raw::{self, At, EnvSource, ServiceDoc, S};
use crate::manifest::tree::{normalize, Tree};
use crate::manifest::{Resolver, Secrets, PLACEHOLDER_NOTE, SHAPE_ONLY_NOTE, UNRESOLVED};
use crate::model::{Delivery, EnvValue, Health, HealthCheck, Service, SourceFile, SourceTree};
use crate::record::RuntimeKind;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub(super) fn service(
    file: &str,
    doc: &ServiceDoc,
    tree: &dyn Tree,
    resolver: Resolver,
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

    let env = env(file, spec, resolver, r);

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
        hosts: Vec::new(),
        rollout: super::placement::rollout(file, spec, r),
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
pub(super) fn looks_secret(key: &str) -> bool {
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

pub(super) fn env(
    file: &str,
    spec: &raw::ServiceSpec,
    resolver: Resolver,
    r: &mut Report,
) -> BTreeMap<String, EnvValue> {
    let secrets = resolver.secrets;
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
                        "secrets never live in Git as plain text: use fromEnv, fromFile or fromAge",
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
            EnvSource::FromAge(armored) => match from_age(armored, resolver) {
                Ok(x) => x,
                Err(AgeError::NoIdentities) if secrets == Secrets::Placeholder => {
                    r.warn(
                        file,
                        v.at,
                        format!("{field}.fromAge"),
                        format!("no age identities here to decrypt it; {SHAPE_ONLY_NOTE}"),
                    );
                    EnvValue::secret(UNRESOLVED)
                }
                Err(e) => {
                    r.error(file, v.at, format!("{field}.fromAge"), e.to_string());
                    continue;
                }
            },
        };
        out.insert(key.clone(), value);
    }
    out
}

/// The plaintext of a `fromAge` value, a secret like any other. Its shape is
/// checked first, so garbage is an error even where no identity is at hand.
fn from_age(armored: &str, resolver: Resolver) -> Result<EnvValue, AgeError> {
    encrypted::check_shape(armored)?;
    let ids = resolver.age.ok_or(AgeError::NoIdentities)?;
    let mut s = ids.decrypt(armored)?;
    // As for fromFile: `echo value | age …` adds a newline that is not the secret's.
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    Ok(EnvValue::secret(s))
}

pub(super) fn unresolved(
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

pub(super) fn read_secret_file(path: &str) -> Result<String, String> {
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

pub(super) fn health(file: &str, h: &S<raw::HealthSpec>, r: &mut Report) -> Option<Health> {
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
        port_not_zero(file, &c.value.port, "spec.health.http.port", r);
        checks.push(HealthCheck::Http {
            port: c.value.port.value,
            path,
        });
    }
    if let Some(c) = &spec.tcp {
        port_not_zero(file, &c.value.port, "spec.health.tcp.port", r);
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

pub(super) fn source_tree(
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
