//! Command-line interface: raw flags here, each command in its own file.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

mod apply;
mod approve;
mod history;
mod plan;
mod run;
mod validate;

#[derive(Debug, Parser)]
#[command(
    name = "tend",
    version,
    about = "GitOps reconcile controller for plain servers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter (tracing env-filter syntax), e.g. `info,tend=debug`.
    #[arg(long, global = true, env = "TEND_LOG", default_value = "warn")]
    pub log: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// For people: colour on a terminal, plain when piped.
    #[default]
    Text,
    /// For machines.
    Json,
}

/// Flags shared by commands that read manifests and reach hosts.
#[derive(Debug, Clone, Args)]
pub struct FleetArgs {
    /// Directory (or file) of manifests.
    #[arg(default_value = "manifests")]
    pub path: PathBuf,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Only hosts with this label, `key=value` (repeatable).
    #[arg(long = "selector", short = 'l')]
    pub selectors: Vec<String>,
    /// known_hosts file used for hosts without pinned keys.
    #[arg(long, env = "TEND_KNOWN_HOSTS")]
    pub known_hosts: Option<PathBuf>,
    /// Default private key for hosts without `identity`.
    #[arg(long, env = "TEND_IDENTITY")]
    pub identity: Option<PathBuf>,
    /// age identity file that decrypts `fromAge` values.
    #[arg(long, env = "TEND_AGE_IDENTITIES")]
    pub age_identities: Option<PathBuf>,
    /// Longest an SSH connection may take to set up (TCP, key exchange,
    /// login), like OpenSSH's ConnectTimeout.
    #[arg(long, env = "TEND_CONNECT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: std::time::Duration,
}

impl FleetArgs {
    /// The manifests, every secret resolved (decrypted with `--age-identities`).
    pub fn load(&self) -> Result<tend::manifest::Loaded, tend::manifest::Diagnostics> {
        let age = self
            .age_identities
            .as_deref()
            .map(tend::manifest::encrypted::AgeIdentities::read);
        tend::manifest::load_path_with(&self.path, tend::manifest::Secrets::Resolve, age.as_ref())
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check manifests: schema, references, ports, cycles, memory budget.
    Validate(validate::ValidateArgs),
    /// Observe hosts and show the drift (exit 0 in sync, 2 drift, 1 error).
    Plan(plan::PlanArgs),
    /// Converge hosts to the manifests.
    Apply(apply::ApplyArgs),
    /// Run the controller: Git on a schedule, triggers, metrics, status.
    Run(run::RunArgs),
    /// Ask a running controller to reconcile now.
    Trigger(run::TriggerArgs),
    /// Show a running controller's status.
    Status(run::StatusArgs),
    /// What reconciles did: the ledger (file or a running controller).
    History(history::HistoryArgs),
    /// Apply the plan awaiting approval (approve mode), if ID is still current.
    Approve(approve::ApproveArgs),
}

pub fn init_tracing(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Escapes only on a terminal: a log file or journal gets plain text.
        .with_ansi(stderr_is_tty())
        .try_init();
}

pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate(a) => validate::run(a),
        Command::Plan(a) => plan::run(a),
        Command::Apply(a) => apply::run(a),
        Command::Run(a) => run::run(a),
        Command::Trigger(a) => run::trigger(a),
        Command::Status(a) => run::status(a),
        Command::History(a) => history::run(a),
        Command::Approve(a) => approve::run(a),
    }
}

/// True when stderr is a terminal and NO_COLOR is unset (log colours).
pub fn stderr_is_tty() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// True when stdout is a terminal (colour and progress allowed).
pub fn stdout_is_tty() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Left-aligned columns, two spaces apart, no trailing blanks.
pub fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<width$}", width = *w))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `a@h1, b@h2`: dependency instances as the plan prints them.
pub fn join_ids(ids: &[tend::instance::InstanceId], sep: &str) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(sep)
}
