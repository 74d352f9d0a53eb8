//! The floor: one small command on every host over already-open OpenSSH
//! ControlMaster connections, N ssh clients in parallel.

use crate::hosts::BenchHost;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

pub struct ControlMasters {
    dir: PathBuf,
    hosts: Vec<BenchHost>,
}

impl ControlMasters {
    fn base(&self, h: &BenchHost) -> Command {
        let mut c = Command::new("ssh");
        c.args(h.ssh_options())
            .arg("-o")
            .arg("ControlMaster=auto")
            .arg("-o")
            .arg(format!("ControlPath={}/%C", self.dir.display()))
            .arg("-o")
            .arg("ControlPersist=600")
            .arg(h.ssh_destination())
            .stdin(Stdio::null());
        c
    }

    /// Open one master per host (not timed). `dir` must be short: socket
    /// paths are limited to ~104 bytes.
    pub fn open(hosts: &[BenchHost], dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let cm = ControlMasters {
            dir: dir.to_path_buf(),
            hosts: hosts.to_vec(),
        };
        let mut children = Vec::new();
        for h in &cm.hosts {
            let child = cm
                .base(h)
                .arg("true")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("spawn ssh")?;
            children.push((h.name.clone(), child));
        }
        for (name, child) in children {
            let out = child.wait_with_output().context("wait ssh")?;
            if !out.status.success() {
                bail!(
                    "opening the ControlMaster to {name} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(cm)
    }

    /// Time `cmd` on every host at once over the open masters (seconds).
    pub fn run_all(&self, cmd: &str) -> Result<f64> {
        let t0 = Instant::now();
        let mut children = Vec::with_capacity(self.hosts.len());
        for h in &self.hosts {
            let child = self
                .base(h)
                .arg(cmd)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("spawn ssh")?;
            children.push((h.name.clone(), child));
        }
        for (name, child) in children {
            let out = child.wait_with_output().context("wait ssh")?;
            if !out.status.success() || out.stdout.is_empty() {
                bail!(
                    "`{cmd}` on {name} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(t0.elapsed().as_secs_f64())
    }
}

impl Drop for ControlMasters {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = self
                .base(h)
                .arg("-O")
                .arg("exit")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
