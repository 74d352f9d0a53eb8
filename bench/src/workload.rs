//! What both tools manage: M small HTTP services on each host (busybox httpd
//! serving one static page, process runtime), and tend's manifests for them.

use crate::hosts::BenchHost;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// The page every service serves (the same file Ansible copies).
pub const INDEX_HTML: &str = include_str!("../ansible/files/index.html");
pub const BASE_PORT: u16 = 8100;

#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Name on a host (`web0`..); tend's global name is `<host>-<name>`.
    pub name: String,
    pub port: u16,
    pub greeting: String,
}

#[derive(Debug, Clone)]
pub struct Workload {
    pub services: Vec<ServiceSpec>,
}

impl Workload {
    pub fn new(m: usize) -> Self {
        let services = (0..m)
            .map(|k| ServiceSpec {
                name: format!("web{k}"),
                port: BASE_PORT + k as u16,
                greeting: format!("hello from web{k}"),
            })
            .collect();
        Workload { services }
    }

    pub fn tend_name(host: &str, svc: &ServiceSpec) -> String {
        format!("{host}-{}", svc.name)
    }

    /// Write a manifests repository for `hosts` into `dir` (replacing it):
    /// `hosts.yaml`, `services.yaml`, `app/index.html`.
    pub fn write_manifests(
        &self,
        dir: &Path,
        hosts: &[BenchHost],
        host_keys: &[String],
    ) -> Result<PathBuf> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("rm -r {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir.join("app"))
            .with_context(|| format!("mkdir {}", dir.display()))?;
        std::fs::write(dir.join("app/index.html"), INDEX_HTML).context("write app")?;
        let mut h = String::new();
        for (host, key) in hosts.iter().zip(host_keys) {
            h.push_str(&format!(
                "---\napiVersion: tend/v1\nkind: Host\nmetadata: {{name: {name}}}\nspec:\n  \
                 address: \"{addr}\"\n  port: {port}\n  user: {user}\n  identity: \"{id}\"\n  \
                 hostKeys: [\"{key}\"]\n",
                name = host.name,
                addr = host.addr,
                port = host.port,
                user = host.user,
                id = host.key.display(),
            ));
        }
        std::fs::write(dir.join("hosts.yaml"), h).context("write hosts.yaml")?;
        let mut s = String::new();
        for host in hosts {
            for svc in &self.services {
                s.push_str(&format!(
                    "---\napiVersion: tend/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  \
                     host: {host}\n  runtime: process\n  source: {{path: app}}\n  \
                     command: [/bin/busybox, httpd, -f, -p, \"{port}\", -h, .]\n  \
                     env: {{SERVICE: {svc}, GREETING: \"{greeting}\", PORT: \"{port}\"}}\n  \
                     ports: [{port}]\n  health: {{http: {{port: {port}, path: /}}, timeout: 5s}}\n",
                    name = Self::tend_name(&host.name, svc),
                    host = host.name,
                    port = svc.port,
                    svc = svc.name,
                    greeting = svc.greeting,
                ));
            }
        }
        std::fs::write(dir.join("services.yaml"), s).context("write services.yaml")?;
        Ok(dir.to_path_buf())
    }
}
