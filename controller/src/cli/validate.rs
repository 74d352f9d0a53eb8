//! `tend validate`: load manifests, print every problem or the per-host budget.

use clap::Args;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use tend::manifest::{self, format_bytes, Diagnostic, Secrets};
use tend::model::{Address, Desired};

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Directory (or file) of manifests.
    #[arg(default_value = "manifests")]
    pub path: PathBuf,
    #[arg(long, value_enum, default_value_t = super::Output::Text)]
    pub output: super::Output,
    /// age identity file: decrypt `fromAge` values (without it their shape
    /// is checked only).
    #[arg(long, env = "TEND_AGE_IDENTITIES")]
    pub age_identities: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct HostRow {
    name: String,
    address: String,
    services: Vec<String>,
    ports: Vec<u16>,
    /// Sum of the services' memory limits, bytes.
    committed: u64,
    capacity: Option<u64>,
    reserved: u64,
    /// capacity − reserved, when capacity is declared.
    budget: Option<u64>,
    free: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    valid: bool,
    files: usize,
    errors: &'a [Diagnostic],
    warnings: &'a [Diagnostic],
    hosts: Vec<HostRow>,
}

fn rows(d: &Desired) -> Vec<HostRow> {
    d.hosts
        .values()
        .map(|h| {
            let services: Vec<_> = d.services_on(&h.name).collect();
            let mut ports: Vec<u16> = services
                .iter()
                .flat_map(|s| s.ports.iter().copied())
                .collect();
            ports.sort_unstable();
            let committed = services.iter().filter_map(|s| s.memory).sum();
            let budget = h.capacity.map(|c| c.saturating_sub(h.reserved));
            HostRow {
                name: h.name.clone(),
                address: match &h.address {
                    Address::Local => "local".into(),
                    Address::Ssh(t) => format!("{}@{}:{}", t.user, t.address, t.port),
                },
                services: services.iter().map(|s| s.name.clone()).collect(),
                ports,
                committed,
                capacity: h.capacity,
                reserved: h.reserved,
                budget,
                free: budget.map(|b| b.saturating_sub(committed)),
            }
        })
        .collect()
}

fn table(rows: &[HostRow]) -> String {
    let header = [
        "HOST",
        "SERVICES",
        "PORTS",
        "MEMORY (committed / capacity − reserved)",
        "FREE",
    ];
    let mut lines: Vec<[String; 5]> = vec![header.map(String::from)];
    for r in rows {
        let ports: Vec<String> = r.ports.iter().map(u16::to_string).collect();
        let memory = match r.budget {
            Some(b) => format!("{} / {}", format_bytes(r.committed), format_bytes(b)),
            None => format!("{} / -", format_bytes(r.committed)),
        };
        lines.push([
            r.name.clone(),
            r.services.len().to_string(),
            if ports.is_empty() {
                "-".into()
            } else {
                ports.join(",")
            },
            memory,
            r.free.map(format_bytes).unwrap_or_else(|| "-".into()),
        ]);
    }
    super::columns(&lines)
}

fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

pub fn run(a: ValidateArgs) -> anyhow::Result<ExitCode> {
    let age = a
        .age_identities
        .as_deref()
        .map(manifest::encrypted::AgeIdentities::read);
    let result = manifest::load_path_with(&a.path, Secrets::Placeholder, age.as_ref());
    let json = a.output == super::Output::Json;
    match result {
        Ok(loaded) => {
            let hosts = rows(&loaded.desired);
            if json {
                let r = Report {
                    valid: true,
                    files: loaded.files,
                    errors: &[],
                    warnings: &loaded.warnings,
                    hosts,
                };
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                // Secrets are absent where validate usually runs (a pull
                // request): one line for them, every other warning in full.
                let (placeholders, others): (Vec<_>, Vec<_>) = loaded
                    .warnings
                    .iter()
                    .partition(|w| w.message.ends_with(manifest::PLACEHOLDER_NOTE));
                let (shape_only, others): (Vec<_>, Vec<_>) = others
                    .into_iter()
                    .partition(|w| w.message.ends_with(manifest::SHAPE_ONLY_NOTE));
                for w in others {
                    eprintln!("warning: {w}");
                }
                if !shape_only.is_empty() {
                    eprintln!(
                        "note: {} age-encrypted value{} checked for shape only (armor and age header): \
no --age-identities to decrypt with",
                        shape_only.len(),
                        if shape_only.len() == 1 { "" } else { "s" }
                    );
                }
                if !placeholders.is_empty() {
                    eprintln!(
                        "note: {} secret value{} not available here, checked with placeholders",
                        placeholders.len(),
                        if placeholders.len() == 1 {
                            " is"
                        } else {
                            "s are"
                        }
                    );
                }
                print!("{}", table(&hosts));
                let instances: usize = loaded
                    .desired
                    .services
                    .values()
                    .map(|s| s.hosts.len())
                    .sum();
                let services = loaded.desired.services.len();
                println!(
                    "valid: {}{} in {}",
                    count(services, "service"),
                    if instances == services {
                        String::new()
                    } else {
                        format!(" ({})", count(instances, "instance"))
                    },
                    count(loaded.files, "file")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(diags) => {
            if json {
                let r = Report {
                    valid: false,
                    files: 0,
                    errors: &diags.0,
                    warnings: &[],
                    hosts: Vec::new(),
                };
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                for d in &diags.0 {
                    println!("{d}");
                }
                eprintln!("invalid: {}", count(diags.0.len(), "problem"));
            }
            Ok(ExitCode::from(1))
        }
    }
}
