//! The JSON Schema of manifest documents, generated from the raw types.
//!
//! Checked in at `schemas/tend-v1.json` for editors (yaml-language-server);
//! a test keeps it in step with the types.

use super::raw::{DocKind, Document, HostDoc, ServiceDoc};
use std::sync::LazyLock;

/// The schema as pretty JSON text, newline-terminated.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(Document);
    let mut s = serde_json::to_string_pretty(&schema).unwrap_or_default();
    s.push('\n');
    s
}

fn compile(schema: schemars::Schema) -> Option<jsonschema::Validator> {
    jsonschema::validator_for(&serde_json::Value::from(schema)).ok()
}

static HOST: LazyLock<Option<jsonschema::Validator>> =
    LazyLock::new(|| compile(schemars::schema_for!(HostDoc)));
static SERVICE: LazyLock<Option<jsonschema::Validator>> =
    LazyLock::new(|| compile(schemars::schema_for!(ServiceDoc)));

/// The validator for one kind of document (to find every structural problem
/// in a document that failed to parse, not only the first).
pub(crate) fn validator(kind: DocKind) -> Option<&'static jsonschema::Validator> {
    match kind {
        DocKind::Host => HOST.as_ref(),
        DocKind::Service => SERVICE.as_ref(),
        DocKind::Skip => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    #[test]
    fn the_checked_in_schema_matches_the_types() {
        let path = repo().join("schemas/tend-v1.json");
        let fresh = schema_json();
        if std::env::var_os("TEND_UPDATE_SCHEMA").is_some() {
            std::fs::write(&path, &fresh).unwrap();
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == fresh,
            "schemas/tend-v1.json is stale: run TEND_UPDATE_SCHEMA=1 cargo test -p tend --lib manifest::schema"
        );
    }

    fn manifest_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                manifest_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                out.push(p);
            }
        }
    }

    #[test]
    fn every_manifest_in_the_repo_satisfies_the_schema() {
        let schema: serde_json::Value = serde_json::from_str(&schema_json()).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let mut files = Vec::new();
        manifest_files(&repo().join("manifests"), &mut files);
        assert!(
            files.len() >= 4,
            "expected the seed and demo manifests, found {files:?}"
        );
        let mut docs = 0;
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            let first = text.lines().next().unwrap_or("");
            assert!(
                first.starts_with("# yaml-language-server: $schema=")
                    && first.ends_with("schemas/tend-v1.json"),
                "{} does not start with the schema modeline",
                f.display()
            );
            for doc in serde_saphyr::from_multiple::<serde_json::Value>(&text).unwrap() {
                let errors: Vec<String> =
                    validator.iter_errors(&doc).map(|e| e.to_string()).collect();
                assert!(errors.is_empty(), "{}: {errors:?}", f.display());
                docs += 1;
            }
        }
        assert!(docs >= 10);
    }

    #[test]
    fn the_schema_rejects_an_unknown_field_and_a_wrong_kind() {
        let schema: serde_json::Value = serde_json::from_str(&schema_json()).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let ok = serde_json::json!({"apiVersion": "tend/v1", "kind": "Host",
            "metadata": {"name": "a"}, "spec": {"address": "local"}});
        assert!(validator.is_valid(&ok));
        let mut unknown = ok.clone();
        unknown["spec"]["bogus"] = serde_json::json!(1);
        assert!(!validator.is_valid(&unknown));
        let mut kind = ok.clone();
        kind["kind"] = serde_json::json!("Pod");
        assert!(!validator.is_valid(&kind));
    }
}
