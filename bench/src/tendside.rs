//! tend's side: `tend apply`, `tend plan`, observe+plan in process over a
//! kept-open pool, and the controller (`tend run`, `POST /reconcile`).

use crate::stats::Measurement;
use crate::{finish, procfs, util, Ctx};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tend::manifest::{self, Secrets};
use tend::model::{Desired, Observation};
use tend::transport::pool::{Pool, PoolOptions};
use tend::transport::Transport;

/// `cargo build --release -p tend --bin tend`; the binary's path.
pub fn build_tend_binary() -> Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args([
            "build",
            "--release",
            "-p",
            "tend",
            "--bin",
            "tend",
            "--manifest-path",
        ])
        .arg(root.join("Cargo.toml"))
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo build -p tend failed ({status})");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("release/tend");
    if !bin.exists() {
        bail!("{} is missing after the build", bin.display());
    }
    Ok(bin)
}

pub fn phases(ctx: &Ctx, bin: &Path) -> Vec<Measurement> {
    let mut out = Vec::new();
    out.push(converge_cli(ctx, bin));
    out.extend(noop_in_process(ctx));
    out.push(plan_cli(ctx, bin));
    out.extend(controller(ctx, bin));
    out
}

fn tend_cmd(bin: &Path, ctx: &Ctx) -> Command {
    let mut c = Command::new(bin);
    c.env("TEND_LOG", "warn")
        .current_dir(&ctx.work)
        .stdin(Stdio::null());
    c
}

fn short_err(o: &std::process::Output) -> String {
    let mut s = String::from_utf8_lossy(&o.stderr).trim().to_string();
    if s.is_empty() {
        s = String::from_utf8_lossy(&o.stdout).trim().to_string();
    }
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(6)..].join(" / ")
}

/// Scenario 2: `tend apply --yes` on empty hosts.
fn converge_cli(ctx: &Ctx, bin: &Path) -> Measurement {
    let ports = ctx.ports();
    let mut samples = Vec::new();
    let mut err = None;
    for _ in 0..ctx.runs {
        if let Err(e) = ctx.wipe_tend() {
            err = Some(format!("wipe: {e:#}"));
            break;
        }
        let t0 = Instant::now();
        let out = tend_cmd(bin, ctx)
            .arg("apply")
            .arg("--yes")
            .arg(&ctx.manifests)
            .output();
        let secs = t0.elapsed().as_secs_f64();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                let _ = std::fs::write(
                    ctx.work.join("last-apply.log"),
                    [&o.stdout[..], &o.stderr[..]].concat(),
                );
                err = Some(format!("tend apply exited {}: {}", o.status, short_err(&o)));
                break;
            }
            Err(e) => {
                err = Some(format!("cannot run tend apply: {e}"));
                break;
            }
        }
        if let Err(e) = util::all_healthy(ctx.test_hosts(), &ports) {
            err = Some(format!("after tend apply: {e:#}"));
            break;
        }
        samples.push(secs);
    }
    finish(
        "converge",
        "tend apply",
        ctx.n,
        samples,
        err,
        format!(
            "from empty hosts; CLI process, new connections, default --parallelism ({})",
            tend::config::Config::default().apply_parallelism
        ),
    )
}

/// Scenario 1 (reference): `tend plan` as a CLI: new process, new connections.
fn plan_cli(ctx: &Ctx, bin: &Path) -> Measurement {
    let mut samples = Vec::new();
    let mut err = None;
    for _ in 0..ctx.runs {
        let t0 = Instant::now();
        let out = tend_cmd(bin, ctx).arg("plan").arg(&ctx.manifests).output();
        let secs = t0.elapsed().as_secs_f64();
        match out {
            Ok(o) if o.status.code() == Some(0) => samples.push(secs),
            Ok(o) => {
                err = Some(format!(
                    "tend plan on converged hosts exited {} (0 = in sync): {}",
                    o.status,
                    short_err(&o)
                ));
                break;
            }
            Err(e) => {
                err = Some(format!("cannot run tend plan: {e}"));
                break;
            }
        }
    }
    finish(
        "noop",
        "tend plan (CLI)",
        ctx.n,
        samples,
        err,
        "new process and ssh connections each run".into(),
    )
}

