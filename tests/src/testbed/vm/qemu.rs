//! One VM: its overlay disk, seed disk, qemu process, and ssh to it.

use super::image::Image;
use crate::testbed::fleet::{keygen, read_pub, write};
use anyhow::{anyhow, bail, Context, Result};
use std::io::{Read, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tend::model::{Address, Host, SshTarget, DEFAULT_ROOT};

/// How long a boot (qemu start to sshd answering) may take: TCG on a
/// loaded 2-core machine has been seen at 90 s.
const BOOT_LIMIT: Duration = Duration::from_secs(240);

/// What VM to boot.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// Hostname, and the host's name for tend.
    pub name: String,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Boot with `systemd.unified_cgroup_hierarchy=0` (cgroup v1, as on
    /// Alibaba Cloud Linux 3) instead of pure v2.
    pub cgroup_v1: bool,
}

impl VmOptions {
    pub fn new(name: &str) -> VmOptions {
        VmOptions {
            name: name.into(),
            memory_mib: 1024,
            cpus: 2,
            cgroup_v1: false,
        }
    }
}

/// A running VM, reached as `root@127.0.0.1:<port>`.
pub struct VmHost {
    pub name: String,
    /// Always 127.0.0.1 (qemu's `hostfwd`).
    pub ip: String,
    pub port: u16,
    /// `ssh-ed25519 AAAA...` (no comment): pinned, injected before boot.
    pub host_key_line: String,
    opts: VmOptions,
    image: Image,
    dir: tempfile::TempDir,
    identity: PathBuf,
    known_hosts: PathBuf,
    qemu: Mutex<Option<Child>>,
    /// Seconds from qemu's start to the first ssh login, per boot.
    boots: Mutex<Vec<f64>>,
}

impl VmHost {
    /// Build (or reuse) the image, boot a VM, wait for ssh.
    pub fn start(opts: VmOptions) -> Result<VmHost> {
        let image = Image::get()?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("tend-vm-{}-", opts.name))
            .tempdir()?;
        let d = dir.path().to_path_buf();
        let identity = d.join("id_ed25519");
        keygen(&identity, &["-t", "ed25519"])?;
        let seed = d.join("seed");
        std::fs::create_dir_all(seed.join("root/.ssh"))?;
        std::fs::create_dir_all(seed.join("etc/ssh"))?;
        crate::testbed::fleet::set_mode(&seed.join("root"), 0o700)?;
        crate::testbed::fleet::set_mode(&seed.join("root/.ssh"), 0o700)?;
        let hk = seed.join("etc/ssh/ssh_host_ed25519_key");
        keygen(&hk, &["-t", "ed25519"])?;
        let host_key_line = read_pub(&hk)?;
        write(
            &seed.join("root/.ssh/authorized_keys"),
            &format!("{}\n", read_pub(&identity)?),
        )?;
        write(&seed.join("etc/hostname"), &format!("{}\n", opts.name))?;
        run(Command::new("tar").args([
            "-c",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-f",
            &d.join("seed.tar").to_string_lossy(),
            "-C",
            &seed.to_string_lossy(),
            "etc",
            "root",
        ]))?;
        run(Command::new("qemu-img").args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            &image.disk().to_string_lossy(),
            &d.join("disk.qcow2").to_string_lossy(),
        ]))?;
        let vm = VmHost {
            name: opts.name.clone(),
            ip: "127.0.0.1".into(),
            port: 0,
            host_key_line,
            opts,
            image,
            known_hosts: d.join("known_hosts"),
            identity,
            dir,
            qemu: Mutex::new(None),
            boots: Mutex::new(Vec::new()),
        };
        vm.boot_fresh()
    }

    /// Pick a free port and boot; qemu refusing the port (taken meanwhile)
    /// gets another one.
    fn boot_fresh(mut self) -> Result<VmHost> {
        let mut last = None;
        for _ in 0..3 {
            self.port = free_port()?;
            write(
                &self.known_hosts,
                &format!("[{}]:{} {}\n", self.ip, self.port, self.host_key_line),
            )?;
            match self.power_on() {
                Ok(()) => return Ok(self),
                Err(e) if format!("{e:#}").contains("host forwarding") => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("no free port")))
    }

    /// Start qemu on the VM's disk (after [`VmHost::power_off`], or the first
    /// time) and wait until ssh answers.
    pub fn power_on(&self) -> Result<()> {
        let mut g = self.qemu.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = g.as_mut() {
            if c.try_wait()?.is_none() {
                bail!("{} is already running", self.name);
            }
        }
        let d = self.dir.path();
        let mut append = String::from(
            "console=ttyS0 root=/dev/vda rw net.ifnames=0 loglevel=4 systemd.show_status=1",
        );
        if self.opts.cgroup_v1 {
            append.push_str(" systemd.unified_cgroup_hierarchy=0");
        }
        let (accel, cpu) = super::accel();
        let console = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("console.log"))?;
        let _ = std::fs::remove_file(d.join("monitor.sock"));
        let mut c = Command::new("qemu-system-x86_64");
        c.args(["-name", &self.name, "-machine", "q35", "-accel", accel])
            .args(["-cpu", cpu, "-smp", &self.opts.cpus.to_string()])
            .args(["-m", &self.opts.memory_mib.to_string()])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .arg("-kernel")
            .arg(self.image.vmlinux())
            .arg("-initrd")
            .arg(self.image.initramfs())
            .args(["-append", &append])
            .arg("-drive")
            .arg(format!(
                "file={},format=qcow2,if=virtio,cache=unsafe",
                d.join("disk.qcow2").display()
            ))
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=virtio,readonly=on",
                d.join("seed.tar").display()
            ))
            .arg("-netdev")
            .arg(format!(
                "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{}-:22",
                self.port
            ))
            .args(["-device", "virtio-net-pci,netdev=n0"])
            .args(["-device", "virtio-rng-pci"])
            .arg("-serial")
            .arg(format!("file:{}", d.join("console-serial.log").display()))
            .arg("-monitor")
            .arg(format!(
                "unix:{},server=on,wait=off",
                d.join("monitor.sock").display()
            ))
            .stdin(Stdio::null())
            .stdout(console.try_clone()?)
            .stderr(console);
        let start = Instant::now();
        *g = Some(c.spawn().context("start qemu-system-x86_64")?);
        drop(g);
        self.wait_ssh(start, None, BOOT_LIMIT)
    }

    /// Wait until ssh logs in (and, after a reboot, sees another boot id).
    fn wait_ssh(&self, start: Instant, not_boot: Option<&str>, limit: Duration) -> Result<()> {
        loop {
            {
                let mut g = self.qemu.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(c) = g.as_mut() {
                    if let Some(st) = c.try_wait()? {
                        g.take();
                        bail!("qemu exited ({st}):\n{}", self.diagnostics());
                    }
                }
            }
            if let Ok(o) = self.ssh(
                &["-o", "ConnectTimeout=5"],
                "cat /proc/sys/kernel/random/boot_id",
            ) {
                let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
                if o.status.success() && !id.is_empty() && Some(id.as_str()) != not_boot {
                    let secs = start.elapsed().as_secs_f64();
                    eprintln!("testbed: {} answers ssh {secs:.1} s after boot", self.name);
                    self.boots
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(secs);
                    return Ok(());
                }
            }
            if start.elapsed() > limit {
                bail!(
                    "{} did not answer ssh within {limit:?}:\n{}",
                    self.name,
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn ssh(&self, extra: &[&str], cmd: &str) -> Result<Output> {
        let mut c = Command::new("ssh");
        c.args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ServerAliveInterval=2",
            "-o",
            "ServerAliveCountMax=5",
            // One login for all commands: a login costs ~5 s under TCG.
            "-o",
            "ControlMaster=auto",
            "-o",
            "ControlPersist=yes",
            "-o",
        ])
        .arg(format!("ControlPath={}", self.control_path().display()))
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
        .arg("-i")
        .arg(&self.identity)
        .args(["-p", &self.port.to_string()])
        .args(extra)
        .arg(format!("root@{}", self.ip))
        .arg("--")
        .arg(cmd)
        .stdin(Stdio::null());
        c.output().context("run ssh")
    }

    fn control_path(&self) -> PathBuf {
        self.dir.path().join("cm.sock")
    }

    /// End the shared ssh connection (before the VM goes away under it).
    fn close_master(&self) {
        let _ = Command::new("ssh")
            .args(["-o", "LogLevel=QUIET", "-O", "exit", "-o"])
            .arg(format!("ControlPath={}", self.control_path().display()))
            .arg("tend-vm")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Run `cmd` on the VM (over ssh, as root, by its login shell).
    pub fn exec(&self, cmd: &str) -> Result<Output> {
        self.ssh(&["-o", "ConnectTimeout=20"], cmd)
    }

    /// Like [`VmHost::exec`], but fails unless the command exits 0; its stdout.
    pub fn exec_ok(&self, cmd: &str) -> Result<String> {
        crate::testbed::fleet::stdout_if_ok(&self.name, cmd, self.exec(cmd)?)
    }

    /// The VM's current boot id.
    pub fn boot_id(&self) -> Result<String> {
        Ok(self
            .exec_ok("cat /proc/sys/kernel/random/boot_id")?
            .trim()
            .to_string())
    }

    /// `systemctl reboot` over ssh; returns once the VM is back (another boot id).
    pub fn reboot(&self) -> Result<()> {
        let old = self.boot_id()?;
        let start = Instant::now();
        // The connection may die before ssh reports anything: ignore its status.
        let _ = self.ssh(&["-o", "ConnectTimeout=5"], "systemctl reboot");
        self.close_master();
        self.wait_ssh(start, Some(&old), BOOT_LIMIT)
    }

    /// The monitor's `system_reset`: a hard reset, no shutdown of anything.
    pub fn hard_reset(&self) -> Result<()> {
        let old = self.boot_id()?;
        let seen = self.console().len();
        let start = Instant::now();
        self.monitor("system_reset")?;
        self.close_master();
        if self.wait_ssh(start, Some(&old), BOOT_LIMIT / 2).is_ok() {
            return Ok(());
        }
        if self.console().len() == seen {
            // Seen once in CI under TCG: qemu took the reset and the guest
            // printed nothing for 240 s (no kernel, no systemd). That is
            // qemu's, not the host's: reset again, and say so.
            eprintln!(
                "testbed: {}: not one console byte in {:?} after system_reset; resetting again",
                self.name,
                BOOT_LIMIT / 2
            );
            let again = Instant::now();
            self.monitor("system_reset")?;
            return self.wait_ssh(again, Some(&old), BOOT_LIMIT);
        }
        self.wait_ssh(start, Some(&old), BOOT_LIMIT)
    }

    /// The monitor's `system_powerdown` (ACPI power button); returns when qemu exited.
    pub fn power_off(&self) -> Result<()> {
        self.monitor("system_powerdown")?;
        self.close_master();
        let start = Instant::now();
        loop {
            let mut g = self.qemu.lock().unwrap_or_else(|p| p.into_inner());
            match g.as_mut() {
                None => return Ok(()),
                Some(c) => {
                    if c.try_wait()?.is_some() {
                        g.take();
                        return Ok(());
                    }
                }
            }
            drop(g);
            if start.elapsed() > BOOT_LIMIT {
                bail!("{} did not power off:\n{}", self.name, self.diagnostics());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Send one command to the qemu monitor; its reply.
    pub fn monitor(&self, cmd: &str) -> Result<String> {
        let p = self.dir.path().join("monitor.sock");
        let mut s = UnixStream::connect(&p).with_context(|| format!("connect {}", p.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = [0u8; 4096];
        let mut reply = String::new();
        // Greeting, then the command's echo and reply up to the next prompt.
        let _ = s.read(&mut buf)?;
        s.write_all(format!("{cmd}\n").as_bytes())?;
        while !reply.ends_with("(qemu) ") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => reply.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        Ok(reply)
    }

    /// The serial console so far (kernel, initramfs and systemd messages).
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console-serial.log")).unwrap_or_default()
    }

    /// Console tail and qemu's own output, for failure messages.
    pub fn diagnostics(&self) -> String {
        let qemu = std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default();
        let con = self.console();
        let lines: Vec<&str> = con.lines().collect();
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        format!("--- qemu:\n{}\n--- console (tail):\n{tail}\n", qemu.trim())
    }

    /// Seconds from qemu's start to ssh answering, per boot so far.
    pub fn boot_seconds(&self) -> Vec<f64> {
        self.boots.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// qemu's resident memory (KiB), from /proc.
    pub fn qemu_rss_kib(&self) -> Option<u64> {
        let g = self.qemu.lock().unwrap_or_else(|p| p.into_inner());
        let pid = g.as_ref()?.id();
        let st = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        st.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    }

    /// Client key (ed25519), authorized for root.
    pub fn identity(&self) -> &Path {
        &self.identity
    }

    /// `[127.0.0.1]:PORT ssh-ed25519 ...`: the pinned host key.
    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }

    /// The VM as tend's model has it: root, the client key, its host key pinned.
    pub fn tend_host(&self) -> Host {
        Host {
            name: self.name.clone(),
            labels: Default::default(),
            address: Address::Ssh(self.ssh_target()),
            root: DEFAULT_ROOT.to_string(),
            capacity: None,
            reserved: 0,
        }
    }

    pub fn ssh_target(&self) -> SshTarget {
        SshTarget {
            address: self.ip.clone(),
            port: self.port,
            user: "root".into(),
            identity: Some(self.identity.clone()),
            host_keys: vec![self.host_key_line.clone()],
            known_hosts: None,
        }
    }

    /// A `kind: Host` manifest document for this VM.
    pub fn host_doc(&self) -> String {
        format!(
            "apiVersion: tend/v1\nkind: Host\nmetadata: {{name: {}}}\nspec:\n  address: {}\n  port: {}\n  user: root\n  identity: {}\n  hostKeys: [\"{}\"]\n",
            self.name,
            self.ip,
            self.port,
            self.identity.display(),
            self.host_key_line
        )
    }
}

impl Drop for VmHost {
    fn drop(&mut self) {
        self.close_master();
        let mut g = self.qemu.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut c) = g.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn run(c: &mut Command) -> Result<()> {
    let out = c.stdin(Stdio::null()).output().context("spawn")?;
    if !out.status.success() {
        bail!(
            "{c:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
