//! Where manifests come from: a Git branch (polled, fetched only when its head
//! moves) or a local directory (watched). Both hand out a [`Snapshot`]: the
//! revision and every file of the repository at it, read without a checkout.

pub mod dir;
pub mod git;
pub mod signature;

use serde::Serialize;
use std::path::Path;
use tokio::sync::mpsc;

/// One file of the repository at a revision.
pub use crate::manifest::TreeFile;

/// The repository at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Commit id (Git) or `dir-<digest>` (directory).
    pub revision: String,
    /// One line about the revision, for status (commit summary, or the path).
    pub subject: String,
    pub files: Vec<TreeFile>,
}

/// What a poll found.
#[derive(Debug)]
pub enum Poll {
    /// The revision already seen; nothing read.
    Unchanged { revision: String },
    /// A revision not seen before.
    Changed(Snapshot),
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot reach {url}: {why}")]
    Unreachable { url: String, why: String },
    #[error("branch {branch:?} is not on {url}")]
    NoBranch { url: String, branch: String },
    #[error(
        "history of {branch} was rewritten: {new} does not descend from {old}; \
keeping {old} (restart the controller or set git.allow_rewrites to accept it)"
    )]
    Rewritten {
        branch: String,
        old: String,
        new: String,
    },
    #[error("git: {0}")]
    Git(String),
    #[error("revision {revision} refused: {why}; the last good revision stays in force")]
    Signature { revision: String, why: String },
    #[error("{path}: {why}")]
    Io { path: String, why: String },
}

impl SourceError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            SourceError::Unreachable { .. } => "unreachable",
            SourceError::NoBranch { .. } => "no_branch",
            SourceError::Rewritten { .. } => "rewritten",
            SourceError::Git(_) => "git",
            SourceError::Signature { .. } => "signature",
            SourceError::Io { .. } => "io",
        }
    }

    /// The `reason` of `tend_source_errors_total`: coarser than the label,
    /// what an alert tells apart.
    pub fn source_reason(&self) -> &'static str {
        match self {
            SourceError::Rewritten { .. } => "rewritten",
            SourceError::Signature { .. } => "signature",
            _ => "fetch",
        }
    }
}

impl From<git2::Error> for SourceError {
    fn from(e: git2::Error) -> Self {
        SourceError::Git(e.message().to_string())
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum SourceInfo {
    Git { url: String, branch: String },
    Dir { path: String },
}

pub enum Source {
    Git(git::GitSource),
    Dir(dir::DirSource),
}

impl Source {
    /// Poll for the newest revision. `in_force` is the last good revision, used
    /// to refuse rewritten history.
    pub async fn poll(&mut self, in_force: Option<&str>) -> Result<Poll, SourceError> {
        match self {
            Source::Git(g) => g.poll(in_force).await,
            Source::Dir(d) => d.poll().await,
        }
    }

    pub fn info(&self) -> SourceInfo {
        match self {
            Source::Git(g) => SourceInfo::Git {
                url: redact_url(g.url()),
                branch: g.branch().into(),
            },
            Source::Dir(d) => SourceInfo::Dir {
                path: d.root().display().to_string(),
            },
        }
    }

    pub fn branch(&self) -> &str {
        match self {
            Source::Git(g) => g.branch(),
            Source::Dir(_) => "",
        }
    }

    /// Start watching (directories only): a message per debounced change.
    pub fn watch(&mut self, tx: mpsc::UnboundedSender<()>) -> Result<(), SourceError> {
        match self {
            Source::Git(_) => Ok(()),
            Source::Dir(d) => d.watch(tx),
        }
    }
}

/// Drop credentials from `https://user:token@host/...` before showing a URL.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((userinfo, host)) = rest.split_once('@') {
            if !userinfo.contains('/') {
                let user = userinfo.split(':').next().unwrap_or("");
                return format!("{scheme}://{user}@{host}");
            }
        }
    }
    url.to_string()
}

/// Short form of a revision for people.
pub fn short(rev: &str) -> &str {
    if rev.starts_with("dir-") {
        rev
    } else {
        rev.get(..12).unwrap_or(rev)
    }
}

pub(crate) fn io_err(path: &Path, e: impl std::fmt::Display) -> SourceError {
    SourceError::Io {
        path: path.display().to_string(),
        why: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_in_a_url_is_never_shown() {
        assert_eq!(
            redact_url("https://bot:s3cret@git.example/f.git"),
            "https://bot@git.example/f.git"
        );
        assert_eq!(
            redact_url("https://git.example/f.git"),
            "https://git.example/f.git"
        );
    }
}
