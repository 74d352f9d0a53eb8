//! Manifests: YAML documents in a repository tree → the resolved [`Desired`] state.
//!
//! `raw` holds the types as written (serde + JSON Schema), `node` the untyped
//! tree read first, `tree` the files they come from; `load` finds files and
//! parses them, `validate` applies every rule and resolves values. Problems
//! are collected, never stopped at: one run reports all of them.

pub mod encrypted;
mod load;
pub mod node;
pub mod raw;
pub mod schema;
mod tree;
mod validate;

use crate::model::Desired;
use serde::Serialize;
use std::fmt;

pub use load::{load_path, load_path_with, load_tree, load_tree_with, repo_root};
pub use validate::{format_bytes, parse_bytes};

/// One file of a repository tree (a Git commit or a directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeFile {
    /// Repository-relative, `/`-separated.
    pub path: String,
    pub executable: bool,
    pub contents: Vec<u8>,
}

/// What to do with `fromEnv`/`fromFile`/`fromAge` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    /// Read them on the controller; a missing one is an error.
    Resolve,
    /// Read what is there; a missing one becomes `<unresolved>` and a warning
    /// (for `tend validate` on a pull request, where secrets are absent).
    /// Without age identities, an encrypted value is checked for shape only.
    Placeholder,
}

/// How secret values are resolved in one load.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resolver<'a> {
    pub secrets: Secrets,
    pub age: Option<&'a encrypted::AgeIdentities>,
}

/// Value given to secrets that could not be read under [`Secrets::Placeholder`].
pub const UNRESOLVED: &str = "<unresolved>";

/// How every warning about a secret replaced by [`UNRESOLVED`] ends.
pub const PLACEHOLDER_NOTE: &str = "checked with a placeholder";

/// How every warning about an age-encrypted value that was not decrypted ends.
pub const SHAPE_ONLY_NOTE: &str = "checked for shape only";

/// A successfully loaded desired state.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub desired: Desired,
    pub warnings: Vec<Diagnostic>,
    /// Manifest files read.
    pub files: usize,
}

/// One problem, where it was written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based; 0 when the problem has no single position (e.g. a missing file).
    pub line: usize,
    pub column: usize,
    /// Field path inside the document, e.g. `spec.ports[1]`; empty for the file itself.
    pub field: String,
    pub message: String,
}

impl Diagnostic {
    pub fn new(
        file: impl Into<String>,
        at: raw::At,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            file: file.into(),
            line: at.line,
            column: at.column,
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Every error found in one load, in file and line order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn metric_label(&self) -> &'static str {
        "invalid_manifests"
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "{n} problem{} in manifests",
            if n == 1 { "" } else { "s" }
        )?;
        for d in &self.0 {
            write!(f, "\n{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod placement_tests;
#[cfg(test)]
mod tests;
