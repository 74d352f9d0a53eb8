//! A test host whose PID 1 is a real systemd, for the systemd runtime.
//!
//! The host is a container built by hand (no systemd-nspawn needed): new
//! pid, mount, uts, ipc and cgroup namespaces inside a fleet-style network
//! namespace on its own bridge. Its root is a small directory tree:
//! - `/usr` (and `/lib`, `/bin`, ... when they are not symlinks into it) is
//!   the machine's, bound read-only,
//! - `/etc` is an overlay: the machine's `/etc` below, the host's writes on
//!   top (own hostname, machine-id, an empty fstab so no mount or swap unit
//!   of the machine is started inside),
//! - `/etc/systemd/system` is the host's own, empty but for the boot target,
//!   the sshd unit and masks: none of the machine's enabled units starts,
//! - `/var`, `/srv`, `/root` are plain directories of the host; `/run`,
//!   `/tmp`, `/dev` are tmpfs; `/sys` is read-only; the machine's cgroup v1
//!   hierarchies are mounted read-write, rooted (cgroup namespace) at
//!   `tend-testbed/f<N>/<host>`, so systemd runs in legacy mode and can
//!   enforce memory limits.
//!
//! systemd boots `tend-testbed.target` (basic.target plus sshd), and sshd is
//! one of its units: tend's scripts, run over ssh, see the container's pids,
//! `/proc`, `systemctl` and cgroups, exactly as on a real server.
//! [`SystemdHost::exec`] enters the same namespaces with `nsenter`.
//!
//! Dropping it kills the container (SIGKILL to its PID 1 ends the pid
//! namespace) and removes the namespace, links, cgroups and files, like a
//! fleet's; leftovers of a crashed run are swept by the same code.

use super::fleet::{self, output_of, stdout_if_ok, CLEAN_PATH, SSHD};
use super::net::{self, FleetLock, Hierarchy};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tend::model::{Address, Host, SshTarget, DEFAULT_ROOT};

/// systemd's binary on the machine (Debian's path).
pub const SYSTEMD: &str = "/lib/systemd/systemd";
/// The target the host boots.
const TARGET: &str = "tend-testbed.target";
/// The test host's sshd, a unit of the host's systemd.
pub const SSHD_UNIT: &str = "tend-testbed-sshd.service";
/// How long booting (systemd up, sshd listening) may take.
const BOOT_LIMIT: Duration = Duration::from_secs(40);
/// Units of the machine that must not run in a test host, masked.
const MASKED: &[&str] = &[
    "systemd-udevd.service",
    "systemd-udevd-control.socket",
    "systemd-udevd-kernel.socket",
    "systemd-logind.service",
    "getty@.service",
    "console-getty.service",
    "systemd-networkd.service",
    "systemd-resolved.service",
    "systemd-timesyncd.service",
    "systemd-firstboot.service",
    "ssh.service",
    "ssh.socket",
];

/// A host booted by systemd, reached over ssh like any other.
pub struct SystemdHost {
    /// Hostname, and the host's name for tend.
    pub name: String,
    pub ip: String,
    pub port: u16,
    /// `ssh-ed25519 AAAA...` (no comment).
    pub host_key_line: String,
    /// The `ip netns` name.
    pub netns: String,
    number: u8,
    fleet_dir: PathBuf,
    dir: PathBuf,
    identity: PathBuf,
    cgroup_procs: Vec<PathBuf>,
    /// The container's PID 1 (systemd), as the machine numbers it.
    leader: u32,
    boot: Mutex<Option<Child>>,
    _lock: FleetLock,
}

impl SystemdHost {
    /// True when a systemd host can be booted here; otherwise why not.
    pub fn unavailable() -> Option<String> {
        if !Path::new(SYSTEMD).exists() {
            return Some(format!("{SYSTEMD} is missing (apt-get install systemd)"));
        }
        let hs = net::cgroup_hierarchies();
        let has = |o: &str| hs.iter().any(|h| h.opts.split(',').any(|x| x == o));
        if !has("memory") || !has("name=systemd") {
            return Some(format!(
                "a systemd test host needs the cgroup v1 `memory` and `name=systemd` \
                 hierarchies under /sys/fs/cgroup; this machine has {:?}",
                hs.iter().map(|h| h.opts.as_str()).collect::<Vec<_>>()
            ));
        }
        None
    }

