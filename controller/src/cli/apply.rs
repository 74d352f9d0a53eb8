//! `tend apply`: load, show the plan, confirm, converge, summarize.
//!
//! Exit status: 0 every selected host converged; 1 something did not (an
//! action failed, was rolled back or skipped, a host was unreachable or
//! locked, the manifests did not load); 2 nothing was done because it was
//! refused (no `--yes` without a terminal) or declined at the prompt.
//! `--dry-run` exits like `tend plan`: 0 in sync, 2 drift.

use super::Output;
use clap::Args;
use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use tend::apply::{self, ActionOutcome, ApplyOptions, ApplyReport, Event};
use tend::model::Desired;
use tend::plan::{ActionKind, Plan, Status};
use tend::transport::pool::{Pool, PoolOptions};

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
    /// Remove services tend installed that are no longer in the manifests.
    #[arg(long)]
    pub prune: bool,
    /// Prune even more than --max-prune-share of a host's services.
    #[arg(long, requires = "prune")]
    pub force_prune: bool,
    /// Largest share (0..1) of a host's services one run may prune.
    #[arg(long, default_value_t = 0.5)]
    pub max_prune_share: f64,
    /// Actions (install, start, stop, health gate) running at once across
    /// the fleet; each host runs at most 4 of them.
    #[arg(long, default_value_t = 16)]
    pub parallelism: usize,
    /// Break the host lock held by this owner (its controller name, machine
    /// or token, as `tend apply` prints it when locked out); the output
    /// records whose lock was broken. A dead holder on this machine is taken
    /// over without it.
    #[arg(long, value_name = "OWNER")]
    pub break_lock: Option<String>,
}

fn parse_selectors(sel: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    sel.iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| anyhow::anyhow!("selector {s:?} is not key=value"))
        })
        .collect()
}

fn select(desired: &Desired, sel: &[(String, String)]) -> Vec<String> {
    desired
        .hosts
        .values()
        .filter(|h| sel.iter().all(|(k, v)| h.labels.get(k) == Some(v)))
        .map(|h| h.name.clone())
        .collect()
}

pub fn run(a: ApplyArgs) -> anyhow::Result<ExitCode> {
    let loaded = match a.fleet.load() {
        Ok(l) => l,
        Err(d) => {
            eprintln!("error: {d}");
            return Ok(ExitCode::from(1));
        }
    };
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let desired = loaded.desired;
    let hosts = select(&desired, &parse_selectors(&a.fleet.selectors)?);
    if hosts.is_empty() {
        eprintln!("no host matches the selectors");
        return Ok(ExitCode::from(1));
    }
    let opts = ApplyOptions {
        hosts: Some(hosts),
        prune: a.prune,
        force_prune: a.force_prune,
        max_prune_share: a.max_prune_share,
        parallelism: a.parallelism,
        break_lock: a.break_lock.clone(),
        ..ApplyOptions::default()
    };
    let pool = Pool::new(PoolOptions {
        default_identity: a.fleet.identity.clone(),
        known_hosts: a.fleet.known_hosts.clone(),
        connect_timeout: a.fleet.connect_timeout,
        ..PoolOptions::default()
    });
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move { drive(&a, &desired, &pool, opts).await })
}

async fn drive(
    a: &ApplyArgs,
    desired: &Desired,
    pool: &Pool,
    opts: ApplyOptions,
) -> anyhow::Result<ExitCode> {
    let json = a.fleet.output == Output::Json;
    if a.dry_run || !a.yes {
        let plan = apply::preview(desired, pool, &opts).await;
        if a.dry_run {
            if json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                print_plan(&plan);
            }
            return Ok(ExitCode::from(if plan.in_sync() { 0 } else { 2 }));
        }
        print_plan(&plan);
        if plan.actions.is_empty() && plan.unreachable.is_empty() {
            println!("Nothing to do.");
            return Ok(ExitCode::SUCCESS);
        }
        if !std::io::stdin().is_terminal() {
            eprintln!("error: refusing to apply without --yes: stdin is not a terminal");
            return Ok(ExitCode::from(2));
        }
        print!("Apply these {} actions? [y/N] ", plan.actions.len());
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("Nothing done.");
            return Ok(ExitCode::from(2));
        }
    }

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let printer = tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            let line = progress_line(&e);
            if let Some(l) = line {
                // JSON keeps stdout for the report.
                if json {
                    eprintln!("{l}");
                } else {
                    println!("{l}");
                }
            }
        }
    });
    let report = apply::converge(desired, pool, &opts, Some(tx)).await;
    let _ = printer.await;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_summary(&report);
    }
    Ok(ExitCode::from(if report.converged() { 0 } else { 1 }))
}

