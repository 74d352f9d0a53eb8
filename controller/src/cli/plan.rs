//! `tend plan`: load manifests, observe the selected hosts (one probe each),
//! print the drift. Exit 0 in sync, 2 drift, 1 error (a host that could not
//! be observed is an error: its drift is unknown).

use clap::Args;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;
use tend::manifest::format_bytes;
use tend::model::{Address, Desired};
use tend::plan::{Action, ActionKind, Plan, ServicePlan, Status};
use tend::transport::pool::{Pool, PoolOptions};

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub fleet: super::FleetArgs,
    /// tend.yaml whose sync `windows` hold actions (shown as blocked).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
}

/// Hosts matching every `key=value` selector, in name order.
pub fn select_hosts(desired: &Desired, selectors: &[String]) -> anyhow::Result<Vec<String>> {
    let mut want = Vec::new();
    for s in selectors {
        let Some((k, v)) = s.split_once('=') else {
            anyhow::bail!("selector {s:?} is not key=value");
        };
        want.push((k.trim(), v.trim()));
    }
    Ok(desired
        .hosts
        .values()
        .filter(|h| {
            want.iter()
                .all(|(k, v)| h.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|h| h.name.clone())
        .collect())
}

pub fn run(a: PlanArgs) -> anyhow::Result<ExitCode> {
    let loaded = match a.fleet.load() {
        Ok(l) => l,
        Err(diags) => {
            eprintln!("error: {diags}");
            return Ok(ExitCode::from(1));
        }
    };
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let desired = loaded.desired;
    let hosts = select_hosts(&desired, &a.fleet.selectors)?;
    if hosts.is_empty() {
        eprintln!("warning: no host matches the selectors");
    }
    let pool = Pool::new(PoolOptions {
        default_identity: a.fleet.identity.clone(),
        known_hosts: a.fleet.known_hosts.clone(),
        connect_timeout: a.fleet.connect_timeout,
        ..PoolOptions::default()
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let observed = rt.block_on(tend::observe::observe_all(&pool, &desired, &hosts));
    let mut plan = tend::plan::plan(&desired, &observed);
    if let Some(file) = &a.config {
        let windows = tend::window::Windows::new(&tend::config::Config::load(file)?.windows)?;
        tend::window::gate(&mut plan, &windows.at(chrono::Utc::now()), false);
    }
    let text = match a.fleet.output {
        super::Output::Json => format!("{}\n", serde_json::to_string_pretty(&plan)?),
        super::Output::Text => render(&plan, &desired, super::stdout_is_tty()),
    };
    emit(&text)?;
    Ok(ExitCode::from(exit_code(&plan)))
}

/// Print to stdout; a reader that went away (`| head`) is not an error.
fn emit(s: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(s.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

pub fn exit_code(plan: &Plan) -> u8 {
    if !plan.unreachable.is_empty() {
        1
    } else if plan.in_sync() {
        0
    } else {
        2
    }
}

struct Paint(bool);

impl Paint {
    fn wrap(&self, code: &str, s: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
}

fn reasons(rs: &[tend::plan::DriftReason]) -> String {
    rs.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
}

fn action_line(a: &Action, sp: Option<&ServicePlan>, p: &Paint) -> String {
    let why = reasons(&a.reasons);
    let ver = |sp: Option<&ServicePlan>| {
        let from = sp.and_then(|s| s.observed_version.clone());
        let to = sp.and_then(|s| s.desired_version.clone());
        match (from, to) {
            (Some(f), Some(t)) if f != t => format!(" {f} → {t}"),
            (_, Some(t)) => format!(" {t}"),
            (Some(f), None) => format!(" {f}"),
            (None, None) => String::new(),
        }
    };
    let mut after = if a.after.is_empty() {
        String::new()
    } else {
        format!(" after {}", crate::cli::join_ids(&a.after, ", "))
    };
    if !a.pause.is_zero() {
        let _ = write!(after, " then {}", humantime::format_duration(a.pause));
    }
    match a.kind {
        ActionKind::Start => p.wrap("32", &format!("+ start {} ({why}){after}", a.service)),
        ActionKind::Upgrade => p.wrap(
            "33",
            &format!("~ upgrade {}{} ({why}){after}", a.service, ver(sp)),
        ),
        ActionKind::Restart => p.wrap("33", &format!("~ restart {} ({why}){after}", a.service)),
        ActionKind::Rollback => p.wrap(
            "33",
            &format!("< rollback {}{} ({why})", a.service, ver(sp)),
        ),
        ActionKind::Stop => p.wrap("31", &format!("- stop {} ({why})", a.service)),
        ActionKind::Prune => p.wrap("31", &format!("- prune {}{} ({why})", a.service, ver(sp))),
    }
}

/// The readable plan: per host its actions, blocked and suspended services,
/// then the memory table and a summary line.
pub fn render(plan: &Plan, desired: &Desired, colour: bool) -> String {
    let p = Paint(colour);
    let mut out = String::new();
    let mut hosts: BTreeMap<&str, ()> = BTreeMap::new();
    for s in &plan.services {
        hosts.insert(&s.host, ());
    }
    for m in &plan.memory {
        hosts.insert(&m.host, ());
    }
    for h in plan.unreachable.keys() {
        hosts.insert(h, ());
    }
    for host in hosts.keys() {
        let addr = match desired.hosts.get(*host).map(|h| &h.address) {
            Some(Address::Ssh(t)) => format!(" ({})", t.address),
            Some(Address::Local) => " (local)".into(),
            None => String::new(),
        };
        let _ = writeln!(out, "{}", p.wrap("1", &format!("host {host}{addr}")));
        if let Some(why) = plan.unreachable.get(*host) {
            let _ = writeln!(
                out,
                "  {}",
                p.wrap("31;1", &format!("? unreachable: {why}"))
            );
            continue;
        }
        let mine: Vec<&ServicePlan> = plan.services.iter().filter(|s| s.host == *host).collect();
        let find = |name: &str| mine.iter().copied().find(|s| s.service == name);
        let mut lines = 0;
        for a in plan.actions.iter().filter(|a| a.host == *host) {
            let _ = writeln!(out, "  {}", action_line(a, find(&a.service), &p));
            lines += 1;
        }
        for s in &mine {
            if let Some(b) = &s.blocked {
                let _ = writeln!(
                    out,
                    "  {}",
                    p.wrap("31;1", &format!("! {} blocked: {b}", s.service))
                );
                lines += 1;
            }
            if s.oom_kills > 0 {
                let n = s.oom_kills;
                let _ = writeln!(
                    out,
                    "  {}",
                    p.wrap("31;1", &format!("! {} OOM-killed {n}×", s.service))
                );
                lines += 1;
            }
            if s.status == Status::Suspended {
                let extra = if s.reasons.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", reasons(&s.reasons))
                };
                let _ = writeln!(
                    out,
                    "  {}",
                    p.wrap("2", &format!("· {} suspended{extra}", s.service))
                );
                lines += 1;
            }
        }
        let synced = mine.iter().filter(|s| s.status == Status::InSync).count();
        if synced > 0 || lines == 0 {
            let _ = writeln!(out, "  {}", p.wrap("2", &format!("= {synced} in sync")));
        }
    }

    if !plan.rollouts.is_empty() {
        out.push('\n');
        out.push_str(&rollout_lines(plan, &p));
    }
    if !plan.memory.is_empty() {
        out.push('\n');
        out.push_str(&memory_table(plan));
    }
    let blocked = plan.services.iter().filter(|s| s.blocked.is_some()).count();
    let summary = if plan.in_sync() {
        format!(
            "in sync: {} services on {} hosts",
            plan.services.len(),
            plan.memory.len()
        )
    } else {
        let mut parts = vec![format!(
            "{} action{}",
            plan.actions.len(),
            plural(plan.actions.len())
        )];
        if blocked > 0 {
            parts.push(format!("{blocked} blocked"));
        }
        if !plan.unreachable.is_empty() {
            let n = plan.unreachable.len();
            parts.push(format!("{n} unreachable host{}", plural(n)));
        }
        format!("drift: {}", parts.join(", "))
    };
    let _ = writeln!(out, "\n{summary}");
    out
}

/// One line per replicated service: progress, then its batches in order.
fn rollout_lines(plan: &Plan, p: &Paint) -> String {
    let mut out = String::new();
    for r in &plan.rollouts {
        let _ = writeln!(
            out,
            "{}",
            p.wrap(
                "1",
                &format!(
                    "rollout {}: {} (maxUnavailable {}, {} unavailable)",
                    r.service, r.progress, r.max_unavailable, r.unavailable
                )
            )
        );
        for (i, b) in r.batches.iter().enumerate() {
            let _ = writeln!(out, "  batch {}: {}", i + 1, b.join(", "));
        }
        if let Some(why) = &r.halted {
            let _ = writeln!(out, "  {}", p.wrap("31;1", &format!("! {why}")));
        }
    }
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn memory_table(plan: &Plan) -> String {
    let dash = || "-".to_string();
    let mut rows: Vec<[String; 5]> = vec![[
        "HOST",
        "COMMITTED",
        "BUDGET (capacity − reserved)",
        "TOTAL",
        "AVAILABLE",
    ]
    .map(String::from)];
    for m in &plan.memory {
        rows.push([
            m.host.clone(),
            format_bytes(m.committed),
            m.capacity
                .map(|c| format_bytes(c.saturating_sub(m.reserved)))
                .unwrap_or_else(dash),
            m.mem_total.map(format_bytes).unwrap_or_else(dash),
            m.mem_available.map(format_bytes).unwrap_or_else(dash),
        ]);
    }
    super::columns(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tend::plan::{DriftReason, MemoryBudget};

    fn sp(name: &str, status: Status, from: Option<&str>, to: Option<&str>) -> ServicePlan {
        ServicePlan {
            service: name.into(),
            host: "h1".into(),
            status,
            reasons: vec![],
            desired_version: to.map(String::from),
            observed_version: from.map(String::from),
            blocked: None,
            oom_kills: 0,
        }
    }

    fn action(kind: ActionKind, name: &str, r: DriftReason) -> Action {
        Action {
            kind,
            service: name.into(),
            host: "h1".into(),
            after: vec![],
            needs: vec![],
            reasons: vec![r],
            pause: std::time::Duration::ZERO,
        }
    }

    #[test]
    fn the_text_plan_reads_as_a_diff() {
        let mut blocked = sp("web", Status::Drifted, None, Some("1"));
        blocked.blocked = Some("port 8100 held by pid 123 (nc)".into());
        let plan = Plan {
            services: vec![
                sp("api", Status::Drifted, None, Some("1.0")),
                sp("auth", Status::Drifted, Some("1.0"), Some("1.1")),
                blocked,
            ],
            actions: vec![
                action(ActionKind::Start, "api", DriftReason::Missing),
                action(ActionKind::Upgrade, "auth", DriftReason::Version),
            ],
            unreachable: [("h2".to_string(), "timed out".to_string())].into(),
            memory: vec![MemoryBudget {
                host: "h1".into(),
                capacity: Some(4 << 30),
                reserved: 1 << 30,
                committed: 512 << 20,
                mem_total: Some(4 << 30),
                mem_available: Some(2 << 30),
            }],
            rollouts: vec![tend::plan::RolloutStatus {
                service: "web".into(),
                instances: 5,
                current: 2,
                progress: "2/5 current, batch 2 of 3".into(),
                unavailable: 0,
                max_unavailable: 2,
                batches: vec![vec!["h3".into(), "h4".into()], vec!["h5".into()]],
                halted: None,
            }],
        };
        let text = render(&plan, &Desired::default(), false);
        assert!(
            text.contains("rollout web: 2/5 current, batch 2 of 3 (maxUnavailable 2, 0 unavailable)\n  batch 1: h3, h4\n  batch 2: h5\n"),
            "{text}"
        );
        assert!(text.contains("  + start api (missing)\n"), "{text}");
        assert!(
            text.contains("  ~ upgrade auth 1.0 → 1.1 (version)\n"),
            "{text}"
        );
        assert!(
            text.contains("  ! web blocked: port 8100 held by pid 123 (nc)\n"),
            "{text}"
        );
        assert!(
            text.contains("host h2\n  ? unreachable: timed out\n"),
            "{text}"
        );
        assert!(text.contains("HOST"), "{text}");
        assert!(!text.contains('\x1b'), "no colour when piped");
        assert!(render(&plan, &Desired::default(), true).contains('\x1b'));
        assert_eq!(exit_code(&plan), 1);
    }

    #[test]
    fn exit_codes_say_in_sync_drift_or_error() {
        let mut plan = Plan::default();
        assert_eq!(exit_code(&plan), 0);
        plan.actions
            .push(action(ActionKind::Start, "api", DriftReason::Missing));
        assert_eq!(exit_code(&plan), 2);
        plan.unreachable.insert("h".into(), "down".into());
        assert_eq!(exit_code(&plan), 1);
    }

    #[test]
    fn selectors_keep_hosts_with_every_label() {
        let mut d = Desired::default();
        for (name, role) in [("a", "db"), ("b", "apps"), ("c", "apps")] {
            d.hosts.insert(
                name.into(),
                tend::model::Host {
                    name: name.into(),
                    labels: [("role".to_string(), role.to_string())].into(),
                    address: Address::Local,
                    root: "/var/lib/tend".into(),
                    capacity: None,
                    reserved: 0,
                },
            );
        }
        assert_eq!(
            select_hosts(&d, &["role=apps".into()]).unwrap(),
            vec!["b", "c"]
        );
        assert_eq!(select_hosts(&d, &[]).unwrap().len(), 3);
        assert!(select_hosts(&d, &["nonsense".into()]).is_err());
    }
}
