//! age-encrypted values in Git (`{fromAge: "-----BEGIN AGE ENCRYPTED FILE-----…"}`),
//! decrypted on the controller with the identities named in `tend.yaml`.
//!
//! Only ASCII-armored age files with X25519 recipients (`age -r age1…`):
//! what `age` and `rage` write by default. Errors never carry key material or
//! plaintext, only what is wrong and where the identities came from.

use age::armor::ArmoredReader;
use age::x25519;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The first line of every armored age file.
pub const ARMOR_BEGIN: &str = "-----BEGIN AGE ENCRYPTED FILE-----";

/// Plaintexts and identity files larger than this are refused: a value goes
/// into an env file, not a disk image.
const MAX_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgeError {
    #[error("not an ASCII-armored age file: it must start with `{ARMOR_BEGIN}` (age -a)")]
    NotArmored,
    #[error("the armor is damaged: {0}")]
    Armor(String),
    #[error("not an age file: {0}")]
    Header(String),
    #[error(
        "none of the age identities in {path} can decrypt it (encrypted to another recipient?)"
    )]
    NoMatchingKey { path: String },
    #[error("cannot decrypt: {0}")]
    Decrypt(String),
    #[error("the decrypted value is not UTF-8 text without NUL bytes")]
    NotText,
    #[error("cannot read age identities {path}: {why}")]
    Identities { path: String, why: String },
    #[error(
        "no age identities configured on this controller (secrets.age_identities in tend.yaml)"
    )]
    NoIdentities,
}

/// The identities of one identity file, or why it could not be read (then
/// every encrypted value says so where it is written).
pub struct AgeIdentities {
    path: PathBuf,
    keys: Result<Vec<x25519::Identity>, String>,
}

impl std::fmt::Debug for AgeIdentities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("AgeIdentities")
            .field("path", &self.path)
            .field("keys", &self.keys.as_ref().map(Vec::len))
            .finish()
    }
}

impl AgeIdentities {
    /// Reads an age identity file (`age-keygen` output: `AGE-SECRET-KEY-1…`
    /// lines, `#` comments). Read on every load, so a rotated key needs no restart.
    pub fn read(path: &Path) -> AgeIdentities {
        let keys = std::fs::File::open(path)
            .and_then(|f| {
                let mut text = String::new();
                f.take(MAX_BYTES).read_to_string(&mut text)?;
                Ok(text)
            })
            .map_err(|e| e.to_string())
            .and_then(|text| parse_identities(&text));
        AgeIdentities {
            path: path.to_path_buf(),
            keys,
        }
    }

    /// Identities from text, for tests and callers that already hold them.
    pub fn from_text(path: &Path, text: &str) -> AgeIdentities {
        AgeIdentities {
            path: path.to_path_buf(),
            keys: parse_identities(text),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The plaintext of an armored age file, as text.
    pub fn decrypt(&self, armored: &str) -> Result<String, AgeError> {
        let path = self.path.display().to_string();
        let keys = self.keys.as_ref().map_err(|why| AgeError::Identities {
            path: path.clone(),
            why: why.clone(),
        })?;
        let binary = dearmor(armored)?;
        let decryptor = age::Decryptor::new_buffered(binary.as_slice())
            .map_err(|e| AgeError::Header(e.to_string()))?;
        if decryptor.is_scrypt() {
            return Err(AgeError::Header(
                "encrypted to a passphrase: use a recipient (age -r age1…)".into(),
            ));
        }
        let mut reader = decryptor
            .decrypt(keys.iter().map(|k| k as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => AgeError::NoMatchingKey { path },
                other => AgeError::Decrypt(other.to_string()),
            })?;
        let mut plain = Vec::new();
        reader
            .by_ref()
            .take(MAX_BYTES + 1)
            .read_to_end(&mut plain)
            .map_err(|e| AgeError::Decrypt(e.to_string()))?;
        if plain.len() as u64 > MAX_BYTES {
            return Err(AgeError::Decrypt(
                "the value is larger than 1 MiB: too large for an environment value".into(),
            ));
        }
        let text = String::from_utf8(plain).map_err(|_| AgeError::NotText)?;
        if text.contains('\0') {
            return Err(AgeError::NotText);
        }
        Ok(text)
    }
}

fn parse_identities(text: &str) -> Result<Vec<x25519::Identity>, String> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // The line number only: the line itself may be a key.
        let key = x25519::Identity::from_str(line).map_err(|_| {
            format!(
                "line {} is not an X25519 age identity (AGE-SECRET-KEY-1…)",
                i + 1
            )
        })?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err("it holds no identity".into());
    }
    Ok(keys)
}

