use clap::Args;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub fleet: super::FleetArgs,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Show what would be done, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(_a: ApplyArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("tend apply: not built yet")
}
