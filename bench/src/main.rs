//! tend-bench: tend against Ansible, pyinfra and the OpenSSH ControlMaster floor, on the
//! same test hosts in the same run. See BENCHMARKS.md.
//!
//! `cargo run --release -p tend-bench -- --hosts 10,50 --services 5 --runs 5`
//! `cargo run --release -p tend-bench -- --hosts 50 --rolling 10 --runs 3`

mod ansible;
mod floor;
mod hosts;
mod procfs;
mod profile;
mod pyinfra;
mod rolling;
mod stats;
mod tendside;
mod util;
mod workload;

use anyhow::{bail, Context, Result};
use clap::Parser;
use hosts::BenchHost;
use stats::Measurement;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tend_e2e::testbed::{Fleet, TestHost};
use workload::Workload;

#[derive(Debug, Parser)]
#[command(
    name = "tend-bench",
    about = "tend vs Ansible vs the SSH floor on test hosts"
)]
struct Args {
    /// Fleet sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,50")]
    hosts: Vec<usize>,
    /// Services per host.
    #[arg(long, default_value_t = 5)]
    services: usize,
    /// Timed runs per measurement (median, min, max are reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Results (JSON, Markdown) and work files. Outside any Git checkout:
    /// tend resolves `source.path` against the nearest `.git` above the manifests.
    #[arg(long, default_value = "/var/tmp/tend-bench")]
    out: PathBuf,
    /// Virtualenv for ansible-core (created when missing).
    #[arg(long)]
    venv: Option<PathBuf>,
    /// The tend binary; built with `cargo build --release -p tend` when not given.
    #[arg(long)]
    tend_bin: Option<PathBuf>,
    #[arg(long)]
    skip_ansible: bool,
    /// Run Ansible only on fleets up to this many hosts (its converge of 200
    /// hosts takes longer than the rest of a run); larger fleets say so.
    #[arg(long)]
    ansible_max_hosts: Option<usize>,
    /// Timed runs per Ansible measurement (default: --runs).
    #[arg(long)]
    ansible_runs: Option<usize>,
    /// Stop any one ansible-playbook run after this many seconds and report
    /// how far it got (for 200 and 500 hosts, where a run takes hours).
    #[arg(long)]
    ansible_budget: Option<u64>,
    /// UTC time (HH:MM) after which no new Ansible run starts; what was
    /// measured is reported with the count.
    #[arg(long)]
    deadline: Option<String>,
    #[arg(long)]
    skip_tend: bool,
    /// Leave pyinfra out (it is pip-installed into `<out>/venv-pyinfra`).
    #[arg(long)]
    skip_pyinfra: bool,
    /// Also break the probe's host-side cost down (adds ~1 min per fleet).
    #[arg(long)]
    profile: bool,
    /// Only the rolling upgrade of one service on every host, in batches of
    /// this size (tend's maxUnavailable, Ansible's serial), instead of the
    /// no-op/converge phases.
    #[arg(long)]
    rolling: Option<usize>,
    /// KEY=VALUE added to `tend run`'s environment (repeatable), e.g. MALLOC_ARENA_MAX=1.
    #[arg(long = "controller-env")]
    controller_env: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out).with_context(|| format!("mkdir {}", args.out.display()))?;
    let out = std::fs::canonicalize(&args.out).context("canonicalize --out")?;
    let mut rows: Vec<Measurement> = Vec::new();
    // Other work on the machine shows in the load average: sample it all along.
    let load_log = out.join("loadavg.log");
    std::thread::spawn(move || loop {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&load_log)
        {
            let _ = writeln!(f, "{} {}", now_utc(), util::loadavg());
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let mut env = Vec::new();
    env.push(format!("started: {}", now_utc()));
    env.push(format!("loadavg at start: {}", util::loadavg()));
    env.extend(util::machine());

    let tend_bin = if args.skip_tend {
        None
    } else {
        match &args.tend_bin {
            Some(p) => Some(
                std::fs::canonicalize(p).with_context(|| format!("--tend-bin {}", p.display()))?,
            ),
            None => match tendside::build_tend_binary() {
                Ok(p) => Some(p),
                Err(e) => {
                    eprintln!("tend-bench: cannot build tend: {e:#}");
                    None
                }
            },
        }
    };
    let ansible_bin = if args.skip_ansible {
        None
    } else {
        let venv = args.venv.clone().unwrap_or_else(|| out.join("venv"));
        match ansible::ensure_venv(&venv) {
            Ok(b) => {
                env.push(format!("ansible: {}", version_line(&b)));
                Some(b)
            }
            Err(e) => {
                eprintln!("tend-bench: cannot install ansible-core: {e:#}");
                env.push(format!("ansible: not installed: {e:#}"));
                None
            }
        }
    };

    let pyinfra_bin = if args.skip_pyinfra {
        None
    } else {
        match pyinfra::ensure_venv(&out.join("venv-pyinfra")) {
            Ok(b) => {
                env.push(format!("pyinfra: {}", version_line(&b)));
                Some(b)
            }
            Err(e) => {
                eprintln!("tend-bench: cannot install pyinfra: {e:#}");
                env.push(format!("pyinfra: not installed: {e:#}"));
                None
            }
        }
    };

    for &n in &args.hosts {
        eprintln!(
            "== {n} hosts, {} services each, {} runs ==",
            args.services, args.runs
        );
        let t0 = Instant::now();
        let fleet = Fleet::start(n).with_context(|| format!("start a fleet of {n}"))?;
        eprintln!("fleet of {n} up in {:.1}s", t0.elapsed().as_secs_f64());
        env.push(format!(
            "{n} hosts: started {}, loadavg {}",
            now_utc(),
            util::loadavg()
        ));
        let ctx = Ctx::new(&fleet, &out.join(format!("n{n}")), &args)?;
        match args.rolling {
            Some(batch) => rows.extend(rolling::phases(
                &ctx,
                tend_bin.as_deref(),
                ansible_bin.as_deref(),
                batch,
            )),
            None => {
                let ansible = match args.ansible_max_hosts {
                    Some(m) if n > m => None,
                    _ => ansible_bin.as_deref(),
                };
                bench_fleet(&ctx, tend_bin.as_deref(), ansible, &mut rows);
                if let Some(b) = pyinfra_bin.as_deref() {
                    rows.extend(pyinfra::phases(&ctx, b));
                }
            }
        }
        env.push(format!(
            "{n} hosts: finished {}, loadavg {}",
            now_utc(),
            util::loadavg()
        ));
        let md = stats::markdown(&rows);
        let _ = std::fs::write(out.join("results.md"), &md);
        let _ = write_json(&out.join("results.json"), &rows, &env);
        eprintln!("{md}");
    }
    env.push(format!("loadavg at end: {}", util::loadavg()));
    env.push(format!("finished: {}", now_utc()));
    write_json(&out.join("results.json"), &rows, &env)?;
    let md = if args.rolling.is_some() {
        stats::markdown(&rows)
    } else {
        format!("{}\n{}", stats::markdown(&rows), ratios(&rows, &args.hosts))
    };
    std::fs::write(out.join("results.md"), &md).context("write results.md")?;
    println!("{md}");
    for e in &env {
        println!("{e}");
    }
    Ok(())
}

/// One fleet and everything the phases share.
pub struct Ctx<'a> {
    pub fleet: &'a Fleet,
    pub n: usize,
    pub runs: usize,
    pub hosts: Vec<BenchHost>,
    pub work: PathBuf,
    pub manifests: PathBuf,
    pub wl: Workload,
    pub ansible_runs: usize,
    pub ansible_budget: Option<Duration>,
    pub profile: bool,
    pub controller_env: Vec<(String, String)>,
    /// Seconds since midnight UTC.
    pub deadline: Option<u64>,
}

