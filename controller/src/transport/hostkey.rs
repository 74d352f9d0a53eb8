//! Host key verification: pinned keys, or an OpenSSH known_hosts file.
//!
//! Our own parser because russh's ignores `@revoked`. Supported: plain and
//! hashed (`|1|salt|hmac`) host patterns, `[host]:port`, `*`/`?` wildcards,
//! `!negation`, `@revoked` (a revoked key is refused for every host: stricter
//! than needed, never weaker) and `@cert-authority` lines (skipped: tend does
//! not accept host certificates). Never trust on first use.

use base64::Engine as _;
use russh::keys::{Algorithm, HashAlg, PublicKey};
use std::path::{Path, PathBuf};

/// Where trust in a host key comes from.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Keys pinned in the Host manifest ("ssh-ed25519 AAAA...").
    Pinned(Vec<String>),
    /// A known_hosts file.
    KnownHosts(PathBuf),
}

/// `SHA256:...`, as OpenSSH prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Ok when `key` may be trusted for `host:port`; else why not (naming the
/// host, the offered key's fingerprint and where we looked).
pub fn verify(trust: &Trust, host: &str, port: u16, key: &PublicKey) -> Result<(), String> {
    let offered = format!("{} {}", key.algorithm().as_str(), fingerprint(key));
    match trust {
        Trust::Pinned(pins) => {
            let mut bad = Vec::new();
            for (i, pin) in pins.iter().enumerate() {
                match parse_key_line(pin) {
                    Some(k) if k.key_data() == key.key_data() => return Ok(()),
                    Some(_) => {}
                    None => bad.push(i + 1),
                }
            }
            let mut why = format!(
                "{host}:{port} offered {offered}, which is not among the {} host key(s) pinned for it",
                pins.len()
            );
            if !bad.is_empty() {
                why.push_str(&format!(" (pinned key(s) {bad:?} do not parse)"));
            }
            Err(why)
        }
        Trust::KnownHosts(path) => {
            let kh = KnownHosts::load(path).map_err(|e| {
                format!(
                    "{host}:{port} offered {offered}; cannot read known_hosts {}: {e}",
                    path.display()
                )
            })?;
            match kh.check(host, port, key) {
                Verdict::Trusted { .. } => Ok(()),
                Verdict::Revoked { line } => Err(format!(
                    "{host}:{port} offered {offered}, which is @revoked in {} line {line}",
                    path.display()
                )),
                Verdict::Changed { lines } => Err(format!(
                    "{host}:{port} offered {offered}, but {} lines {lines:?} record a different key for it (changed host key?)",
                    path.display()
                )),
                Verdict::Unknown => Err(format!(
                    "{host}:{port} offered {offered}, and {} has no entry for {}",
                    path.display(),
                    host_port(host, port)
                )),
            }
        }
    }
}

/// Algorithms of the keys trusted for `host:port`, best first (RSA as
/// rsa-sha2-512, rsa-sha2-256, then ssh-rsa), for host key negotiation.
pub fn trusted_algorithms(trust: &Trust, host: &str, port: u16) -> Vec<Algorithm> {
    let keys: Vec<PublicKey> = match trust {
        Trust::Pinned(pins) => pins.iter().filter_map(|p| parse_key_line(p)).collect(),
        Trust::KnownHosts(path) => KnownHosts::load(path)
            .map(|kh| kh.trusted_keys(host, port))
            .unwrap_or_default(),
    };
    let mut out = Vec::new();
    for k in keys {
        let algs = match k.algorithm() {
            Algorithm::Rsa { .. } => vec![
                Algorithm::Rsa {
                    hash: Some(HashAlg::Sha512),
                },
                Algorithm::Rsa {
                    hash: Some(HashAlg::Sha256),
                },
                Algorithm::Rsa { hash: None },
            ],
            a => vec![a],
        };
        for a in algs {
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    out
}

/// Outcome of a known_hosts lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Trusted {
        line: usize,
    },
    Revoked {
        line: usize,
    },
    /// Entries for the host exist, none with this key.
    Changed {
        lines: Vec<usize>,
    },
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    Plain,
    Revoked,
    CertAuthority,
}

#[derive(Debug)]
struct Entry {
    line: usize,
    marker: Marker,
    hosts: String,
    key: PublicKey,
}

/// A parsed known_hosts file. Lines that do not parse are skipped, as OpenSSH does.
#[derive(Debug, Default)]
pub struct KnownHosts {
    entries: Vec<Entry>,
}

