//! Where the no-op's host-side cost goes: the probe script and its parts run
//! in one host without ssh (nsenter), and the same over the kept-open pool.

use crate::stats::Measurement;
use crate::Ctx;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tend::model::Desired;
use tend::transport::pool::Pool;

const LOOPS: usize = 200;

/// Cut `script` just before the first line starting with `marker`, and close
/// the output frame the way the full probe does.
fn cut(script: &str, marker: &str) -> Option<String> {
    let at = script.find(&format!("\n{marker}"))?;
    Some(format!(
        "{}\nprintf '%send %s\\n' \"$OUT\" \"$n\"\n",
        &script[..at]
    ))
}

/// `script` without the lines from `from` up to (not including) `to`.
fn without(script: &str, from: &str, to: &str) -> Option<String> {
    let a = script.find(&format!("\n{from}"))?;
    let b = script.find(&format!("\n{to}"))?;
    (a < b).then(|| format!("{}{}", &script[..a], &script[b..]))
}

fn cgroup_cpu(ctx: &Ctx, host: &str) -> Result<f64> {
    let dir = Path::new("/sys/fs/cgroup/cpuacct")
        .join("tend-testbed")
        .join(format!("f{}", ctx.fleet.number()))
        .join(host);
    Ok(crate::procfs::cpuacct_seconds(&dir)?)
}

/// Run `sh FILE` LOOPS times inside host0; (CPU ms, wall ms) per run.
fn local_loop(ctx: &Ctx, runner: &str, file: &str) -> Result<(f64, f64)> {
    let h = &ctx.test_hosts()[0];
    let cmd = format!(
        "i=0; while [ $i -lt {LOOPS} ]; do {runner} {file} >/dev/null 2>&1; i=$((i+1)); done"
    );
    let c0 = cgroup_cpu(ctx, &h.name)?;
    let t0 = Instant::now();
    h.exec_ok(&cmd)?;
    let wall = t0.elapsed().as_secs_f64() * 1e3 / LOOPS as f64;
    let cpu = (cgroup_cpu(ctx, &h.name)? - c0) * 1e3 / LOOPS as f64;
    Ok((cpu, wall))
}

pub fn probe_profile(
    ctx: &Ctx,
    rt: &tokio::runtime::Runtime,
    pool: &Pool,
    desired: &Arc<Desired>,
) -> Vec<Measurement> {
    match run(ctx, rt, pool, desired) {
        Ok(m) => m,
        Err(e) => vec![Measurement::failed(
            "probe profile",
            "tend",
            ctx.n,
            "ms",
            vec![],
            format!("{e:#}"),
        )],
    }
}