impl<'a> Ctx<'a> {
    fn new(fleet: &'a Fleet, work: &Path, args: &Args) -> Result<Self> {
        std::fs::create_dir_all(work).with_context(|| format!("mkdir {}", work.display()))?;
        let hosts: Vec<BenchHost> = fleet
            .hosts()
            .iter()
            .map(|h| BenchHost {
                name: h.name.clone(),
                addr: h.ip.clone(),
                port: h.port,
                user: "root".into(),
                key: fleet.ed25519_key().to_path_buf(),
                known_hosts: fleet.known_hosts().to_path_buf(),
            })
            .collect();
        let keys: Vec<String> = fleet
            .hosts()
            .iter()
            .map(|h| h.host_key_line.clone())
            .collect();
        let wl = Workload::new(args.services);
        let manifests = wl.write_manifests(&work.join("manifests"), &hosts, &keys)?;
        let deadline = match &args.deadline {
            None => None,
            Some(d) => {
                Some(parse_hhmm(d).with_context(|| format!("--deadline {d:?} is not HH:MM"))?)
            }
        };
        Ok(Ctx {
            fleet,
            n: fleet.len(),
            runs: args.runs.max(1),
            hosts,
            work: work.to_path_buf(),
            manifests,
            wl,
            ansible_runs: args.ansible_runs.unwrap_or(args.runs).max(1),
            ansible_budget: args.ansible_budget.map(Duration::from_secs),
            profile: args.profile,
            controller_env: args
                .controller_env
                .iter()
                .filter_map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect(),
            deadline,
        })
    }