fn progress_line(e: &Event) -> Option<String> {
    Some(match e {
        Event::HostLocked { host } => format!("{host}: locked"),
        Event::HostLockFailed { host, why } => format!("{host}: not locked: {why}"),
        Event::HostLockBroken { host, holder } => {
            format!("{host}: broke the lock held by {holder}")
        }
        Event::HostReleaseFailed { host, why } => format!("{host}: lock not released: {why}"),
        Event::HostObserved {
            host,
            reachable: false,
        } => format!("{host}: unreachable"),
        Event::HostObserved { .. } => return None,
        Event::Planned { actions } => format!("{actions} actions planned"),
        Event::ActionStarted {
            host,
            service,
            kind,
        } => {
            format!("{host}: {service}: {} started", kind.as_str())
        }
        Event::ActionStep {
            host,
            service,
            kind,
            step,
        } => {
            format!("{host}: {service}: {} {step}", kind.as_str())
        }
        Event::ActionFinished {
            host,
            service,
            kind,
            outcome,
            duration,
        } => format!(
            "{host}: {service}: {} {} ({:.1}s){}",
            kind.as_str(),
            outcome.as_str(),
            duration.as_secs_f64(),
            outcome
                .message()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ),
        Event::HostReleased { host } => format!("{host}: released"),
    })
}

fn print_plan(plan: &Plan) {
    for (h, why) in &plan.unreachable {
        println!("{h}: unreachable: {why}");
    }
    for s in &plan.services {
        if matches!(s.status, Status::InSync) {
            continue;
        }
        let reasons: Vec<&str> = s.reasons.iter().map(|r| r.as_str()).collect();
        println!(
            "{}: {}: {:?} {} {} -> {}{}",
            s.host,
            s.service,
            s.status,
            reasons.join(","),
            s.observed_version.as_deref().unwrap_or("-"),
            s.desired_version.as_deref().unwrap_or("-"),
            s.blocked
                .as_deref()
                .map(|b| format!(" (blocked: {b})"))
                .unwrap_or_default()
        );
    }
    if plan.actions.is_empty() {
        println!("No actions.");
    } else {
        println!("Actions, in order:");
        for (i, a) in plan.actions.iter().enumerate() {
            let after = if a.after.is_empty() {
                String::new()
            } else {
                format!(" after {}", crate::cli::join_ids(&a.after, ","))
            };
            println!(
                "  {}. {} {} on {}{after}",
                i + 1,
                a.kind.as_str(),
                a.service,
                a.host
            );
        }
    }
}

fn print_summary(r: &ApplyReport) {
    let mut by_host: BTreeMap<&str, Vec<&apply::ActionReport>> = BTreeMap::new();
    for a in &r.actions {
        by_host.entry(a.action.host.as_str()).or_default().push(a);
    }
    for (host, actions) in by_host {
        for a in actions {
            if !matches!(a.outcome, ActionOutcome::Succeeded) {
                println!(
                    "{host}: {}: {} {}",
                    a.action.service,
                    a.action.kind.as_str(),
                    a.outcome.as_str()
                );
                for l in &a.output {
                    println!("    | {l}");
                }
            }
        }
    }
    for (h, why) in &r.locked {
        println!("{h}: {why}");
    }
    for (h, why) in &r.plan.unreachable {
        println!("{h}: unreachable: {why}");
    }
    println!(
        "{} succeeded, {} failed, {} rolled back, {} skipped in {:.1}s{}",
        r.count("succeeded"),
        r.count("failed"),
        r.count("rolled_back"),
        r.count("skipped"),
        r.duration.as_secs_f64(),
        if r.converged() {
            ""
        } else {
            " — not converged:"
        }
    );
    if !r.converged() {
        for line in not_converged(r) {
            println!("  {line}");
        }
    }
}

/// What keeps a run from converging, one line each: what is blocked or
/// failed, and why.
fn not_converged(r: &ApplyReport) -> Vec<String> {
    let mut out = Vec::new();
    for s in &r.plan.services {
        if let Some(why) = &s.blocked {
            out.push(format!("{}: blocked: {why}", s.id()));
        }
    }
    for a in &r.actions {
        let pruning_off = !r.pruning && a.action.kind == ActionKind::Prune;
        match &a.outcome {
            ActionOutcome::Succeeded => {}
            ActionOutcome::Skipped(_) if pruning_off => {}
            o => out.push(format!(
                "{}: {} {}: {}",
                a.action.id(),
                a.action.kind.as_str(),
                o.as_str(),
                o.message().unwrap_or("")
            )),
        }
    }
    for (h, why) in &r.locked {
        out.push(format!("{h}: locked: {why}"));
    }
    for (h, why) in &r.plan.unreachable {
        out.push(format!("{h}: unreachable: {why}"));
    }
    out
}