fn run(
    ctx: &Ctx,
    rt: &tokio::runtime::Runtime,
    pool: &Pool,
    desired: &Arc<Desired>,
) -> Result<Vec<Measurement>> {
    let n = ctx.n;
    let h = &ctx.test_hosts()[0];
    let host = desired
        .hosts
        .get(&h.name)
        .context("host0 not in the manifests")?;
    let opts = tend::observe::options_for(desired, &h.name);
    let full = tend::observe::probe_script_with(&host.root, &opts)?;
    let mut auto_opts = opts.clone();
    auto_opts.listen_source = tend::observe::ListenSource::Auto;
    let auto = tend::observe::probe_script_with(&host.root, &auto_opts)?;
    // The probe's order: facts, records, listeners (table walk or known
    // sockets), socket owners, checks.
    let Some(facts) = cut(&full, "SCAN=") else {
        bail!("probe has no `SCAN=` line")
    };
    let Some(records) = cut(&full, "L=; LI=") else {
        bail!("probe has no `L=; LI=` line")
    };
    let Some(listeners) = cut(&full, "# Socket inodes") else {
        bail!("probe has no socket owner block")
    };
    let Some(no_listeners) = without(&full, "L=; LI=", "# Socket inodes") else {
        bail!("probe has no listener block")
    };
    let mut known_opts = opts.clone();
    known_opts.known = pool
        .memory::<tend::observe::SocketCache>()
        .known(&h.name, &opts);
    let known = tend::observe::probe_script_with(&host.root, &known_opts)?;
    let mut variants: Vec<(&str, String)> = vec![
        ("`true` (empty script)", "true\n".into()),
        (
            "probe up to facts (hostname, boot_id, meminfo, cgroup)",
            facts,
        ),
        (
            "probe up to records (+ records, /proc/PID/stat, cgroups)",
            records,
        ),
        ("probe up to listeners (+ /proc/net/tcp{,6})", listeners),
        (
            "full probe (+ socket owners via /proc/PID/fd)",
            full.clone(),
        ),
        ("full probe, LISTEN_SRC=auto (ss)", auto),
        (
            "full probe without the listener block (so no socket owners either)",
            no_listeners,
        ),
    ];
    if !known_opts.known.is_empty() {
        variants.push((
            "full probe verifying the known sockets (what a reconcile runs)",
            known,
        ));
    }
    let mut out = Vec::new();
    for (i, (label, text)) in variants.iter().enumerate() {
        let inside = format!("/tmp/tend-bench-probe{i}.sh");
        std::fs::write(h.path(&inside), text).context("write probe variant")?;
        let mut cpu = Vec::new();
        let mut wall = Vec::new();
        for _ in 0..3 {
            let (c, w) = local_loop(ctx, "sh", &inside)?;
            cpu.push(c);
            wall.push(w);
        }
        out.push(Measurement::new(
            "probe profile: host CPU per run",
            leak(format!("sh: {label}")),
            n,
            "ms",
            cpu,
            format!("{LOOPS} runs of `sh FILE` in host0 via nsenter (no ssh), 3 batches; wall {:.2} ms/run", wall[1]),
        ));
    }
    // A persistent remote shell would run each probe in a subshell of itself.
    let (c, w) = local_loop(ctx, "( .", "/tmp/tend-bench-probe4.sh )")?;
    out.push(Measurement::new(
        "probe profile: host CPU per run",
        "full probe as `( . FILE )` in one long-lived sh (persistent-channel model)",
        n,
        "ms",
        vec![c],
        format!("{LOOPS} runs in one sh in host0 via nsenter; wall {w:.2} ms/run"),
    ));
    // The login shell sshd puts in front of every exec (root's shell runs `sh -c …`).
    let shell = h
        .exec_ok("getent passwd root | cut -d: -f7")?
        .trim()
        .to_string();
    let (c, _) = local_loop(
        ctx,
        &format!("{shell} -c 'sh \"$0\"'"),
        "/tmp/tend-bench-probe0.sh",
    )?;
    out.push(Measurement::new(
        "probe profile: host CPU per run",
        leak(format!("{shell} -c 'sh -c true' (sshd's login-shell hop)")),
        n,
        "ms",
        vec![c],
        format!("{LOOPS} runs in host0 via nsenter"),
    ));
    // The same through sshd on the pool's kept-open connection.
    let t = pool.get(host)?;
    for (label, script) in [
        ("exec `true`", "true".to_string()),
        ("exec full probe", full),
    ] {
        let k = 50;
        let (cpu, wall) = per_call(ctx, &h.name, k, || {
            rt.block_on(async {
                for _ in 0..k {
                    let _ = t.exec(&script, b"").await;
                }
            })
        })?;
        let note =
            format!("{k} sequential execs on host0's kept-open connection; wall {wall:.2} ms/exec");
        out.push(pool_row(n, label, cpu, note));
    }
    // What a reconcile really does: a query on the kept-open shell.
    let call = tend::observe::probe_call(&host.root, &known_opts)?;
    for (label, prelude, script) in [
        ("kept shell: query `true`", "", "true".to_string()),
        (
            "kept shell: the reconcile's probe (known sockets)",
            call.0,
            call.1,
        ),
    ] {
        let k = 100;
        let _ = rt.block_on(t.query_prepared(prelude, &script));
        let (cpu, wall) = per_call(ctx, &h.name, k, || {
            rt.block_on(async {
                for _ in 0..k {
                    let _ = t.query_prepared(prelude, &script).await;
                }
            })
        })?;
        let note = format!("{k} sequential queries on host0's kept shell; wall {wall:.2} ms/query");
        out.push(pool_row(n, label, cpu, note));
    }
    Ok(out)
}

/// Host CPU and wall time (ms) per call of the `k` calls `run` makes.
fn per_call(ctx: &Ctx, host: &str, k: usize, run: impl FnOnce()) -> Result<(f64, f64)> {
    let c0 = cgroup_cpu(ctx, host)?;
    let t0 = Instant::now();
    run();
    let wall = t0.elapsed().as_secs_f64() * 1e3 / k as f64;
    let cpu = (cgroup_cpu(ctx, host)? - c0) * 1e3 / k as f64;
    Ok((cpu, wall))
}

fn pool_row(n: usize, label: &str, cpu: f64, note: String) -> Measurement {
    Measurement::new(
        "probe profile: host CPU per run",
        leak(format!("russh pool: {label}")),
        n,
        "ms",
        vec![cpu],
        note,
    )
}

/// Labels are few and live for the whole run.
pub fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}
