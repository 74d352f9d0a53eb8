//! Ansible, installed from PyPI into a virtualenv, run on the same hosts.

use crate::hosts::BenchHost;
use crate::workload::Workload;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// bench/ansible: the playbook and templates (read at run time: Ansible needs files).
pub fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ansible")
}

/// A virtualenv in `venv` with `requirements` installed, once; the path of
/// its `bin/<tool>`. Shared by the Python peers (Ansible, pyinfra).
pub fn ensure_venv_with(venv: &Path, requirements: &Path, tool: &str) -> Result<PathBuf> {
    let bin = venv.join("bin").join(tool);
    if bin.exists() {
        return Ok(bin);
    }
    // Debian's python3, not a pyenv shim: the hosts (sharing /usr) run it too.
    let py = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    run_checked(Command::new(py).arg("-m").arg("venv").arg(venv))?;
    run_checked(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(requirements),
    )?;
    if !bin.exists() {
        bail!(
            "pip installed {} but {} is missing",
            requirements.display(),
            bin.display()
        );
    }
    Ok(bin)
}

/// ansible-core's virtualenv; `bin/ansible-playbook`.
pub fn ensure_venv(venv: &Path) -> Result<PathBuf> {
    ensure_venv_with(
        venv,
        &source_dir().join("requirements.txt"),
        "ansible-playbook",
    )
}

