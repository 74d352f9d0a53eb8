//! What of a script's output is kept: redacted, the last lines only.

use crate::model::Desired;

/// Replaces every secret value of the fleet with `<redacted>`.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    pub fn for_desired(d: &Desired) -> Redactor {
        let mut secrets: Vec<String> = d
            .services
            .values()
            .flat_map(|s| s.env.values())
            .filter(|v| v.secret && !v.value.is_empty())
            .map(|v| v.value.clone())
            .collect();
        // Longest first, so a secret that contains another is hidden whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Redactor { secrets }
    }

    pub fn redact(&self, text: &str) -> String {
        let mut t = text.to_string();
        for s in &self.secrets {
            if t.contains(s.as_str()) {
                t = t.replace(s.as_str(), "<redacted>");
            }
            // A multi-line secret may also appear one line at a time.
            if s.contains('\n') {
                for part in s.lines().filter(|p| p.len() >= 4) {
                    t = t.replace(part, "<redacted>");
                }
            }
        }
        t
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    lines[from..].iter().map(|l| l.to_string()).collect()
}

/// The last line worth showing as an error.
pub fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EnvValue, Service};

    #[test]
    fn secrets_are_redacted_from_output_and_literals_are_kept() {
        let mut d = Desired::default();
        let mut env = std::collections::BTreeMap::new();
        env.insert("A".to_string(), EnvValue::secret("hunter2-secret"));
        env.insert("B".to_string(), EnvValue::literal("plain-value"));
        env.insert("C".to_string(), EnvValue::secret("line-one\nline-two"));
        let s = Service {
            name: "x".into(),
            labels: Default::default(),
            hosts: vec!["h".into()],
            rollout: Default::default(),
            runtime: crate::record::RuntimeKind::Process,
            version: "1".into(),
            delivery: crate::model::Delivery::None,
            install: vec![],
            command: vec![],
            env,
            ports: vec![],
            memory: None,
            health: None,
            depends_on: vec![],
            suspend: false,
        };
        d.services.insert("x".into(), s);
        let r = Redactor::for_desired(&d);
        let out = r.redact("token=hunter2-secret plain-value\nline-two here\n");
        assert!(!out.contains("hunter2"));
        assert!(!out.contains("line-two"));
        assert!(out.contains("plain-value"));
    }

    #[test]
    fn an_age_decrypted_value_is_redacted_like_any_secret() {
        use crate::manifest::{encrypted::AgeIdentities, load_tree_with, Secrets, TreeFile};
        use age::secrecy::ExposeSecret;
        let key = age::x25519::Identity::generate();
        let ids = AgeIdentities::from_text(
            std::path::Path::new("age.key"),
            key.to_string().expose_secret(),
        );
        let armored = age::encrypt_and_armor(&key.to_public(), b"s3cret-from-git").unwrap();
        let block: String = armored.lines().map(|l| format!("        {l}\n")).collect();
        let yaml = [
            "apiVersion: tend/v1\nkind: Host\nmetadata: {name: h}\nspec: {address: local}\n---\n",
            "apiVersion: tend/v1\nkind: Service\nmetadata: {name: x}\nspec:\n  host: h\n",
            "  runtime: process\n  version: \"1\"\n  command: [x]\n",
            "  env:\n    DB_PASSWORD:\n      fromAge: |\n",
            &block,
        ]
        .concat();
        let files = [TreeFile {
            path: "m/x.yaml".into(),
            executable: false,
            contents: yaml.into_bytes(),
        }];
        let l = load_tree_with(&files, "m", Secrets::Resolve, Some(&ids))
            .unwrap_or_else(|e| panic!("{e}"));
        let out = Redactor::for_desired(&l.desired).redact("connecting with s3cret-from-git\n");
        assert_eq!(out, "connecting with <redacted>\n");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), vec!["b".to_string(), "c".to_string()]);
        assert_eq!(last_line("x\nerror: y\n\n"), "error: y");
    }
}
