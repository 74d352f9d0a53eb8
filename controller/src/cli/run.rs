use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Controller configuration (tend.yaml). Without it: the embedded demo.
    #[arg(long, env = "TEND_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct TriggerArgs {
    /// Controller address.
    #[arg(long, env = "TEND_URL", default_value = "http://127.0.0.1:9617")]
    pub url: String,
    /// File holding the bearer token.
    #[arg(long, env = "TEND_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(long, env = "TEND_URL", default_value = "http://127.0.0.1:9617")]
    pub url: String,
    #[arg(long, value_enum, default_value_t = super::Output::Text)]
    pub output: super::Output,
}

pub fn run(_a: RunArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("tend run: not built yet")
}

pub fn trigger(_a: TriggerArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("tend trigger: not built yet")
}

pub fn status(_a: StatusArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("tend status: not built yet")
}