fn load(ctx: &Ctx) -> Result<Desired> {
    manifest::load_path(&ctx.manifests, Secrets::Resolve)
        .map(|l| l.desired)
        .map_err(|d| anyhow::anyhow!("{d}"))
}

fn unreachable(obs: &BTreeMap<String, Observation>) -> Option<String> {
    obs.iter().find_map(|(h, o)| match o {
        Observation::Unreachable { reason, .. } => Some(format!("{h} unreachable: {reason}")),
        Observation::Reachable(_) => None,
    })
}

/// Scenario 1: observe_all + plan over one kept-open pool, in this process;
/// plus a breakdown for the profile (transport floor, probe, parse+plan).
fn noop_in_process(ctx: &Ctx) -> Vec<Measurement> {
    let n = ctx.n;
    let tool = "tend observe+plan (in-process pool)";
    let fail = |e: String| vec![Measurement::failed("noop", tool, n, "s", vec![], e)];
    let desired = match load(ctx) {
        Ok(d) => Arc::new(d),
        Err(e) => return fail(format!("load manifests: {e:#}")),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("tokio: {e}")),
    };
    let me = std::process::id();
    let anon0 = procfs::status_bytes(me, "RssAnon").ok();
    let pool = Pool::new(PoolOptions::default());
    let hosts: Vec<String> = desired.hosts.keys().cloned().collect();
    let logins0 = ctx.logins();

    let mut out = Vec::new();
    let mut wall = Vec::new();
    let mut wall_all = Vec::new();
    let mut plan_only = Vec::new();
    let mut host_cpu = Vec::new();
    let mut ctl_cpu = Vec::new();
    let mut err = None;
    rt.block_on(async {
        // Warm-up: opens the connections (not timed).
        let obs = tend::observe::observe_all(&pool, &desired, &hosts).await;
        if let Some(u) = unreachable(&obs) {
            err = Some(format!("warm-up: {u}"));
            return;
        }
        for _ in 0..ctx.runs {
            let c0 = ctx.hosts_cpu_seconds().ok();
            let s0 = procfs::self_cpu_seconds();
            let t0 = Instant::now();
            let obs = tend::observe::observe_all(&pool, &desired, &hosts).await;
            let t1 = Instant::now();
            let plan = tend::plan::plan(&desired, &obs);
            let secs = t0.elapsed().as_secs_f64();
            plan_only.push(t1.elapsed().as_secs_f64() * 1e3);
            ctl_cpu.push((procfs::self_cpu_seconds() - s0) * 1e3);
            if let (Some(c0), Ok(c1)) = (c0, ctx.hosts_cpu_seconds()) {
                host_cpu.push((c1 - c0) / n as f64 * 1e3);
            }
            if !plan.in_sync() {
                let why = unreachable(&obs).unwrap_or_else(|| {
                    let drift: Vec<String> = plan
                        .services
                        .iter()
                        .filter(|s| !s.reasons.is_empty())
                        .take(3)
                        .map(|s| format!("{} {:?}", s.service, s.reasons))
                        .collect();
                    format!("{} actions, e.g. {}", plan.actions.len(), drift.join(", "))
                });
                err = Some(format!("plan of converged hosts is not in sync: {why}"));
                return;
            }
            wall.push(secs);
        }
        // The same with every host probed at once (observe_all caps at DEFAULT_CONCURRENCY).
        for _ in 0..ctx.runs {
            let t0 = Instant::now();
            let obs = tend::observe::observe_all_with(
                &pool,
                &desired,
                &hosts,
                tend::observe::DEFAULT_TIMEOUT,
                n.max(1),
            )
            .await;
            let _ = tend::plan::plan(&desired, &obs);
            wall_all.push(t0.elapsed().as_secs_f64());
        }
    });
    let conns = pool.total_stats().connections();
    let logins1 = ctx.logins();
    let anon1 = procfs::status_bytes(me, "RssAnon").ok();
    if let (Some(a0), Some(a1)) = (anon0, anon1) {
        out.push(Measurement::new(
            "memory (profile)",
            "tend pool + observe, in this process",
            n,
            "KiB per host",
            vec![(a1 as f64 - a0 as f64) / 1024.0 / n as f64],
            "growth of the benchmark's RssAnon from before the pool to after all observe runs, / hosts (glibc malloc, default arenas)",
        ));
    }
    out.push(finish(
        "noop",
        tool,
        n,
        wall,
        err,
        format!(
            "observe_all (concurrency {}) + plan; pool opened {conns} connections for {n} hosts over warm-up + {} runs",
            tend::observe::DEFAULT_CONCURRENCY,
            2 * ctx.runs
        ),
    ));
    out.push(Measurement::new(
        "noop (profile)",
        "tend observe_all_with(concurrency = hosts) + plan",
        n,
        "s",
        wall_all,
        "same pool, every host probed at once",
    ));
    out.push(Measurement::new(
        "noop (profile)",
        "tend plan() alone",
        n,
        "ms",
        plan_only,
        "the pure diff",
    ));
    out.push(Measurement::new(
        "noop host CPU per host",
        "tend observe (in-process pool)",
        n,
        "ms",
        host_cpu,
        "cpuacct.usage of each host's cgroup, delta / hosts",
    ));
    out.push(Measurement::new(
        "noop controller CPU",
        "tend observe+plan (in-process pool)",
        n,
        "ms",
        ctl_cpu,
        "user+sys of the benchmark process during observe_all+plan",
    ));
    let per_host: Vec<f64> = logins1
        .iter()
        .zip(&logins0)
        .map(|(a, b)| (a - b) as f64)
        .collect();
    out.push(Measurement::new(
        "ssh connections per host (in-process pool)",
        "tend",
        n,
        "count",
        per_host,
        format!(
            "sshd 'Accepted publickey' lines per host over warm-up + {} observe runs",
            2 * ctx.runs
        ),
    ));
    out.extend(profile(ctx, &rt, &pool, &desired));
    if ctx.profile {
        out.extend(crate::profile::probe_profile(ctx, &rt, &pool, &desired));
    }
    out
}

