//! A rolling upgrade of one service on every host, in batches: tend
//! (`hosts:` + `rollout.maxUnavailable`) against Ansible (`serial:`), same
//! hosts, same run. Each timed run moves every instance to a new version and
//! ends when all of them serve it.

use crate::ansible::Ansible;
use crate::stats::Measurement;
use crate::{util, Ctx};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const TEND_PORT: u16 = 8200;
const ANSIBLE_PORT: u16 = 8201;
const SCENARIO: &str = "rolling upgrade (one service on every host)";

/// `roll` on every host of the fleet at `version`, batches of `batch`.
fn write_manifests(ctx: &Ctx, dir: &Path, version: &str, batch: usize) -> Result<()> {
    std::fs::create_dir_all(dir.join("app")).context("mkdir rolling manifests")?;
    std::fs::copy(ctx.manifests.join("hosts.yaml"), dir.join("hosts.yaml"))
        .context("copy hosts.yaml")?;
    std::fs::write(dir.join("app/index.html"), format!("roll {version}\n"))
        .context("write the page")?;
    let names: Vec<&str> = ctx.hosts.iter().map(|h| h.name.as_str()).collect();
    let svc = format!(
        "apiVersion: tend/v1\nkind: Service\nmetadata: {{name: roll}}\nspec:\n  \
         hosts: [{hosts}]\n  rollout: {{maxUnavailable: {batch}}}\n  runtime: process\n  \
         version: \"{version}\"\n  source: {{path: app}}\n  \
         command: [/bin/busybox, httpd, -f, -p, \"{port}\", -h, .]\n  ports: [{port}]\n  \
         health: {{http: {{port: {port}, path: /}}, interval: 200ms, timeout: 5s}}\n",
        hosts = names.join(", "),
        port = TEND_PORT,
    );
    std::fs::write(dir.join("roll.yaml"), svc).context("write roll.yaml")?;
    Ok(())
}

/// Every host serves `roll <version>` on `port`.
fn all_serve(ctx: &Ctx, port: u16, version: &str) -> Result<()> {
    let want = format!("roll {version}");
    for h in ctx.test_hosts() {
        let out = h.exec_ok(&format!("wget -q -T 3 -O - http://127.0.0.1:{port}/"))?;
        if out.trim() != want {
            bail!("{}: serves {:?}, not {want:?}", h.name, out.trim());
        }
    }
    Ok(())
}

fn tend_apply(bin: &Path, dir: &Path) -> Result<f64> {
    let t0 = Instant::now();
    let out = Command::new(bin)
        .env("TEND_LOG", "warn")
        .arg("apply")
        .arg(dir)
        .arg("--yes")
        .arg("--parallelism")
        .arg("64")
        .output()
        .context("run tend apply")?;
    let secs = t0.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "tend apply failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(secs)
}

fn tend_side(ctx: &Ctx, bin: &Path, batch: usize) -> Result<Vec<f64>> {
    let dir: PathBuf = ctx.work.join("rolling-tend");
    write_manifests(ctx, &dir, "v0", batch)?;
    tend_apply(bin, &dir)?;
    let mut samples = Vec::new();
    for k in 1..=ctx.runs {
        let v = format!("v{k}");
        write_manifests(ctx, &dir, &v, batch)?;
        samples.push(tend_apply(bin, &dir)?);
        all_serve(ctx, TEND_PORT, &v)?;
    }
    Ok(samples)
}

fn ansible_side(ctx: &Ctx, bin: &Path, batch: usize) -> Result<Vec<f64>> {
    let a = Ansible::prepare(
        bin.to_path_buf(),
        &ctx.work.join("rolling-ansible"),
        &ctx.hosts,
        &ctx.wl,
    )?;
    a.rolling("v0", batch)?;
    let mut samples = Vec::new();
    for k in 1..=ctx.ansible_runs {
        if ctx.past_deadline() {
            break;
        }
        let v = format!("v{k}");
        samples.push(a.rolling(&v, batch)?.seconds);
        all_serve(ctx, ANSIBLE_PORT, &v)?;
    }
    Ok(samples)
}

pub fn phases(
    ctx: &Ctx,
    tend_bin: Option<&Path>,
    ansible_bin: Option<&Path>,
    batch: usize,
) -> Vec<Measurement> {
    let n = ctx.n;
    let note = format!("{n} hosts, batches of {batch}, each gated on health; until every instance serves the new version");
    let mut out = Vec::new();
    if let Some(bin) = tend_bin {
        out.push(match tend_side(ctx, bin, batch) {
            Ok(s) => Measurement::new(
                SCENARIO,
                "tend",
                n,
                "s",
                s,
                format!("tend apply, rollout.maxUnavailable {batch}; {note}"),
            ),
            Err(e) => Measurement::failed(SCENARIO, "tend", n, "s", vec![], format!("{e:#}")),
        });
        let _ = util::exec_all(ctx.test_hosts(), crate::WIPE_TEND);
        for h in ctx.test_hosts() {
            let _ = util::wait_closed(&h.ip, TEND_PORT, Duration::from_secs(10));
        }
    }
    if let Some(bin) = ansible_bin {
        out.push(match ansible_side(ctx, bin, batch) {
            Ok(s) => Measurement::new(
                SCENARIO,
                "ansible",
                n,
                "s",
                s,
                format!(
                    "ansible-playbook rolling.yml, serial {batch}, max_fail_percentage 0; {note}"
                ),
            ),
            Err(e) => Measurement::failed(SCENARIO, "ansible", n, "s", vec![], format!("{e:#}")),
        });
        let _ = util::exec_all(
            ctx.test_hosts(),
            "p=$(cat /srv/ansible-roll/app.pid 2>/dev/null) && kill -9 \"$p\"; rm -rf /srv/ansible-roll; true",
        );
    }
    out
}
