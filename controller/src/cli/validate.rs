use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Directory (or file) of manifests.
    #[arg(default_value = "manifests")]
    pub path: PathBuf,
    #[arg(long, value_enum, default_value_t = super::Output::Text)]
    pub output: super::Output,
}

pub fn run(_a: ValidateArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("tend validate: not built yet")
}
