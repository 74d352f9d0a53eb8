//! `tend approve ID`: run the plan awaiting approval, if ID is still it.

use clap::Args;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The plan id `tend status` shows under "awaiting approval".
    pub id: String,
    #[command(flatten)]
    pub remote: super::run::Remote,
    /// Wait for the reconcile that applies it and print its result.
    #[arg(long)]
    pub wait: bool,
}

pub fn run(a: ApproveArgs) -> anyhow::Result<ExitCode> {
    let path = format!(
        "/plans/{}/approve{}",
        a.id,
        if a.wait { "?wait=true" } else { "" }
    );
    let (code, body) = a.remote.post(&path, None)?;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    if code == reqwest::StatusCode::CONFLICT {
        eprintln!("refused: {}", v["error"].as_str().unwrap_or(body.trim()));
        return Ok(ExitCode::from(3));
    }
    if !code.is_success() {
        anyhow::bail!("{}{path}: HTTP {code}: {}", a.remote.url, body.trim());
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
}