impl KnownHosts {
    /// A missing file is an empty one (every host unknown).
    pub fn load(path: &Path) -> std::io::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(s) => Ok(Self::parse(&s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e),
        }
    }

    pub fn parse(text: &str) -> Self {
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let mut first = fields.next().unwrap_or("");
            let marker = match first {
                "@revoked" => Marker::Revoked,
                "@cert-authority" => Marker::CertAuthority,
                m if m.starts_with('@') => continue,
                _ => Marker::Plain,
            };
            if marker != Marker::Plain {
                first = match fields.next() {
                    Some(f) => f,
                    None => continue,
                };
            }
            let (Some(_kind), Some(b64)) = (fields.next(), fields.next()) else {
                continue;
            };
            let Ok(key) = russh::keys::parse_public_key_base64(b64) else {
                continue;
            };
            entries.push(Entry {
                line: i + 1,
                marker,
                hosts: first.to_string(),
                key,
            });
        }
        KnownHosts { entries }
    }

    /// Keys listed (and not revoked) for `host:port`.
    pub fn trusted_keys(&self, host: &str, port: u16) -> Vec<PublicKey> {
        let name = host_port(host, port);
        let revoked = |k: &PublicKey| {
            self.entries
                .iter()
                .any(|e| e.marker == Marker::Revoked && e.key.key_data() == k.key_data())
        };
        self.entries
            .iter()
            .filter(|e| {
                e.marker == Marker::Plain && hosts_match(&e.hosts, &name) && !revoked(&e.key)
            })
            .map(|e| e.key.clone())
            .collect()
    }

    pub fn check(&self, host: &str, port: u16, key: &PublicKey) -> Verdict {
        // Revocation first, whatever host it names.
        if let Some(e) = self
            .entries
            .iter()
            .find(|e| e.marker == Marker::Revoked && e.key.key_data() == key.key_data())
        {
            return Verdict::Revoked { line: e.line };
        }
        let name = host_port(host, port);
        let mut changed = Vec::new();
        for e in self.entries.iter().filter(|e| e.marker == Marker::Plain) {
            if !hosts_match(&e.hosts, &name) {
                continue;
            }
            if e.key.key_data() == key.key_data() {
                return Verdict::Trusted { line: e.line };
            }
            changed.push(e.line);
        }
        if changed.is_empty() {
            Verdict::Unknown
        } else {
            Verdict::Changed { lines: changed }
        }
    }
}

/// The name known_hosts files use: `host` on port 22, `[host]:port` otherwise.
pub fn host_port(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// A public key line, `type base64 [comment]` (or bare base64).
pub fn parse_key_line(line: &str) -> Option<PublicKey> {
    let mut f = line.split_whitespace();
    let a = f.next()?;
    let b64 = f.next().unwrap_or(a);
    russh::keys::parse_public_key_base64(b64).ok()
}

/// The comma-separated host field against `name`: a negated match wins, then
/// any positive match.
fn hosts_match(field: &str, name: &str) -> bool {
    if let Some(hashed) = field.strip_prefix("|1|") {
        return hashed_match(hashed, name);
    }
    let mut hit = false;
    for pat in field.split(',') {
        if let Some(neg) = pat.strip_prefix('!') {
            if wildcard(&neg.to_ascii_lowercase(), &name.to_ascii_lowercase()) {
                return false;
            }
        } else if wildcard(&pat.to_ascii_lowercase(), &name.to_ascii_lowercase()) {
            hit = true;
        }
    }
    hit
}

/// `salt|hash`, both base64: HMAC-SHA1(key = salt, message = name) == hash.
fn hashed_match(salt_and_hash: &str, name: &str) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let Some((salt, hash)) = salt_and_hash.split_once('|') else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (b64.decode(salt), b64.decode(hash)) else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &salt);
    ring::hmac::verify(&key, name.as_bytes(), &hash).is_ok()
}