    pub fn past_deadline(&self) -> bool {
        let Some(d) = self.deadline else { return false };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|t| t.as_secs() % 86_400)
            .unwrap_or(0);
        now >= d
    }

    pub fn test_hosts(&self) -> &[TestHost] {
        self.fleet.hosts()
    }

    pub fn ports(&self) -> Vec<u16> {
        self.wl.services.iter().map(|s| s.port).collect()
    }

    /// cpuacct.usage of every host's cgroup subtree (sshd and all it runs), summed.
    pub fn hosts_cpu_seconds(&self) -> Result<f64> {
        let mut total = 0.0;
        for h in self.test_hosts() {
            let dir = Path::new("/sys/fs/cgroup/cpuacct")
                .join("tend-testbed")
                .join(format!("f{}", self.fleet.number()))
                .join(&h.name);
            total += procfs::cpuacct_seconds(&dir)?;
        }
        Ok(total)
    }

    /// Logins sshd accepted so far, per host.
    pub fn logins(&self) -> Vec<usize> {
        self.test_hosts()
            .iter()
            .map(|h| h.accepted_logins())
            .collect()
    }

    /// Stop and remove everything tend installed on every host.
    pub fn wipe_tend(&self) -> Result<()> {
        util::exec_all(self.test_hosts(), WIPE_TEND)?;
        self.wait_ports_closed()
    }

    /// Stop and remove everything the playbook installed on every host.
    pub fn wipe_ansible(&self) -> Result<()> {
        util::exec_all(self.test_hosts(), WIPE_ANSIBLE)?;
        self.wait_ports_closed()
    }

    fn wait_ports_closed(&self) -> Result<()> {
        for h in self.test_hosts() {
            for p in self.ports() {
                util::wait_closed(&h.ip, p, Duration::from_secs(10))?;
            }
        }
        Ok(())
    }
}

/// Kill by pid what tend's records and cgroups name, then remove its tree.
pub(crate) const WIPE_TEND: &str = r#"
for f in /var/lib/tend/records/*.rec; do
  [ -f "$f" ] || continue
  p=$(sed -n 's/^pid=//p' "$f" | tail -n 1)
  [ -n "$p" ] && kill -9 "$p" 2>/dev/null
done
for f in /sys/fs/cgroup/*/tend/*/cgroup.procs /sys/fs/cgroup/tend/*/cgroup.procs; do
  [ -f "$f" ] || continue
  for p in $(cat "$f"); do kill -9 "$p" 2>/dev/null; done
done
sleep 0.1
for d in /sys/fs/cgroup/*/tend/* /sys/fs/cgroup/tend/*; do [ -d "$d" ] && rmdir "$d" 2>/dev/null; done
rm -rf /var/lib/tend/* /var/lib/tend/.[!.]* 2>/dev/null
true
"#;

/// Kill by pid what the playbook's pid files name, then remove its tree.
const WIPE_ANSIBLE: &str = r#"
for f in /srv/ansible-bench/*/app.pid; do
  [ -f "$f" ] || continue
  p=$(cat "$f")
  [ -n "$p" ] && kill -9 "$p" 2>/dev/null
done
rm -rf /srv/ansible-bench
true
"#;

fn bench_fleet(
    ctx: &Ctx,
    tend_bin: Option<&Path>,
    ansible_bin: Option<&Path>,
    rows: &mut Vec<Measurement>,
) {
    let n = ctx.n;
    // The floor first, on idle hosts.
    rows.extend(phase_floor(ctx));
    match tend_bin {
        Some(bin) => rows.extend(tendside::phases(ctx, bin)),
        None => rows.push(Measurement::failed(
            "all",
            "tend",
            n,
            "s",
            vec![],
            "skipped or the tend binary not available",
        )),
    }
    if let Err(e) = ctx.wipe_tend() {
        eprintln!("wiping tend's services failed: {e:#}");
    }
    match ansible_bin {
        Some(bin) => rows.extend(phase_ansible(ctx, bin)),
        None => rows.push(Measurement::failed(
            "all",
            "ansible",
            n,
            "s",
            vec![],
            "skipped (--skip-ansible, --ansible-max-hosts) or ansible-core not installed",
        )),
    }
    if let Err(e) = ctx.wipe_ansible() {
        eprintln!("wiping Ansible's services failed: {e:#}");
    }
}

