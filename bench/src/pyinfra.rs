//! pyinfra, installed from PyPI into a virtualenv of its own, on the same
//! hosts and the same workload as tend and Ansible: converge from empty,
//! and the no-op (`--dry` on converged hosts).

use crate::stats::Measurement;
use crate::{finish, procfs, util, Ctx};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// bench/pyinfra: the deploy file, its template and files (read at run time).
pub fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("pyinfra")
}

/// pyinfra's own virtualenv; `bin/pyinfra`.
pub fn ensure_venv(venv: &Path) -> Result<PathBuf> {
    crate::ansible::ensure_venv_with(venv, &source_dir().join("requirements.txt"), "pyinfra")
}

/// Stop and remove what the deploy installed on every host.
const WIPE: &str = r#"
for f in /srv/pyinfra-bench/*/app.pid; do
  [ -f "$f" ] || continue
  p=$(cat "$f")
  [ -n "$p" ] && kill -9 "$p" 2>/dev/null
done
rm -rf /srv/pyinfra-bench
true
"#;

struct Pyinfra {
    bin: PathBuf,
    inventory: PathBuf,
    work: PathBuf,
    parallel: usize,
}

impl Pyinfra {
    fn prepare(bin: &Path, ctx: &Ctx) -> Result<Pyinfra> {
        let work = ctx.work.join("pyinfra");
        std::fs::create_dir_all(&work).context("mkdir pyinfra work dir")?;
        let services: Vec<String> = ctx
            .wl
            .services
            .iter()
            .map(|s| {
                format!(
                    "{{\"name\": \"{}\", \"port\": {}, \"greeting\": \"{}\"}}",
                    s.name, s.port, s.greeting
                )
            })
            .collect();
        let mut inv = String::from("# Written by tend-bench for this fleet.\nbench = [\n");
        for h in &ctx.hosts {
            inv.push_str(&format!(
                "    (\"{name}\", {{\"ssh_hostname\": \"{addr}\", \"ssh_port\": {port}, \"ssh_user\": \"{user}\", \
                 \"ssh_key\": \"{key}\", \"ssh_known_hosts_file\": \"{kh}\", \"ssh_strict_host_key_checking\": \"yes\", \
                 \"services\": [{svcs}]}}),\n",
                name = h.name,
                addr = h.addr,
                port = h.port,
                user = h.user,
                key = h.key.display(),
                kh = h.known_hosts.display(),
                svcs = services.join(", "),
            ));
        }
        inv.push_str("]\n");
        let inventory = work.join("inventory.py");
        std::fs::write(&inventory, inv).context("write inventory.py")?;
        Ok(Pyinfra {
            bin: bin.to_path_buf(),
            inventory,
            work,
            // The same bound as tend's probes (64 hosts at once): with every
            // host at once, pyinfra's paramiko lost sessions at 200 hosts.
            parallel: ctx.n.clamp(1, tend::observe::DEFAULT_CONCURRENCY),
        })
    }

    /// One run; its wall time. Fails unless pyinfra exits 0.
    fn run(&self, dry: bool) -> Result<f64> {
        let mut c = Command::new(&self.bin);
        c.arg("-y").arg("--parallel").arg(self.parallel.to_string());
        if dry {
            c.arg("--dry");
        }
        c.arg(&self.inventory)
            .arg("deploy.py")
            .current_dir(source_dir())
            .env("PYINFRA_PROGRESS", "off");
        let t0 = Instant::now();
        let out = c.output().context("cannot run pyinfra")?;
        let secs = t0.elapsed().as_secs_f64();
        let log = self
            .work
            .join(if dry { "last-dry.log" } else { "last-run.log" });
        let _ = std::fs::write(
            &log,
            format!(
                "{}\n--- stderr\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        );
        if !out.status.success() {
            bail!("pyinfra failed ({}); see {}", out.status, log.display());
        }
        Ok(secs)
    }
}

pub fn phases(ctx: &Ctx, bin: &Path) -> Vec<Measurement> {
    let n = ctx.n;
    let p = match Pyinfra::prepare(bin, ctx) {
        Ok(p) => p,
        Err(e) => {
            return vec![Measurement::failed(
                "all",
                "pyinfra",
                n,
                "s",
                vec![],
                format!("{e:#}"),
            )]
        }
    };
    let ports = ctx.ports();
    let settings = format!("--parallel {}", p.parallel);
    let (mut conv, mut dry, mut host_cpu, mut ctl_cpu) = (vec![], vec![], vec![], vec![]);
    let (mut conv_err, mut dry_err) = (None, None);
    let runs = ctx.ansible_runs.max(1);
    // Converge from empty once, then the no-ops, then the other converges.
    for k in 0..runs * 2 {
        if ctx.past_deadline() {
            break;
        }
        let converge = k == 0 || k > runs;
        if converge {
            if conv_err.is_some() {
                continue;
            }
            let r = util::exec_all(ctx.test_hosts(), WIPE)
                .and_then(|_| p.run(false))
                .and_then(|s| util::all_healthy(ctx.test_hosts(), &ports).map(|_| s));
            match r {
                Ok(s) => conv.push(s),
                Err(e) => conv_err = Some(format!("{e:#}")),
            }
        } else {
            if dry_err.is_some() || conv.is_empty() {
                continue;
            }
            let c0 = ctx.hosts_cpu_seconds().ok();
            let s0 = procfs::children_cpu_seconds();
            match p.run(true) {
                Ok(s) => {
                    dry.push(s);
                    ctl_cpu.push((procfs::children_cpu_seconds() - s0) * 1e3);
                    if let (Some(c0), Ok(c1)) = (c0, ctx.hosts_cpu_seconds()) {
                        host_cpu.push((c1 - c0) / n as f64 * 1e3);
                    }
                }
                Err(e) => dry_err = Some(format!("{e:#}")),
            }
        }
    }
    let _ = util::exec_all(ctx.test_hosts(), WIPE);
    let short = |v: &Vec<f64>, want: usize, err: Option<String>| {
        err.or_else(|| {
            (v.len() < want)
                .then(|| format!("stopped at the --deadline after {} of {want} runs", v.len()))
        })
    };
    vec![
        finish(
            "converge",
            "pyinfra",
            n,
            conv.clone(),
            short(&conv, runs, conv_err),
            format!("from empty hosts; {settings}"),
        ),
        finish(
            "noop",
            "pyinfra --dry",
            n,
            dry.clone(),
            short(&dry, runs, dry_err),
            settings.clone(),
        ),
        Measurement::new(
            "noop host CPU per host",
            "pyinfra --dry",
            n,
            "ms",
            host_cpu,
            "cpuacct.usage of each host's cgroup, delta / hosts",
        ),
        Measurement::new(
            "noop controller CPU",
            "pyinfra --dry",
            n,
            "ms",
            ctl_cpu,
            "user+sys of pyinfra and the children it waited for",
        ),
    ]
}