/// Glob with `*` (any run) and `?` (one char), as in ssh_config patterns.
fn wildcard(pat: &str, s: &str) -> bool {
    let p: Vec<char> = pat.chars().collect();
    let t: Vec<char> = s.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Two real ed25519 public keys (generated with ssh-keygen for these tests).
    const A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGnst4mKePMqZT/3w8l/8WAIgdmrLutHhTtjJNp63fL6";
    const B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILzTgg3jmKaP81c9WHaf40L65QjD15URDS8jM9psPWSN";

    fn key(line: &str) -> PublicKey {
        parse_key_line(line).unwrap()
    }

    fn hashed(name: &str, salt: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, salt);
        let tag = ring::hmac::sign(&k, name.as_bytes());
        format!("|1|{}|{}", b64.encode(salt), b64.encode(tag.as_ref()))
    }

    #[test]
    fn a_plain_entry_trusts_its_key_for_its_host() {
        let kh = KnownHosts::parse(&format!("# c\n10.0.0.1,web {A}\n"));
        assert_eq!(
            kh.check("10.0.0.1", 22, &key(A)),
            Verdict::Trusted { line: 2 }
        );
        assert_eq!(kh.check("web", 22, &key(A)), Verdict::Trusted { line: 2 });
        assert_eq!(kh.check("10.0.0.2", 22, &key(A)), Verdict::Unknown);
    }

    #[test]
    fn a_different_key_for_a_known_host_is_changed() {
        let kh = KnownHosts::parse(&format!("10.0.0.1 {A}\n"));
        assert_eq!(
            kh.check("10.0.0.1", 22, &key(B)),
            Verdict::Changed { lines: vec![1] }
        );
    }

    #[test]
    fn a_non_standard_port_needs_a_bracketed_entry() {
        let kh = KnownHosts::parse(&format!("[10.0.0.1]:2222 {A}\n"));
        assert_eq!(
            kh.check("10.0.0.1", 2222, &key(A)),
            Verdict::Trusted { line: 1 }
        );
        assert_eq!(kh.check("10.0.0.1", 22, &key(A)), Verdict::Unknown);
    }

    #[test]
    fn a_hashed_entry_matches_only_its_host() {
        let kh = KnownHosts::parse(&format!(
            "{} {A}\n{} {B}\n",
            hashed("10.0.0.1", b"saltsaltsaltsaltsalt"),
            hashed("[10.0.0.9]:2222", b"01234567890123456789")
        ));
        assert_eq!(
            kh.check("10.0.0.1", 22, &key(A)),
            Verdict::Trusted { line: 1 }
        );
        assert_eq!(kh.check("10.0.0.2", 22, &key(A)), Verdict::Unknown);
        assert_eq!(
            kh.check("10.0.0.9", 2222, &key(B)),
            Verdict::Trusted { line: 2 }
        );
    }

    #[test]
    fn a_revoked_key_is_refused_even_when_also_listed_as_trusted() {
        let kh = KnownHosts::parse(&format!("10.0.0.1 {A}\n@revoked * {A}\n"));
        assert_eq!(
            kh.check("10.0.0.1", 22, &key(A)),
            Verdict::Revoked { line: 2 }
        );
    }

    #[test]
    fn a_cert_authority_line_trusts_nothing() {
        let kh = KnownHosts::parse(&format!("@cert-authority * {A}\n"));
        assert_eq!(kh.check("10.0.0.1", 22, &key(A)), Verdict::Unknown);
    }

    #[test]
    fn wildcards_and_negations_follow_openssh() {
        let kh = KnownHosts::parse(&format!("10.0.0.*,!10.0.0.7 {A}\n"));
        assert_eq!(
            kh.check("10.0.0.3", 22, &key(A)),
            Verdict::Trusted { line: 1 }
        );
        assert_eq!(kh.check("10.0.0.7", 22, &key(A)), Verdict::Unknown);
        assert!(wildcard("h?st*", "host-12"));
        assert!(!wildcard("h?st", "hoost"));
    }

    #[test]
    fn trusted_algorithms_list_what_the_host_is_trusted_by_and_skip_revoked_keys() {
        let kh = KnownHosts::parse(&format!("10.0.0.1 {A}\n10.0.0.1 {B}\n@revoked * {B}\n"));
        assert_eq!(kh.trusted_keys("10.0.0.1", 22).len(), 1);
        assert_eq!(kh.trusted_keys("10.0.0.2", 22).len(), 0);
        let algs = trusted_algorithms(&Trust::Pinned(vec![A.into()]), "h", 22);
        assert_eq!(algs, vec![Algorithm::Ed25519]);
    }

    #[test]
    fn garbage_lines_are_skipped() {
        let kh = KnownHosts::parse(&format!(
            "nonsense\n10.0.0.1 ssh-ed25519 !!!\n10.0.0.1 {A}\n"
        ));
        assert_eq!(
            kh.check("10.0.0.1", 22, &key(A)),
            Verdict::Trusted { line: 3 }
        );
    }

    #[test]
    fn a_refusal_names_host_fingerprint_and_source() {
        let why = verify(&Trust::Pinned(vec![A.into()]), "web", 22, &key(B)).unwrap_err();
        assert!(why.contains("web:22"), "{why}");
        assert!(why.contains(&fingerprint(&key(B))), "{why}");
        assert!(why.contains("pinned"), "{why}");
        assert!(verify(
            &Trust::Pinned(vec![format!("{A} comment")]),
            "web",
            22,
            &key(A)
        )
        .is_ok());
        let why = verify(
            &Trust::KnownHosts("/nonexistent/kh".into()),
            "web",
            22,
            &key(A),
        )
        .unwrap_err();
        assert!(
            why.contains("/nonexistent/kh") && why.contains("SHA256:"),
            "{why}"
        );
    }
}