fn phase_floor(ctx: &Ctx) -> Vec<Measurement> {
    let n = ctx.n;
    let cmd = "cat /proc/loadavg";
    let dir = PathBuf::from(format!("/tmp/tb-cm-{}", std::process::id()));
    let cm = match floor::ControlMasters::open(&ctx.hosts, &dir) {
        Ok(c) => c,
        Err(e) => {
            return vec![Measurement::failed(
                "noop",
                "floor",
                n,
                "s",
                vec![],
                format!("{e:#}"),
            )]
        }
    };
    let mut wall = Vec::new();
    let mut cpu = Vec::new();
    let mut err = None;
    // One untimed warm-up run.
    let _ = cm.run_all(cmd);
    for _ in 0..ctx.runs {
        let c0 = ctx.hosts_cpu_seconds().ok();
        match cm.run_all(cmd) {
            Ok(s) => wall.push(s),
            Err(e) => {
                err = Some(format!("{e:#}"));
                break;
            }
        }
        if let (Some(a), Ok(b)) = (c0, ctx.hosts_cpu_seconds()) {
            cpu.push((b - a) / n as f64 * 1e3);
        }
    }
    let note = format!(
        "`{cmd}` on all {n} hosts: {n} ssh clients in parallel over open ControlMaster connections"
    );
    let mut out = vec![match err {
        None => Measurement::new("noop", "floor", n, "s", wall, note),
        Some(e) => Measurement::failed("noop", "floor", n, "s", wall, e),
    }];
    out.push(Measurement::new(
        "noop host CPU per host",
        "floor",
        n,
        "ms",
        cpu,
        "cpuacct.usage of each host's cgroup (sshd and children), delta / hosts",
    ));
    drop(cm);
    let _ = std::fs::remove_dir_all(&dir);
    out
}

#[derive(Clone, Copy, PartialEq)]
enum Step {
    Check,
    Repair,
    Converge,
}

/// Interleaved so that a `--deadline` leaves every scenario with samples:
/// converge, check, repair, then the remaining checks, repairs, converges.
fn schedule(runs: usize) -> Vec<Step> {
    let mut v = vec![Step::Check, Step::Repair];
    v.extend(std::iter::repeat_n(Step::Check, runs - 1));
    v.extend(std::iter::repeat_n(Step::Repair, runs - 1));
    v.extend(std::iter::repeat_n(Step::Converge, runs - 1));
    v
}

#[derive(Default)]
struct Series {
    samples: Vec<f64>,
    extra: Vec<f64>,
    host_cpu: Vec<f64>,
    ctl_cpu: Vec<f64>,
    err: Option<String>,
}