/// Where a probe's time goes: one `true` over the pool vs the probe script,
/// each host alone (sequential) and all at once.
fn profile(
    ctx: &Ctx,
    rt: &tokio::runtime::Runtime,
    pool: &Pool,
    desired: &Desired,
) -> Vec<Measurement> {
    let n = ctx.n;
    let mut out = Vec::new();
    let transports: Vec<(Arc<dyn Transport>, String)> = desired
        .hosts
        .values()
        .filter_map(|h| {
            let t = pool.get(h).ok()?;
            let opts = tend::observe::options_for(desired, &h.name);
            let script = tend::observe::probe_script_with(&h.root, &opts).ok()?;
            Some((t, script))
        })
        .collect();
    if transports.len() != n {
        return vec![Measurement::failed(
            "noop (profile)",
            "tend",
            n,
            "s",
            vec![],
            "cannot build probes",
        )];
    }
    let script_len = transports[0].1.len();
    let mut seq_true = Vec::new();
    let mut seq_probe = Vec::new();
    let mut par_true = Vec::new();
    let mut parse_ms = Vec::new();
    let mut host_cpu_true = Vec::new();
    rt.block_on(async {
        for (t, script) in &transports {
            let t0 = Instant::now();
            if t.exec("true", b"").await.is_ok() {
                seq_true.push(t0.elapsed().as_secs_f64() * 1e3);
            }
            let t0 = Instant::now();
            if let Ok(o) = t.exec(script, b"").await {
                seq_probe.push(t0.elapsed().as_secs_f64() * 1e3);
                let t1 = Instant::now();
                let _ = tend::observe::parse(&o.stdout);
                parse_ms.push(t1.elapsed().as_secs_f64() * 1e3);
            }
        }
        for _ in 0..ctx.runs {
            let c0 = ctx.hosts_cpu_seconds().ok();
            let t0 = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for (t, _) in &transports {
                let t = t.clone();
                set.spawn(
                    async move { t.exec("cat /proc/loadavg", b"").await.map(|o| o.success()) },
                );
            }
            let mut ok = true;
            while let Some(r) = set.join_next().await {
                ok &= matches!(r, Ok(Ok(true)));
            }
            if ok {
                par_true.push(t0.elapsed().as_secs_f64());
            }
            if let (Some(c0), Ok(c1)) = (c0, ctx.hosts_cpu_seconds()) {
                host_cpu_true.push((c1 - c0) / n as f64 * 1e3);
            }
        }
    });
    out.push(Measurement::new(
        "noop (profile)",
        "tend pool: `cat /proc/loadavg` on all hosts at once",
        n,
        "s",
        par_true,
        "russh exec over the kept-open pool: tend's own floor",
    ));
    out.push(Measurement::new(
        "noop host CPU per host",
        "tend pool: `cat /proc/loadavg`",
        n,
        "ms",
        host_cpu_true,
        "cpuacct delta / hosts",
    ));
    out.push(Measurement::new(
        "noop (profile)",
        "tend pool: `true`, one host at a time",
        n,
        "ms",
        seq_true,
        "latency of one exec round trip, unloaded",
    ));
    out.push(Measurement::new(
        "noop (profile)",
        "tend probe script, one host at a time",
        n,
        "ms",
        seq_probe,
        format!("one probe exec, unloaded; script is {script_len} bytes"),
    ));
    out.push(Measurement::new(
        "noop (profile)",
        "tend observe::parse",
        n,
        "ms",
        parse_ms,
        "per host",
    ));
    out
}