    /// Build and boot a host; returns once systemd is up and sshd listens.
    pub fn start() -> Result<SystemdHost> {
        if let Some(why) = Self::unavailable() {
            bail!("{why}");
        }
        let lock = net::allocate_fleet()?;
        let number = lock.number;
        let fleet_dir = net::fleet_dir(number);
        let name = "sd0".to_string();
        let dir = fleet_dir.join("hosts").join(&name);
        let mut h = SystemdHost {
            ip: format!("10.77.{number}.2"),
            port: 22,
            host_key_line: String::new(),
            netns: net::netns_name(number, 0),
            number,
            identity: fleet_dir.join("id_ed25519"),
            fleet_dir,
            dir,
            name,
            cgroup_procs: Vec::new(),
            leader: 0,
            boot: Mutex::new(None),
            _lock: lock,
        };
        // From here on Drop cleans up whatever was half built.
        h.build()?;
        Ok(h)
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    fn build(&mut self) -> Result<()> {
        let root = self.root();
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("mkdir {}", self.dir.display()))?;

        // Keys and sshd's config, as a fleet host has them.
        fleet::keygen(&self.identity, &["-t", "ed25519"])?;
        fleet::keygen(
            &self.fleet_dir.join("ssh_host_rsa_key"),
            &["-t", "rsa", "-b", "2048"],
        )?;
        let key = self.dir.join("ssh_host_ed25519_key");
        fleet::keygen(&key, &["-t", "ed25519"])?;
        self.host_key_line = fleet::read_pub(&key)?;
        fleet::write(
            &self.fleet_dir.join("authorized_keys"),
            &format!("{}\n", fleet::read_pub(&self.identity)?),
        )?;
        fleet::write(
            &self.fleet_dir.join("known_hosts"),
            &format!("{} {}\n", self.ip, self.host_key_line),
        )?;
        fleet::write(
            &self.dir.join("sshd_config"),
            &fleet::sshd_config(&self.dir, &self.fleet_dir),
        )?;

        // The root tree.
        for d in [
            "usr", "etc", "var/lib", "var/tmp", "srv", "root", "tmp", "dev", "proc", "sys", "run",
            "home", "oldroot",
        ] {
            std::fs::create_dir_all(root.join(d))?;
        }
        fleet::set_mode(&root.join("root"), 0o700)?;
        fleet::set_mode(&root.join("tmp"), 0o1777)?;
        fleet::set_mode(&root.join("var/tmp"), 0o1777)?;
        std::fs::create_dir_all(root.join(self.fleet_dir.strip_prefix("/")?))?;
        let mut ro_binds = vec!["usr".to_string()];
        for d in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            let host = Path::new("/").join(d);
            match std::fs::symlink_metadata(&host) {
                Ok(m) if m.file_type().is_symlink() => {
                    let to = std::fs::read_link(&host)?;
                    std::os::unix::fs::symlink(&to, root.join(d))
                        .with_context(|| format!("symlink {d}"))?;
                }
                Ok(m) if m.is_dir() => {
                    std::fs::create_dir_all(root.join(d))?;
                    ro_binds.push(d.to_string());
                }
                _ => {}
            }
        }
        let upper = self.dir.join("etc-upper");
        std::fs::create_dir_all(&upper)?;
        std::fs::create_dir_all(self.dir.join("etc-work"))?;
        fleet::write(&upper.join("hostname"), &format!("{}\n", self.name))?;
        let id = std::fs::read_to_string("/proc/sys/kernel/random/uuid")?.replace('-', "");
        fleet::write(&upper.join("machine-id"), &format!("{}\n", id.trim()))?;
        fleet::write(&upper.join("fstab"), "")?;
        fleet::write(&upper.join("crypttab"), "")?;
        self.write_units()?;