fn phase_ansible(ctx: &Ctx, bin: &Path) -> Vec<Measurement> {
    let n = ctx.n;
    let mut a = match ansible::Ansible::prepare(
        bin.to_path_buf(),
        &ctx.work.join("ansible"),
        &ctx.hosts,
        &ctx.wl,
    ) {
        Ok(a) => a,
        Err(e) => {
            return vec![Measurement::failed(
                "all",
                "ansible",
                n,
                "s",
                vec![],
                format!("{e:#}"),
            )]
        }
    };
    a.budget = ctx.ansible_budget;
    let ports = ctx.ports();
    let runs = ctx.ansible_runs.max(1);
    let settings = format!(
        "forks={}, pipelining=True, gather_facts=false, ControlPersist=60s{}",
        a.forks,
        match a.budget {
            Some(b) => format!(", each run stopped after {} s", b.as_secs()),
            None => String::new(),
        }
    );
    let victim = &ctx.test_hosts()[0];
    let port = ports[0];
    let svc = &ctx.wl.services[0].name;

    let converge_once = || -> Result<f64> {
        ctx.wipe_ansible().context("wipe")?;
        let r = a.playbook(false)?;
        util::all_healthy(ctx.test_hosts(), &ports).context("after ansible-playbook")?;
        Ok(r.seconds)
    };
    let check_once = |s: &mut Series| -> Result<()> {
        let c0 = ctx.hosts_cpu_seconds().ok();
        let s0 = procfs::children_cpu_seconds();
        let r = a.playbook(true)?;
        if r.recap.changed != 0 || r.recap.hosts != n {
            bail!("--check on converged hosts reported {:?}", r.recap);
        }
        s.samples.push(r.seconds);
        s.ctl_cpu.push((procfs::children_cpu_seconds() - s0) * 1e3);
        if let (Some(c0), Ok(c1)) = (c0, ctx.hosts_cpu_seconds()) {
            s.host_cpu.push((c1 - c0) / n as f64 * 1e3);
        }
        Ok(())
    };
    let repair_once = |s: &mut Series| -> Result<()> {
        let kill = format!("kill -9 \"$(cat /srv/ansible-bench/{svc}/app.pid)\"");
        victim.exec_ok(&kill).context("kill")?;
        util::wait_closed(&victim.ip, port, Duration::from_secs(10))?;
        let t0 = Instant::now();
        let (healthy, ran) = std::thread::scope(|sc| {
            let run = sc.spawn(|| a.playbook(false));
            let healthy =
                util::wait_http(&victim.ip, port, Duration::from_secs(1800)).map(|_| t0.elapsed());
            (
                healthy,
                run.join()
                    .map_err(|_| anyhow::anyhow!("ansible thread panicked")),
            )
        });
        let run = ran??;
        s.samples.push(healthy?.as_secs_f64());
        s.extra.push(run.seconds);
        Ok(())
    };

    let mut conv = Series::default();
    let mut check = Series::default();
    let mut repair = Series::default();
    let mut state_ok = match converge_once() {
        Ok(x) => {
            conv.samples.push(x);
            true
        }
        Err(e) => {
            conv.err = Some(format!("{e:#}"));
            false
        }
    };
    let mut planned = [0usize; 3];
    for step in schedule(runs) {
        planned[step as usize] += 1;
        if !state_ok || ctx.past_deadline() {
            continue;
        }
        let series = match step {
            Step::Check => &mut check,
            Step::Repair => &mut repair,
            Step::Converge => &mut conv,
        };
        if series.err.is_some() {
            continue;
        }
        let res = match step {
            Step::Check => check_once(series),
            Step::Repair => repair_once(series),
            Step::Converge => converge_once().map(|x| series.samples.push(x)),
        };
        if let Err(e) = res {
            series.err = Some(format!("{e:#}"));
            // A failed run may leave the hosts half converged: converge again.
            state_ok = converge_once().is_ok();
        }
    }
    // Converge has one run more than its schedule entries (the first).
    planned[Step::Converge as usize] += 1;
    let cut = |s: &mut Series, k: usize| {
        if s.err.is_none() && s.samples.len() < k {
            s.err = Some(format!(
                "stopped at the --deadline after {} of {k} runs{}",
                s.samples.len(),
                if state_ok {
                    ""
                } else {
                    " (hosts could not be converged again)"
                }
            ));
        }
    };
    cut(&mut conv, planned[Step::Converge as usize]);
    cut(&mut check, planned[Step::Check as usize]);
    cut(&mut repair, planned[Step::Repair as usize]);
    let partial = |s: &Series| s.err.clone();
    vec![
        finish("converge", "ansible-playbook", n, conv.samples.clone(), partial(&conv), format!("from empty hosts; {settings}")),
        finish("noop", "ansible-playbook --check", n, check.samples.clone(), partial(&check), settings.clone()),
        Measurement::new(
            "noop host CPU per host",
            "ansible-playbook --check",
            n,
            "ms",
            check.host_cpu,
            "cpuacct.usage of each host's cgroup, delta / hosts",
        ),
        Measurement::new(
            "noop controller CPU",
            "ansible-playbook --check",
            n,
            "ms",
            check.ctl_cpu,
            "user+sys of ansible-playbook and the children it waited for (not the ControlPersist masters)",
        ),
        finish(
            "repair",
            "ansible-playbook",
            n,
            repair.samples.clone(),
            partial(&repair),
            format!("kill -9 one service on one host; from starting the playbook to HTTP 200; {settings}"),
        ),
        Measurement::new(
            "repair (whole run)",
            "ansible-playbook",
            n,
            "s",
            repair.extra,
            "the same runs, until ansible-playbook exits",
        ),
    ]
}

