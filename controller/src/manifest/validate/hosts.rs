//! Host documents: address, root, host keys, capacity.

use super::rules::{bytes_field, dns_label, format_bytes, labels};
use super::Report;
use crate::manifest::raw::HostDoc;
use crate::model::{Address, Host, SshTarget, DEFAULT_ROOT};
use std::path::PathBuf;

pub(super) fn host(file: &str, doc: &HostDoc, r: &mut Report) -> Option<Host> {
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

pub(super) fn resolve_root(root: &str, local: bool) -> Result<String, String> {
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

pub(super) fn is_address(s: &str) -> bool {
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

pub(super) fn check_host_key(key: &str) -> Result<(), String> {
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
