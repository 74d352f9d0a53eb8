//! The test hosts as the benchmark sees them: where to reach them over ssh.

use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct BenchHost {
    pub name: String,
    pub addr: String,
    pub port: u16,
    pub user: String,
    pub key: PathBuf,
    pub known_hosts: PathBuf,
}

impl BenchHost {
    /// Options every OpenSSH client (the floor, Ansible) uses for this host.
    pub fn ssh_options(&self) -> Vec<String> {
        vec![
            "-F".into(),
            "/dev/null".into(),
            "-p".into(),
            self.port.to_string(),
            "-i".into(),
            self.key.display().to_string(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
        ]
    }

    pub fn ssh_destination(&self) -> String {
        format!("{}@{}", self.user, self.addr)
    }
}
