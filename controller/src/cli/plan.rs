use clap::Args;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub fleet: super::FleetArgs,
}

pub fn run(_a: PlanArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("tend plan: not built yet")
}