pub fn finish(
    scenario: &'static str,
    tool: &'static str,
    n: usize,
    samples: Vec<f64>,
    err: Option<String>,
    note: String,
) -> Measurement {
    match err {
        None => Measurement::new(scenario, tool, n, "s", samples, note),
        Some(e) => Measurement::failed(scenario, tool, n, "s", samples, e),
    }
}

fn median_of(rows: &[Measurement], scenario: &str, tool: &str, n: usize) -> Option<f64> {
    rows.iter()
        .find(|r| r.scenario == scenario && r.tool == tool && r.hosts == n && r.error.is_none())
        .and_then(|r| r.summary)
        .map(|s| s.median)
}

/// The targets of the issue, as measured (either way).
fn ratios(rows: &[Measurement], sizes: &[usize]) -> String {
    let mut s = String::from("## Ratios (medians)\n\n");
    let tend = "tend observe+plan (in-process pool)";
    for &n in sizes {
        let t = median_of(rows, "noop", tend, n);
        let a = median_of(rows, "noop", "ansible-playbook --check", n);
        let f = median_of(rows, "noop", "floor", n);
        let r = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) if y > 0.0 => format!("{:.2}×", x / y),
            _ => "not measured".into(),
        };
        s.push_str(&format!(
            "- {n} hosts, no-op: ansible-playbook --check / tend = {} (target ≥ 30× at 50 hosts)\n",
            r(a, t)
        ));
        let py = median_of(rows, "noop", "pyinfra --dry", n);
        s.push_str(&format!(
            "- {n} hosts, no-op: pyinfra --dry / tend = {} (target ≥ 20×)\n",
            r(py, t)
        ));
        s.push_str(&format!(
            "- {n} hosts, no-op: tend / ControlMaster floor = {} (target ≤ 0.5×)\n",
            r(t, f)
        ));
        let ctl = median_of(rows, "noop", "tend run (POST /reconcile?wait=true)", n);
        s.push_str(&format!(
            "- {n} hosts, no-op via the controller: tend run / floor = {}\n",
            r(ctl, f)
        ));
        let rep = median_of(rows, "repair", "tend run (POST /reconcile)", n);
        let arep = median_of(rows, "repair", "ansible-playbook", n);
        s.push_str(&format!(
            "- {n} hosts, repair: tend {} s, ansible {} s (target ≤ 1 s + the health check); ansible / tend = {}\n",
            rep.map(|x| format!("{x:.3}")).unwrap_or("not measured".into()),
            arep.map(|x| format!("{x:.1}")).unwrap_or("not measured".into()),
            r(arep, rep)
        ));
        let conv = median_of(rows, "converge", "tend apply", n);
        let aconv = median_of(rows, "converge", "ansible-playbook", n);
        let pconv = median_of(rows, "converge", "pyinfra", n);
        s.push_str(&format!(
            "- {n} hosts, converge from empty: ansible / tend apply = {}, pyinfra / tend apply = {}\n",
            r(aconv, conv),
            r(pconv, conv)
        ));
        let idle = rows
            .iter()
            .find(|x| x.scenario == "idle RSS" && x.hosts == n)
            .and_then(|x| x.summary);
        let peak = rows
            .iter()
            .find(|x| x.scenario == "peak RSS" && x.hosts == n)
            .and_then(|x| x.summary);
        s.push_str(&format!(
            "- {n} hosts, memory of `tend run`: idle {} MiB, peak {} MiB (target idle ≤ 20 MiB at 50 hosts)\n",
            idle.map(|x| format!("{:.1}", x.median)).unwrap_or("not measured".into()),
            peak.map(|x| format!("{:.1}", x.max)).unwrap_or("not measured".into()),
        ));
        let life = rows
            .iter()
            .find(|x| x.scenario == "ssh connections per host, process lifetime" && x.hosts == n)
            .and_then(|x| x.summary);
        s.push_str(&format!(
            "- {n} hosts, ssh connections per host over `tend run`'s startup + 10 reconciles: {} (target exactly 1)\n",
            life.map(|x| format!("min {} max {}", x.min, x.max)).unwrap_or("not measured".into())
        ));
    }
    s
}

fn parse_hhmm(s: &str) -> Option<u64> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (u64, u64) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 3600 + m * 60)
}

fn version_line(bin: &Path) -> String {
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn write_json(path: &Path, rows: &[Measurement], env: &[String]) -> Result<()> {
    let v = serde_json::json!({ "environment": env, "results": rows });
    let text = serde_json::to_string_pretty(&v).context("serialize results")?;
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}
