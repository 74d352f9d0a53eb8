//! Commit statuses: after reconciling a revision, tell the forge how it went
//! (GitHub, Gitea/Forgejo, GitLab REST). The request is built here, pure, so
//! its shape is tested against each forge's documented API; sending is a
//! thin reqwest call. No live forge was exercised (none is reachable here).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForgeKind {
    Github,
    /// Gitea and Forgejo (same API).
    Gitea,
    Gitlab,
}

/// `commit_status:` in tend.yaml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgeConfig {
    pub kind: ForgeKind,
    /// API root: `https://api.github.com`, `https://gitea.example/api/v1`,
    /// `https://gitlab.example/api/v4`.
    pub api_url: String,
    /// `owner/name` (GitLab: the project's id or its `group/name` path).
    pub repository: String,
    /// File holding the API token (never logged, never in status).
    pub token_file: PathBuf,
    /// The status's name on the commit (GitLab: `name`).
    #[serde(default = "default_context")]
    pub context: String,
    /// Link shown with the status (the controller's page).
    #[serde(default)]
    pub target_url: Option<String>,
}

fn default_context() -> String {
    "tend".into()
}

#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    #[error("commit status to {url}: {why}")]
    Send { url: String, why: String },
    #[error("commit status to {url}: HTTP {code}")]
    Refused { url: String, code: u16 },
}

/// How a reconcile of a revision ended, as forges understand it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Some actions failed or some hosts were not reached.
    Failure,
    /// The reconcile itself failed (no host reached, source refused).
    Error,
}

impl Outcome {
    pub fn of_result(result: &str) -> Outcome {
        match result {
            "success" => Outcome::Success,
            "partial" => Outcome::Failure,
            _ => Outcome::Error,
        }
    }
}

/// One HTTP request, token left out (added by [`send`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StatusRequest {
    pub method: &'static str,
    pub url: String,
    /// Header carrying the token, and its value's prefix.
    pub auth: (&'static str, &'static str),
    pub headers: Vec<(&'static str, &'static str)>,
    pub body: serde_json::Value,
}

/// Percent-encode a path segment (GitLab wants `group%2Fname`).
fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GitHub caps descriptions at 140 characters.
fn short(description: &str) -> String {
    description.chars().take(140).collect()
}

pub fn request(cfg: &ForgeConfig, sha: &str, outcome: Outcome, description: &str) -> StatusRequest {
    let api = cfg.api_url.trim_end_matches('/');
    let description = short(description);
    match cfg.kind {
        // POST /repos/{owner}/{repo}/statuses/{sha}: state error|failure|pending|success.
        ForgeKind::Github | ForgeKind::Gitea => {
            let state = match outcome {
                Outcome::Success => "success",
                Outcome::Failure => "failure",
                Outcome::Error => "error",
            };
            let mut body = serde_json::json!({
                "state": state,
                "context": cfg.context,
                "description": description,
            });
            if let Some(u) = &cfg.target_url {
                body["target_url"] = serde_json::json!(u);
            }
            let (auth, headers) = if cfg.kind == ForgeKind::Github {
                (
                    ("Authorization", "Bearer "),
                    vec![
                        ("Accept", "application/vnd.github+json"),
                        ("X-GitHub-Api-Version", "2022-11-28"),
                    ],
                )
            } else {
                (
                    ("Authorization", "token "),
                    vec![("Accept", "application/json")],
                )
            };
            StatusRequest {
                method: "POST",
                url: format!(
                    "{api}/repos/{}/statuses/{sha}",
                    cfg.repository.trim_matches('/')
                ),
                auth,
                headers,
                body,
            }
        }
        // POST /projects/:id/statuses/:sha: state pending|running|success|failed|canceled.
        ForgeKind::Gitlab => {
            let state = match outcome {
                Outcome::Success => "success",
                Outcome::Failure | Outcome::Error => "failed",
            };
            let mut body = serde_json::json!({
                "state": state,
                "name": cfg.context,
                "description": description,
            });
            if let Some(u) = &cfg.target_url {
                body["target_url"] = serde_json::json!(u);
            }
            StatusRequest {
                method: "POST",
                url: format!(
                    "{api}/projects/{}/statuses/{sha}",
                    encode_segment(cfg.repository.trim_matches('/'))
                ),
                auth: ("PRIVATE-TOKEN", ""),
                headers: vec![("Accept", "application/json")],
                body,
            }
        }
    }
}

/// Send `req` with `token`.
pub async fn send(req: &StatusRequest, token: &str) -> Result<(), ForgeError> {
    let err = |why: String| ForgeError::Send {
        url: req.url.clone(),
        why,
    };
    let client = reqwest::Client::builder()
        .user_agent(concat!("tend/", env!("CARGO_PKG_VERSION")))
        .timeout(Duration::from_secs(15))
        .build()
        .map_err(|e| err(e.to_string()))?;
    let mut r = client
        .post(&req.url)
        .header(req.auth.0, format!("{}{token}", req.auth.1))
        .json(&req.body);
    for (k, v) in &req.headers {
        r = r.header(*k, *v);
    }
    let resp = r
        .send()
        .await
        .map_err(|e| err(e.without_url().to_string()))?;
    if !resp.status().is_success() {
        return Err(ForgeError::Refused {
            url: req.url.clone(),
            code: resp.status().as_u16(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
