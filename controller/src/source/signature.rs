//! SSH-signed commits (`git commit -S` with `gpg.format=ssh`), verified in
//! process against an OpenSSH allowed-signers file, as
//! `git config gpg.ssh.allowedSignersFile` names it. Only the head commit of
//! a revision is checked (as Flux does): merges of pull requests bring
//! contributors' commits that need not be signed; the head is what the
//! person who merged vouches for.

use russh::keys::ssh_key::{PublicKey, SshSig};

/// The namespace git signs commits in.
const NAMESPACE: &str = "git";

#[derive(Debug, Clone)]
pub struct AllowedSigners {
    /// (principals, key); keys whose `namespaces=` option excludes git are left out.
    entries: Vec<(String, PublicKey)>,
}

impl AllowedSigners {
    /// Parse the file's text; errors name the line.
    pub fn parse(text: &str) -> Result<AllowedSigners, String> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let Some(k) = words.iter().position(|w| is_key_type(w)) else {
                return Err(format!(
                    "line {}: no key type (ssh-ed25519, ssh-rsa, ecdsa-…)",
                    i + 1
                ));
            };
            let (Some(principals), Some(b64)) = (words.first(), words.get(k + 1)) else {
                return Err(format!(
                    "line {}: expected `principals [options] type key`",
                    i + 1
                ));
            };
            let options = &words[1..k];
            if options.iter().any(|o| o.starts_with("cert-authority")) {
                return Err(format!(
                    "line {}: cert-authority signers are not supported",
                    i + 1
                ));
            }
            let git_ok = options
                .iter()
                .filter_map(|o| o.strip_prefix("namespaces="))
                .all(|n| n.trim_matches('"').split(',').any(|x| x == NAMESPACE));
            let key = PublicKey::from_openssh(&format!("{} {}", words[k], b64))
                .map_err(|e| format!("line {}: {e}", i + 1))?;
            if git_ok {
                entries.push((principals.to_string(), key));
            }
        }
        Ok(AllowedSigners { entries })
    }

    /// Ok(principals of the signer) when `signature` (armored SSHSIG) is a
    /// valid signature of `data` by an allowed key; Err(why) otherwise.
    pub fn verify(&self, signature: &[u8], data: &[u8]) -> Result<String, String> {
        let sig = SshSig::from_pem(signature).map_err(|e| format!("not an SSH signature: {e}"))?;
        if sig.namespace() != NAMESPACE {
            return Err(format!(
                "signed in namespace {:?}, not git",
                sig.namespace()
            ));
        }
        let signer = sig.public_key();
        let Some((who, key)) = self.entries.iter().find(|(_, k)| k.key_data() == signer) else {
            return Err(format!(
                "signed by a key not in allowed_signers ({})",
                PublicKey::from(signer.clone()).fingerprint(Default::default())
            ));
        };
        key.verify(NAMESPACE, data, &sig)
            .map_err(|e| format!("bad signature by {who}: {e}"))?;
        Ok(who.clone())
    }
}

fn is_key_type(w: &str) -> bool {
    w.starts_with("ssh-") || w.starts_with("ecdsa-sha2-") || w.starts_with("sk-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_without_a_key_are_refused_with_their_number() {
        let e = AllowedSigners::parse("# c\n\nalice@x nonsense").unwrap_err();
        assert!(e.starts_with("line 3:"), "{e}");
    }

    #[test]
    fn a_key_limited_to_another_namespace_is_not_a_commit_signer() {
        let k = "AAAAC3NzaC1lZDI1NTE5AAAAIOr3ZJqsm1ZgUX6yCgZyjYnNx8r8kVqGNt7k1ZXgN7a2";
        let s = AllowedSigners::parse(&format!(
            "alice@x namespaces=\"file\" ssh-ed25519 {k}\nbob@x ssh-ed25519 {k}\n"
        ))
        .unwrap();
        assert_eq!(s.entries.len(), 1);
        assert_eq!(s.entries[0].0, "bob@x");
    }
}
