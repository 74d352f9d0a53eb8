//! tend's side: `tend apply`, `tend plan`, observe+plan in process over a
//! kept-open pool, and the controller (`tend run`, `POST /reconcile`).

use crate::stats::Measurement;
use crate::{finish, Ctx};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// `cargo build --release -p tend --bin tend`; the binary's path.
pub fn build_tend_binary() -> Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(["build", "--release", "-p", "tend", "--bin", "tend", "--manifest-path"])
        .arg(root.join("Cargo.toml"))
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo build -p tend failed ({status})");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let bin = target.join("release/tend");
    if !bin.exists() {
        bail!("{} is missing after the build", bin.display());
    }
    Ok(bin)
}

pub fn phases(ctx: &Ctx, bin: &Path) -> Vec<Measurement> {
    let n = ctx.n;
    let mut out = Vec::new();
    out.push(converge_cli(ctx, bin));
    out.push(plan_cli(ctx, bin));
    let _ = n;
    out
}

fn tend_cmd(bin: &Path, ctx: &Ctx) -> Command {
    let mut c = Command::new(bin);
    c.env("TEND_LOG", "warn").current_dir(&ctx.work);
    c
}

/// 2. `tend apply --yes` on empty hosts.
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
        let out = tend_cmd(bin, ctx).arg("apply").arg("--yes").arg(&ctx.manifests).output();
        let secs = t0.elapsed().as_secs_f64();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                err = Some(format!(
                    "tend apply exited {}: {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
                break;
            }
            Err(e) => {
                err = Some(format!("cannot run tend apply: {e}"));
                break;
            }
        }
        if let Err(e) = crate::util::all_healthy(ctx.test_hosts(), &ports) {
            err = Some(format!("after tend apply: {e:#}"));
            break;
        }
        samples.push(secs);
    }
    finish("converge", "tend apply", ctx.n, samples, err, "from empty hosts; CLI, new connections".into())
}

/// 1. (reference) `tend plan` as a CLI: new process, new connections.
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
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
                break;
            }
            Err(e) => {
                err = Some(format!("cannot run tend plan: {e}"));
                break;
            }
        }
    }
    finish("noop", "tend plan (CLI)", ctx.n, samples, err, "new process and ssh connections each run".into())
}
