//! The e2e test bed: real OpenSSH hosts in network namespaces.
//!
//! A [`Fleet`] is n hosts on one bridge (`10.77.<fleet>.1/24`, and one more /24 per 250 hosts); host `i < 250` is
//! `host<i>` at `10.77.<fleet>.<i+2>`, port 22 (and 2222), with its own
//! hostname, mounts (/srv, /root, /tmp, /var/lib/tend, /var/lib/containers,
//! /etc/systemd/system bound to per-host dirs, a private tmpfs /run), and its
//! own cgroup v1 subtree seen through a cgroup namespace.
//!
//! Each host has an *anchor* process (`sleep infinity`) that owns its
//! namespaces; sshd and [`TestHost::exec`] enter them with `nsenter`, so a
//! host's files and processes outlive a killed sshd. `exec` does not use ssh:
//! it cannot disturb the connection counts tests assert on.
//!
//! Everything is torn down on drop; leftovers of crashed runs are swept when
//! a later run takes the same fleet number.

mod fleet;
mod net;
mod systemd;
pub mod vm;

pub use fleet::{Fleet, TestHost, ALT_PORT, HOST_DIRS};
pub use systemd::{SystemdHost, SSHD_UNIT};
pub use vm::{skip_unless_vm, VmHost, VmOptions};

use anyhow::Result;
use std::process::Output;

/// What a test needs of a host, whichever kind it is (namespace, systemd
/// container, VM): run a command on it, and address it as tend does.
pub trait Remote {
    fn name(&self) -> &str;
    /// `sh -c cmd` (or the login shell's `-c`) on the host, as root.
    fn exec(&self, cmd: &str) -> Result<Output>;
    /// Fails unless `cmd` exits 0; its stdout.
    fn exec_ok(&self, cmd: &str) -> Result<String> {
        fleet::stdout_if_ok(self.name(), cmd, self.exec(cmd)?)
    }
    /// The host as tend's model has it, host key pinned.
    fn tend_host(&self) -> tend::model::Host;
}

macro_rules! remote {
    ($t:ty) => {
        impl Remote for $t {
            fn name(&self) -> &str {
                &self.name
            }
            fn exec(&self, cmd: &str) -> Result<Output> {
                <$t>::exec(self, cmd)
            }
            fn tend_host(&self) -> tend::model::Host {
                <$t>::tend_host(self)
            }
        }
    };
}
remote!(TestHost);
remote!(SystemdHost);
remote!(VmHost);

/// True when e2e tests can run here. Otherwise prints "skipped <test>: <why>"
/// and returns false — or panics when `TEND_E2E=required`.
pub fn skip_unless_e2e(test: &str) -> bool {
    match e2e_unavailable() {
        None => true,
        Some(why) => {
            if std::env::var("TEND_E2E").as_deref() == Ok("required") {
                panic!("{test}: e2e tests are required (TEND_E2E=required) but cannot run: {why}");
            }
            println!("skipped {test}: {why}");
            // Past the harness's capture, so `cargo test` shows what skipped.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "tend-e2e: SKIPPED {test}: {why}");
            false
        }
    }
}

fn e2e_unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    match std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
    {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            return Some(format!(
                "`ip netns list` failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
        Err(e) => return Some(format!("cannot run `ip`: {e}")),
    }
    if !std::path::Path::new(fleet::SSHD).exists() {
        return Some(format!(
            "{} is missing (apt-get install openssh-server)",
            fleet::SSHD
        ));
    }
    None
}

/// Start `n` hosts for a benchmark (same as [`Fleet::start`]; 50 hosts take
/// a few seconds).
pub fn start_bench_fleet(n: usize) -> anyhow::Result<Fleet> {
    Fleet::start(n)
}
