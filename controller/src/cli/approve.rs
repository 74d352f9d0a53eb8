//! `tend approve ID`: run the plan awaiting approval, if ID is still it.

use anyhow::Context as _;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The plan id `tend status` shows under "awaiting approval".
    pub id: String,
    #[arg(long, env = "TEND_URL", default_value = "http://127.0.0.1:9617")]
    pub url: String,
    /// File holding the bearer token (default: .tend/token when it exists).
    #[arg(long, env = "TEND_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Wait for the reconcile that applies it and print its result.
    #[arg(long)]
    pub wait: bool,
}

pub fn run(a: ApproveArgs) -> anyhow::Result<ExitCode> {
    let token = super::run::read_token(a.token_file.as_deref())?;
    let url = format!(
        "{}/plans/{}/approve{}",
        a.url.trim_end_matches('/'),
        a.id,
        if a.wait { "?wait=true" } else { "" }
    );
    super::run::runtime()?.block_on(async move {
        let resp = super::run::client()?
            .post(&url)
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("cannot reach the controller at {}", a.url))?;
        let code = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if code == reqwest::StatusCode::CONFLICT {
            eprintln!("refused: {}", v["error"].as_str().unwrap_or(body.trim()));
            return Ok(ExitCode::from(3));
        }
        if !code.is_success() {
            anyhow::bail!("{url}: HTTP {code}: {}", body.trim());
        }
        println!("plan {} approved: reconcile #{}", a.id, v["id"]);
        if a.wait {
            let r = &v["reconcile"];
            println!(
                "reconcile #{}: {}",
                v["id"],
                r["result"].as_str().unwrap_or("unknown")
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}