fn run_checked(c: &mut Command) -> Result<()> {
    let out = c.output().with_context(|| format!("cannot run {c:?}"))?;
    if !out.status.success() {
        bail!(
            "{c:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub struct Ansible {
    playbook_bin: PathBuf,
    work: PathBuf,
    inventory: PathBuf,
    config: PathBuf,
    pub forks: usize,
    /// Each ansible-playbook run is stopped after this long (`--ansible-budget`).
    pub budget: Option<Duration>,
}

/// Totals of a PLAY RECAP.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recap {
    pub hosts: usize,
    pub ok: u64,
    pub changed: u64,
    pub unreachable: u64,
    pub failed: u64,
}

pub struct RunResult {
    pub seconds: f64,
    pub recap: Recap,
}

impl Ansible {
    /// Write the inventory and ansible.cfg for `hosts` into `work`.
    pub fn prepare(
        playbook_bin: PathBuf,
        work: &Path,
        hosts: &[BenchHost],
        wl: &Workload,
    ) -> Result<Self> {
        std::fs::create_dir_all(work.join("home")).context("mkdir ansible work dir")?;
        let src = source_dir();
        let first = hosts.first().context("no hosts")?;
        let mut host_lines = String::new();
        for h in hosts {
            host_lines.push_str(&format!(
                "        {}: {{ansible_host: \"{}\", ansible_port: {}}}\n",
                h.name, h.addr, h.port
            ));
        }
        let mut svc_lines = String::new();
        for s in &wl.services {
            svc_lines.push_str(&format!(
                "          - {{name: \"{}\", port: {}, greeting: \"{}\"}}\n",
                s.name, s.port, s.greeting
            ));
        }
        let inv = std::fs::read_to_string(src.join("inventory.yml.tmpl"))
            .context("read inventory template")?
            .replace("@HOSTS@\n", &host_lines)
            .replace("@SERVICES@\n", &svc_lines)
            .replace("@KEY@", &first.key.display().to_string())
            .replace("@KNOWN_HOSTS@", &first.known_hosts.display().to_string());
        let inventory = work.join("inventory.yml");
        std::fs::write(&inventory, inv).context("write inventory")?;
        // Every host at once up to tend's probe bound (64); 10 is Ansible's floor here.
        let forks = hosts
            .len()
            .clamp(10, tend::observe::DEFAULT_CONCURRENCY.max(10));
        // Short: ControlPath socket names must fit in ~104 bytes.
        let cp_dir = PathBuf::from(format!("/tmp/tb-ans-{}", std::process::id()));
        std::fs::create_dir_all(&cp_dir).context("mkdir control path dir")?;
        let cfg = std::fs::read_to_string(src.join("ansible.cfg.tmpl"))
            .context("read ansible.cfg template")?
            .replace("@FORKS@", &forks.to_string())
            .replace("@CP_DIR@", &cp_dir.display().to_string());
        let config = work.join("ansible.cfg");
        std::fs::write(&config, cfg).context("write ansible.cfg")?;
        Ok(Ansible {
            playbook_bin,
            work: work.to_path_buf(),
            inventory,
            config,
            forks,
            budget: None,
        })
    }

    /// Run the playbook (with `--check` for the no-op); fails unless every host
    /// was reached and nothing failed.
    pub fn playbook(&self, check: bool) -> Result<RunResult> {
        let args: &[&str] = if check { &["--check"] } else { &[] };
        self.run("site.yml", args, check)
    }

    /// `rolling.yml` (a `serial` rolling upgrade) to `version`.
    pub fn rolling(&self, version: &str, batch: usize) -> Result<RunResult> {
        let v = format!("version={version}");
        let b = format!("batch={batch}");
        self.run("rolling.yml", &["-e", &v, "-e", &b], false)
    }

    fn run(&self, playbook: &str, args: &[&str], check: bool) -> Result<RunResult> {
        let mut c = Command::new(&self.playbook_bin);
        c.arg("-i")
            .arg(&self.inventory)
            .arg(source_dir().join(playbook))
            .args(args);
        c.env("ANSIBLE_CONFIG", &self.config)
            .env("ANSIBLE_HOME", self.work.join("home"))
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_FORCE_COLOR", "0")
            .current_dir(&self.work);
        let log = self.work.join(if check {
            "last-check.log"
        } else {
            "last-run.log"
        });
        let t0 = Instant::now();
        let (status, stdout) = match self.budget {
            None => {
                let out = c.output().context("cannot run ansible-playbook")?;
                let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                let _ = std::fs::write(
                    &log,
                    format!(
                        "{stdout}\n--- stderr\n{}",
                        String::from_utf8_lossy(&out.stderr)
                    ),
                );
                (out.status, stdout)
            }
            Some(budget) => within_budget(c, budget, &log)?,
        };
        let seconds = t0.elapsed().as_secs_f64();
        let recap = parse_recap(&stdout);
        if !status.success() || recap.failed > 0 || recap.unreachable > 0 {
            bail!(
                "ansible-playbook{} failed ({}; recap {recap:?}); see {}",
                if check { " --check" } else { "" },
                status,
                log.display()
            );
        }
        Ok(RunResult { seconds, recap })
    }
}

/// Run `c` (output to `log`) and, once `budget` has passed, kill it and the
/// processes under it, then fail saying how far it got. (Its ControlPersist
/// ssh masters detach and exit on their own after 60 s.)
fn within_budget(
    mut c: Command,
    budget: Duration,
    log: &Path,
) -> Result<(std::process::ExitStatus, String)> {
    let f = std::fs::File::create(log).context("create the ansible log")?;
    let f2 = f.try_clone().context("clone the ansible log")?;
    c.stdout(f).stderr(f2);
    let mut child = c.spawn().context("cannot run ansible-playbook")?;
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().context("wait for ansible-playbook")? {
            break Some(st);
        }
        if t0.elapsed() >= budget {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::fs::read_to_string(log).unwrap_or_default();
    match status {
        Some(st) => Ok((st, out)),
        None => {
            // Ansible's workers put themselves in groups of their own: the
            // whole tree, found by parent pid, not a process group.
            for pid in crate::procfs::tree(child.id() as i32) {
                // SAFETY: kill(2) on pids of this run's own process tree.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            let _ = child.wait();
            bail!(
                "over the budget of {} s: stopped {}",
                budget.as_secs(),
                progress(&out)
            )
        }
    }
}

/// Where an unfinished linear-strategy run was: its task and how many hosts
/// had reported for it.
pub fn progress(stdout: &str) -> String {
    let tasks: Vec<&str> = stdout.split("\nTASK [").skip(1).collect();
    let Some(last) = tasks.last() else {
        return "before its first task".into();
    };
    let name = last.split(']').next().unwrap_or("?");
    let mut hosts = std::collections::BTreeSet::new();
    for line in last.lines().skip(1) {
        let l = line.trim_start();
        for tag in [
            "ok: [",
            "changed: [",
            "skipping: [",
            "failed: [",
            "fatal: [",
        ] {
            if let Some(rest) = l.strip_prefix(tag) {
                if let Some(h) = rest.split(']').next() {
                    hosts.insert(h.to_string());
                }
            }
        }
    }
    format!(
        "in task {} (\"{name}\"), {} hosts done with it",
        tasks.len(),
        hosts.len()
    )
}

pub fn parse_recap(stdout: &str) -> Recap {
    let mut r = Recap::default();
    let Some(idx) = stdout.find("PLAY RECAP") else {
        return r;
    };
    for line in stdout[idx..].lines().skip(1) {
        let Some((_, counts)) = line.split_once(" : ") else {
            continue;
        };
        r.hosts += 1;
        for kv in counts.split_whitespace() {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let v: u64 = v.parse().unwrap_or(0);
            match k {
                "ok" => r.ok += v,
                "changed" => r.changed += v,
                "unreachable" => r.unreachable += v,
                "failed" => r.failed += v,
                _ => {}
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_names_the_last_task_and_the_hosts_that_reported_for_it() {
        let out = "PLAY [Bench services] ***\n\nTASK [Service directory] ***\n\
                   changed: [h0] => (item=s0)\nchanged: [h1] => (item=s0)\n\n\
                   TASK [App files] ***\nchanged: [h1] => (item=s0)\n\
                   changed: [h1] => (item=s1)\nok: [h2] => (item=s0)\n";
        assert_eq!(
            progress(out),
            "in task 2 (\"App files\"), 2 hosts done with it"
        );
        assert_eq!(progress("PLAY [x] ***\n"), "before its first task");
    }
}