/// Without identities: the armor decodes to its end and the age header parses.
pub fn check_shape(armored: &str) -> Result<(), AgeError> {
    let binary = dearmor(armored)?;
    age::Decryptor::new_buffered(binary.as_slice())
        .map(|_| ())
        .map_err(|e| AgeError::Header(e.to_string()))
}

/// The binary age file inside the armor (the whole armor read: a damaged
/// tail is found here, not while decrypting).
fn dearmor(armored: &str) -> Result<Vec<u8>, AgeError> {
    let text = armored.trim();
    if !text.starts_with(ARMOR_BEGIN) {
        return Err(AgeError::NotArmored);
    }
    // Base64 is 4/3 of the bytes: past this, the plaintext would be too.
    if text.len() as u64 > MAX_BYTES * 2 {
        return Err(AgeError::Armor(format!(
            "{} bytes: larger than an environment value should be",
            text.len()
        )));
    }
    let mut out = Vec::new();
    ArmoredReader::new(text.as_bytes())
        .read_to_end(&mut out)
        .map_err(|e| AgeError::Armor(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    pub(crate) fn encrypt(to: &x25519::Recipient, plain: &str) -> String {
        age::encrypt_and_armor(to, plain.as_bytes()).expect("encrypts")
    }

    fn identities(key: &x25519::Identity) -> AgeIdentities {
        let text = format!("# a comment\n{}\n", key.to_string().expose_secret());
        AgeIdentities::from_text(Path::new("/etc/tend/age.key"), &text)
    }

    #[test]
    fn a_value_encrypted_to_the_identity_decrypts() {
        let key = x25519::Identity::generate();
        let armored = encrypt(&key.to_public(), "hunter2 with spaces\nand a line");
        assert!(armored.starts_with(ARMOR_BEGIN));
        let ids = identities(&key);
        assert_eq!(
            ids.decrypt(&armored).unwrap(),
            "hunter2 with spaces\nand a line"
        );
        assert!(check_shape(&armored).is_ok());
    }

    #[test]
    fn a_value_for_another_recipient_names_the_identity_file() {
        let armored = encrypt(&x25519::Identity::generate().to_public(), "x");
        let err = identities(&x25519::Identity::generate())
            .decrypt(&armored)
            .unwrap_err();
        assert_eq!(
            err,
            AgeError::NoMatchingKey {
                path: "/etc/tend/age.key".into()
            }
        );
    }

    #[test]
    fn garbage_inside_the_armor_is_refused_without_identities() {
        let bad =
            format!("{ARMOR_BEGIN}\nbm90IGFuIGFnZSBmaWxl\n-----END AGE ENCRYPTED FILE-----\n");
        assert!(
            matches!(check_shape(&bad), Err(AgeError::Header(_))),
            "{bad}"
        );
        let bad = format!("{ARMOR_BEGIN}\n!!!not base64!!!\n-----END AGE ENCRYPTED FILE-----\n");
        assert!(matches!(check_shape(&bad), Err(AgeError::Armor(_))));
        assert_eq!(check_shape("hunter2"), Err(AgeError::NotArmored));
    }

    #[test]
    fn a_truncated_armor_is_refused_by_the_shape_check() {
        let armored = encrypt(&x25519::Identity::generate().to_public(), "x");
        let cut: String = armored.lines().take(2).collect::<Vec<_>>().join("\n");
        assert!(check_shape(&cut).is_err());
    }

    #[test]
    fn an_identity_file_error_names_the_line_not_its_contents() {
        let ids = AgeIdentities::from_text(Path::new("k"), "# c\nAGE-SECRET-KEY-1NOTAKEY\n");
        let armored = encrypt(&x25519::Identity::generate().to_public(), "x");
        let err = ids.decrypt(&armored).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains("NOTAKEY"), "{err}");
        let empty = AgeIdentities::from_text(Path::new("k"), "# only comments\n");
        assert!(empty
            .decrypt(&armored)
            .unwrap_err()
            .to_string()
            .contains("no identity"));
    }
}