// ------------------------------------------------------------ controller

struct Controller {
    child: Child,
    port: u16,
    token: String,
}

impl Controller {
    fn start(ctx: &Ctx, bin: &Path) -> Result<Controller> {
        let dir = ctx.work.join("controller");
        std::fs::create_dir_all(&dir).context("mkdir controller dir")?;
        let token = format!("bench-{}", std::process::id());
        let token_file = dir.join("token");
        std::fs::write(&token_file, format!("{token}\n")).context("write token")?;
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port")?;
            l.local_addr().context("local addr")?.port()
        };
        // Schedule: once a year, so only our triggers reconcile.
        let cfg = format!(
            "repository: \"{repo}\"\npath: \".\"\nschedule: \"0 0 1 1 *\"\nlisten: \"127.0.0.1:{port}\"\n\
             token_file: \"{tf}\"\ncache_dir: \"{cache}\"\n",
            repo = ctx.manifests.display(),
            tf = token_file.display(),
            cache = dir.join("cache").display(),
        );
        let cfg_path = dir.join("tend.yaml");
        std::fs::write(&cfg_path, cfg).context("write tend.yaml")?;
        let log = std::fs::File::create(dir.join("tend-run.log")).context("create log")?;
        let mut cmd = Command::new(bin);
        for (k, v) in &ctx.controller_env {
            cmd.env(k, v);
        }
        let child = cmd
            .arg("run")
            .arg("--config")
            .arg(&cfg_path)
            // tend run's default (warn); info under --profile, for the timeline.
            .env("TEND_LOG", if ctx.profile { "info" } else { "warn" })
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("dup log")?)
            .stderr(log)
            .spawn()
            .context("spawn tend run")?;
        Ok(Controller { child, port, token })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One HTTP/1.1 request to the controller; (status, body).
    fn request(&self, method: &str, path: &str, timeout: Duration) -> Result<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).context("connect to tend run")?;
        s.set_read_timeout(Some(timeout)).context("timeout")?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n",
            self.token
        );
        s.write_all(req.as_bytes()).context("send")?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).context("read answer")?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let code = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|x| x.1.to_string())
            .unwrap_or_default();
        Ok((code, body))
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<Duration> {
        let t0 = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                bail!("tend run exited ({st})");
            }
            if let Ok((200, _)) = self.request("GET", "/readyz", Duration::from_secs(5)) {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > limit {
                bail!("tend run not ready after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// POST /reconcile?wait=true; the reconcile's result.
    fn reconcile(&self) -> Result<String> {
        let (code, body) =
            self.request("POST", "/reconcile?wait=true", Duration::from_secs(900))?;
        if code != 200 {
            bail!("POST /reconcile answered {code}: {}", body.trim());
        }
        let v: serde_json::Value =
            serde_json::from_str(body.trim()).context("reconcile answer is not JSON")?;
        Ok(v["reconcile"]["result"]
            .as_str()
            .unwrap_or("unknown")
            .to_string())
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        // SIGTERM to our own child, by pid; then make sure it is gone.
        // SAFETY: kill(2) on a pid we spawned and have not reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Scenarios 3, 4, 5: `tend run` converges empty hosts at startup, then 10 no-op
/// reconciles (connections, CPU), idle RSS, repairs; peak RSS over all of it.
fn controller(ctx: &Ctx, bin: &Path) -> Vec<Measurement> {
    let n = ctx.n;
    let mut out = Vec::new();
    let fail =
        |what: &'static str, e: String| Measurement::failed(what, "tend run", n, "s", vec![], e);
    if let Err(e) = ctx.wipe_tend() {
        return vec![fail("controller", format!("wipe: {e:#}"))];
    }
    let logins0 = ctx.logins();
    let mut c = match Controller::start(ctx, bin) {
        Ok(c) => c,
        Err(e) => return vec![fail("controller", format!("{e:#}"))],
    };
    let pid = c.pid();
    match c.wait_ready(Duration::from_secs(900)) {
        Ok(d) => out.push(Measurement::new(
            "converge",
            "tend run (startup reconcile)",
            n,
            "s",
            vec![d.as_secs_f64()],
            "from empty hosts: process start to /readyz 200 (one run)",
        )),
        Err(e) => {
            out.push(fail(
                "converge",
                format!(
                    "{e:#}; see {}",
                    ctx.work.join("controller/tend-run.log").display()
                ),
            ));
            return out;
        }
    }
    if let Err(e) = util::all_healthy(ctx.test_hosts(), &ctx.ports()) {
        out.push(fail(
            "converge",
            format!("after the startup reconcile: {e:#}"),
        ));
        return out;
    }
    let rss_after_converge = procfs::status_bytes(pid, "VmRSS").ok();

    // 10 no-op reconciles.
    let logins1 = ctx.logins();
    let mut noop = Vec::new();
    let mut host_cpu = Vec::new();
    let mut err = None;
    for _ in 0..10 {
        let c0 = ctx.hosts_cpu_seconds().ok();
        let t0 = Instant::now();
        match c.reconcile() {
            Ok(r) if r == "success" => noop.push(t0.elapsed().as_secs_f64()),
            Ok(r) => {
                err = Some(format!("no-op reconcile result {r:?}"));
                break;
            }
            Err(e) => {
                err = Some(format!("{e:#}"));
                break;
            }
        }
        if let (Some(c0), Ok(c1)) = (c0, ctx.hosts_cpu_seconds()) {
            host_cpu.push((c1 - c0) / n as f64 * 1e3);
        }
    }
    let logins2 = ctx.logins();
    out.push(finish(
        "noop",
        "tend run (POST /reconcile?wait=true)",
        n,
        noop,
        err,
        format!(
            "10 reconciles in a row; tend's default concurrency ({}); includes the HTTP round trip",
            tend::config::Config::default().concurrency
        ),
    ));
    out.push(Measurement::new(
        "noop host CPU per host",
        "tend run reconcile",
        n,
        "ms",
        host_cpu,
        "cpuacct delta / hosts",
    ));
    let during: Vec<f64> = logins2
        .iter()
        .zip(&logins1)
        .map(|(a, b)| (a - b) as f64)
        .collect();
    let total: Vec<f64> = logins2
        .iter()
        .zip(&logins0)
        .map(|(a, b)| (a - b) as f64)
        .collect();
    out.push(Measurement::new(
        "ssh connections per host over 10 reconciles",
        "tend run",
        n,
        "count",
        during,
        "sshd 'Accepted publickey' lines per host, during the 10 no-op reconciles",
    ));
    out.push(Measurement::new(
        "ssh connections per host, process lifetime",
        "tend run",
        n,
        "count",
        total,
        "from before `tend run` started: startup converge + 10 reconciles",
    ));

    // Idle between ticks.
    std::thread::sleep(Duration::from_secs(2));
    let mut idle = Vec::new();
    for _ in 0..5 {
        if let Ok(b) = procfs::status_bytes(pid, "VmRSS") {
            idle.push(b as f64 / (1 << 20) as f64);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let mib = |f: &'static str| {
        procfs::status_bytes(pid, f)
            .map(|b| format!("{:.1}", b as f64 / (1 << 20) as f64))
            .unwrap_or("?".into())
    };
    let threads = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().to_string()))
        })
        .unwrap_or("?".into());
    let split = format!(
        "RssAnon {} MiB, RssFile {} MiB, {threads} threads",
        mib("RssAnon"),
        mib("RssFile")
    );
    out.push(Measurement::new(
        "idle RSS",
        "tend run",
        n,
        "MiB",
        idle,
        format!(
            "VmRSS of `tend run` between ticks, 5 samples 0.5 s apart, after the 10 reconciles ({split}){}",
            rss_after_converge
                .map(|b| format!(
                    "; {:.1} MiB right after the startup converge",
                    b as f64 / (1 << 20) as f64
                ))
                .unwrap_or_default()
        ),
    ));

    // What a scrape and a status read cost at this size (no per-host work
    // should grow with the fleet beyond its own lines).
    for path in ["/metrics", "/status"] {
        let mut ms = Vec::new();
        let mut bytes = 0;
        for _ in 0..5 {
            let t0 = Instant::now();
            match c.request("GET", path, Duration::from_secs(60)) {
                Ok((200, body)) => {
                    ms.push(t0.elapsed().as_secs_f64() * 1e3);
                    bytes = body.len();
                }
                _ => break,
            }
        }
        out.push(Measurement::new(
            "scrape",
            crate::profile::leak(format!("tend run GET {path}")),
            n,
            "ms",
            ms,
            format!("5 GETs between ticks; body {bytes} bytes"),
        ));
    }

    // Repair: one killed service on one host.
    let victim = &ctx.test_hosts()[0];
    let svc = crate::workload::Workload::tend_name(&victim.name, &ctx.wl.services[0]);
    let port = ctx.wl.services[0].port;
    let mut repair = Vec::new();
    let mut recon = Vec::new();
    let mut err = None;
    for _ in 0..ctx.runs {
        let kill = format!(
            "p=$(sed -n 's/^pid=//p' /var/lib/tend/records/{svc}.rec | tail -n 1); [ -n \"$p\" ] && kill -9 \"$p\""
        );
        if let Err(e) = victim
            .exec_ok(&kill)
            .and_then(|_| util::wait_closed(&victim.ip, port, Duration::from_secs(10)))
        {
            err = Some(format!("kill: {e:#}"));
            break;
        }
        let t0 = Instant::now();
        let r = std::thread::scope(|s| {
            let rec = s.spawn(|| c.reconcile().map(|r| (r, t0.elapsed())));
            let healthy =
                util::wait_http(&victim.ip, port, Duration::from_secs(600)).map(|_| t0.elapsed());
            let rec = rec.join().map_err(|_| anyhow::anyhow!("thread panicked"));
            (healthy, rec)
        });
        match r {
            (Ok(h), Ok(Ok((res, d)))) if res == "success" => {
                repair.push(h.as_secs_f64());
                recon.push(d.as_secs_f64());
            }
            (Ok(_), Ok(Ok((res, _)))) => {
                err = Some(format!("repair reconcile result {res:?}"));
                break;
            }
            (Err(e), _) | (_, Err(e)) | (_, Ok(Err(e))) => {
                err = Some(format!("{e:#}"));
                break;
            }
        }
    }
    out.push(finish(
        "repair",
        "tend run (POST /reconcile)",
        n,
        repair,
        err,
        "kill -9 one service on one host; from POST /reconcile to HTTP 200 from the service".into(),
    ));
    out.push(Measurement::new(
        "repair (whole run)",
        "tend run (POST /reconcile)",
        n,
        "s",
        recon,
        "the same runs, until the reconcile answered (health gate included)",
    ));
    match procfs::status_bytes(pid, "VmHWM") {
        Ok(b) => out.push(Measurement::new(
            "peak RSS",
            "tend run",
            n,
            "MiB",
            vec![b as f64 / (1 << 20) as f64],
            "VmHWM of `tend run` over startup converge, 10 no-op reconciles and the repairs",
        )),
        Err(e) => out.push(Measurement::failed(
            "peak RSS",
            "tend run",
            n,
            "MiB",
            vec![],
            e.to_string(),
        )),
    }
    drop(c);
    out
}