        self.plumb()?;
        let mounts = self.cgroups()?;
        let script = self.boot_script(&ro_binds, &mounts);
        fleet::write(&self.dir.join("boot.sh"), &script)?;
        fleet::write(&self.dir.join("console.log"), "")?;
        self.spawn()?;
        self.wait_booted()
    }

    fn write_units(&self) -> Result<()> {
        let units = self.dir.join("units");
        std::fs::create_dir_all(&units)?;
        fleet::write(
            &units.join(TARGET),
            &format!(
                "[Unit]\nDescription=tend test host\nRequires=basic.target\n\
                 Wants={SSHD_UNIT}\nAfter=basic.target {SSHD_UNIT}\nAllowIsolate=yes\n"
            ),
        )?;
        fleet::write(
            &units.join(SSHD_UNIT),
            &format!(
                "[Unit]\nDescription=sshd of the test host\n\n[Service]\n\
                 ExecStart={SSHD} -D -f {cfg} -E {log}\nRuntimeDirectory=sshd\n\
                 RuntimeDirectoryPreserve=yes\n",
                cfg = self.dir.join("sshd_config").display(),
                log = self.sshd_log_path().display(),
            ),
        )?;
        for u in MASKED {
            std::os::unix::fs::symlink("/dev/null", units.join(u))
                .with_context(|| format!("mask {u}"))?;
        }
        Ok(())
    }

    /// Bridge, namespace and veth, as [`super::Fleet`] makes them for host 0.
    fn plumb(&self) -> Result<()> {
        let n = self.number;
        let bridge = net::bridge_name(n);
        let (veth, peer) = (net::veth_name(n, 0), net::peer_name(n, 0));
        let ns = &self.netns;
        let _g = net::netns_guard()?;
        let gw = format!("10.77.{n}.1");
        net::run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        net::run("ip", &["addr", "add", &format!("{gw}/24"), "dev", &bridge])?;
        net::run("ip", &["link", "set", &bridge, "up"])?;
        net::run("ip", &["netns", "add", ns])?;
        net::run(
            "ip",
            &["link", "add", &veth, "type", "veth", "peer", "name", &peer],
        )?;
        net::run("ip", &["link", "set", &peer, "netns", ns])?;
        net::run("ip", &["link", "set", &veth, "master", &bridge])?;
        net::run("ip", &["link", "set", &veth, "up"])?;
        net::run("ip", &["-n", ns, "link", "set", &peer, "name", "eth0"])?;
        let cidr = format!("{}/24", self.ip);
        net::run("ip", &["-n", ns, "addr", "add", &cidr, "dev", "eth0"])?;
        net::run("ip", &["-n", ns, "link", "set", "eth0", "up"])?;
        net::run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        net::run("ip", &["-n", ns, "route", "add", "default", "via", &gw])?;
        Ok(())
    }

    /// The host's cgroup in every v1 hierarchy; the mount lines for inside.
    fn cgroups(&mut self) -> Result<String> {
        let hierarchies: Vec<Hierarchy> = net::cgroup_hierarchies();
        let rel = PathBuf::from(net::CGROUP_SUBDIR)
            .join(format!("f{}", self.number))
            .join(&self.name);
        let mut mounts = String::new();
        for h in hierarchies {
            let cg = net::make_cgroup(&h.root_path, &rel)?;
            self.cgroup_procs.push(cg.join("cgroup.procs"));
            mounts.push_str(&format!(
                "mkdir \"$R/sys/fs/cgroup/{d}\"\nmount -t cgroup -o nosuid,nodev,noexec,{o} cgroup \"$R/sys/fs/cgroup/{d}\"\n",
                d = h.dir,
                o = h.opts
            ));
        }
        Ok(mounts)
    }

    fn boot_script(&self, ro_binds: &[String], cgroup_mounts: &str) -> String {
        let mut binds = String::new();
        for d in ro_binds {
            binds.push_str(&format!(
                "mount --bind /{d} \"$R/{d}\"\nmount -o remount,bind,ro \"$R/{d}\"\n"
            ));
        }
        format!(
            "set -eu\n\
             R='{root}'\n\
             D='{dir}'\n\
             F='{fleet}'\n\
             mount --bind \"$R\" \"$R\"\n\
             {binds}\
             mount -t overlay overlay -o \"lowerdir=/etc,upperdir=$D/etc-upper,workdir=$D/etc-work\" \"$R/etc\"\n\
             mount --bind \"$D/units\" \"$R/etc/systemd/system\"\n\
             mount --bind \"$F\" \"$R$F\"\n\
             mount -t proc -o nosuid,nodev,noexec proc \"$R/proc\"\n\
             mount -t sysfs -o ro,nosuid,nodev,noexec sysfs \"$R/sys\"\n\
             mount -t tmpfs -o mode=755,nosuid,nodev,noexec tmpfs \"$R/sys/fs/cgroup\"\n\
             {cgroup_mounts}\
             mount -o remount,ro \"$R/sys/fs/cgroup\"\n\
             mount -t tmpfs -o mode=755,nosuid tmpfs \"$R/dev\"\n\
             for n in null zero full random urandom tty; do : > \"$R/dev/$n\"; mount --bind \"/dev/$n\" \"$R/dev/$n\"; done\n\
             : > \"$R/dev/console\"; mount --bind \"$D/console.log\" \"$R/dev/console\"\n\
             mkdir \"$R/dev/pts\" \"$R/dev/shm\"\n\
             mount -t devpts -o newinstance,ptmxmode=0666,mode=620,nosuid,noexec devpts \"$R/dev/pts\"\n\
             ln -s pts/ptmx \"$R/dev/ptmx\"\n\
             mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs \"$R/dev/shm\"\n\
             ln -s /proc/self/fd \"$R/dev/fd\"\n\
             ln -s /proc/self/fd/0 \"$R/dev/stdin\"\n\
             ln -s /proc/self/fd/1 \"$R/dev/stdout\"\n\
             ln -s /proc/self/fd/2 \"$R/dev/stderr\"\n\
             mount -t tmpfs -o mode=755,nosuid,nodev tmpfs \"$R/run\"\n\
             mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs \"$R/tmp\"\n\
             cd \"$R\"\n\
             pivot_root . oldroot\n\
             umount -l /oldroot\n\
             exec env -i container=tend-testbed PATH={CLEAN_PATH} {SYSTEMD} systemd.unit={TARGET}\n",
            root = self.root().display(),
            dir = self.dir.display(),
            fleet = self.fleet_dir.display(),
        )
    }

    /// Start the container and learn its PID 1.
    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("boot.log"))?;
        let mut cmd = fleet::in_cgroups(&self.cgroup_procs);
        cmd.args([
            "ip",
            "netns",
            "exec",
            &self.netns,
            "unshare",
            "--pid",
            "--fork",
            "--mount",
            "--uts",
            "--ipc",
            "--cgroup",
            "--propagation",
            "private",
            "sh",
        ])
        .arg(self.dir.join("boot.sh"))
        .env_clear()
        .env("PATH", CLEAN_PATH)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
        let mut child = cmd.spawn().context("cannot start the systemd host")?;
        let outer = child.id();
        let start = Instant::now();
        let leader = loop {
            if let Some(pid) = first_child(outer) {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim() == "systemd" {
                    break pid;
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "the systemd host's setup exited ({status}) before systemd ran:\n{}",
                    self.diagnostics()
                );
            }
            if start.elapsed() > BOOT_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "systemd did not start within {BOOT_LIMIT:?}:\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        self.leader = leader;
        *self.boot.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        Ok(())
    }

    /// systemd finished booting (running or degraded) and sshd listens.
    fn wait_booted(&self) -> Result<()> {
        let start = Instant::now();
        let mut state = String::new();
        loop {
            if !Path::new(&format!("/proc/{}", self.leader)).exists() {
                bail!(
                    "systemd (pid {}) died while booting:\n{}",
                    self.leader,
                    self.diagnostics()
                );
            }
            if let Ok(o) = self.exec("systemctl is-system-running") {
                state = String::from_utf8_lossy(&o.stdout).trim().to_string();
            }
            let booted = matches!(state.as_str(), "running" | "degraded");
            if booted && self.sshd_listens() {
                return Ok(());
            }
            if state == "degraded" {
                let failed = self.exec(&format!("systemctl is-failed --quiet {SSHD_UNIT}"));
                if failed.is_ok_and(|o| o.status.success()) {
                    bail!("sshd failed in the systemd host:\n{}", self.diagnostics());
                }
            }
            if start.elapsed() > BOOT_LIMIT {
                bail!(
                    "the systemd host did not boot within {BOOT_LIMIT:?} (state {state:?}, sshd listening: {}):\n{}",
                    self.sshd_listens(),
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// sshd's listening socket, read from the host's socket table (a probe
    /// connection would show in sshd's log).
    fn sshd_listens(&self) -> bool {
        let tcp =
            std::fs::read_to_string(format!("/proc/{}/net/tcp", self.leader)).unwrap_or_default();
        let port = format!(":{:04X}", self.port);
        tcp.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&port) && f[3] == "0A"
        })
    }

    /// What went wrong while booting: setup output, console, journal, units.
    pub fn diagnostics(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        let mut s = String::new();
        for (what, text) in [
            ("setup (boot.log)", read("boot.log")),
            ("console", tail(&read("console.log"), 60)),
            ("sshd.log", read("sshd.log")),
        ] {
            if !text.trim().is_empty() {
                s.push_str(&format!("--- {what}:\n{}\n", text.trim()));
            }
        }
        if self.leader > 0 {
            if let Ok(o) = self.exec(
                "systemctl --failed --no-pager; systemctl list-jobs --no-pager; journalctl -b --no-pager -n 80",
            ) {
                s.push_str("--- systemctl / journal:\n");
                s.push_str(&String::from_utf8_lossy(&o.stdout));
                s.push_str(&String::from_utf8_lossy(&o.stderr));
            }
        }
        s
    }

    /// The host as tend's model has it: root, the client key, its host key pinned.
    pub fn tend_host(&self) -> Host {
        Host {
            name: self.name.clone(),
            labels: Default::default(),
            address: Address::Ssh(SshTarget {
                address: self.ip.clone(),
                port: self.port,
                user: "root".into(),
                identity: Some(self.identity.clone()),
                host_keys: vec![self.host_key_line.clone()],
                known_hosts: None,
            }),
            root: DEFAULT_ROOT.to_string(),
            capacity: None,
            reserved: 0,
        }
    }

    /// Client key (ed25519), authorized for root on the host.
    pub fn identity(&self) -> &Path {
        &self.identity
    }

    /// The container's PID 1 as the machine numbers it.
    pub fn leader_pid(&self) -> u32 {
        self.leader
    }

    /// A `Command` running `sh -c cmd` inside the host: its namespaces (pid
    /// included: pids are the host's own), its root, its cgroup subtree.
    pub fn command(&self, cmd: &str) -> Command {
        let mut c = fleet::in_cgroups(&self.cgroup_procs);
        let t = self.leader.to_string();
        c.args([
            "nsenter", "-t", &t, "-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w", "--", "sh", "-c",
            cmd,
        ]);
        c.env_clear()
            .env("PATH", CLEAN_PATH)
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8");
        c
    }

    /// Run `sh -c cmd` inside the host, without ssh.
    pub fn exec(&self, cmd: &str) -> Result<Output> {
        output_of(&self.name, self.command(cmd))
    }

    /// Like [`SystemdHost::exec`], but fails unless the command exits 0; its stdout.
    pub fn exec_ok(&self, cmd: &str) -> Result<String> {
        stdout_if_ok(&self.name, cmd, self.exec(cmd)?)
    }

    /// `systemctl show UNIT -p P...` as a map (missing properties absent).
    pub fn show(&self, unit: &str, props: &[&str]) -> Result<BTreeMap<String, String>> {
        let mut cmd = format!("systemctl show '{unit}'");
        for p in props {
            cmd.push_str(&format!(" -p {p}"));
        }
        let out = self.exec_ok(&cmd)?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// The unit's journal (for failure messages).
    pub fn journal(&self, unit: &str) -> String {
        self.exec(&format!("journalctl -u '{unit}' --no-pager -n 40"))
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    pub fn sshd_log_path(&self) -> PathBuf {
        self.dir.join("sshd.log")
    }

    /// Logins sshd accepted so far.
    pub fn accepted_logins(&self) -> usize {
        std::fs::read_to_string(self.sshd_log_path())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("Accepted publickey for"))
            .count()
    }

    /// The host's own directory on the machine (root tree, units, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A child of `pid` (`unshare --fork` has one), from /proc.
fn first_child(pid: u32) -> Option<u32> {
    if let Ok(kids) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        return kids.split_whitespace().find_map(|p| p.parse().ok());
    }
    // Kernels without CONFIG_PROC_CHILDREN: look for its parent pid.
    let want = format!("PPid:\t{pid}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let p: u32 = e.file_name().to_str()?.parse().ok()?;
        let st = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
        st.lines().any(|l| l == want).then_some(p)
    })
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for SystemdHost {
    fn drop(&mut self) {
        if self.leader > 1 {
            // SIGKILL to a pid namespace's init ends every process in it.
            net::kill_all(&[self.leader as i32]);
        }
        let mut guard = self.boot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut c) = guard.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        drop(guard);
        net::cleanup_fleet(self.number);
    }
}
