//! Fleets of test hosts.

use super::net::{self, FleetLock, Hierarchy};
use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tend::model::{Address, Host, SshTarget, DEFAULT_ROOT};

pub(crate) const SSHD: &str = "/usr/sbin/sshd";
/// The second port every sshd listens on, for `[host]:port` known_hosts entries.
pub const ALT_PORT: u16 = 2222;
pub(super) const CLEAN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Hosts in one fleet: 250 per /24 subnet, four subnets (10.77-80.N.0/24).
pub const MAX_HOSTS: usize = 1000;
const PER_SUBNET: usize = 250;

/// Directories each host has of its own (bound over the machine's).
pub const HOST_DIRS: &[&str] = &[
    "srv",
    "root",
    "tmp",
    "var/lib/tend",
    "var/lib/containers",
    "etc/systemd/system",
    "etc/containers",
];

/// n hosts on one bridge. Dropping it tears everything down.
pub struct Fleet {
    number: u8,
    dir: PathBuf,
    hosts: Vec<TestHost>,
    ed25519_key: PathBuf,
    rsa_key: PathBuf,
    known_hosts: PathBuf,
    _lock: FleetLock,
}

/// One test host: a network namespace with its own mounts, hostname, cgroup
/// subtree and sshd.
pub struct TestHost {
    /// `host<i>`; also its hostname.
    pub name: String,
    pub ip: String,
    /// sshd's port (22); it also listens on [`ALT_PORT`].
    pub port: u16,
    /// The host's public key, `ssh-ed25519 AAAA...` (no comment).
    pub host_key_line: String,
    /// Its second host key, `ssh-rsa AAAA...`. Shared by the fleet's hosts
    /// (RSA key generation is slow); the ed25519 one is each host's own.
    pub rsa_host_key_line: String,
    /// The `ip netns` name.
    pub netns: String,
    veth: String,
    dir: PathBuf,
    identity: PathBuf,
    cgroup_procs: Vec<PathBuf>,
    anchor_pid: u32,
    anchor: Mutex<Option<Child>>,
    sshd: Mutex<Option<Child>>,
}

impl Fleet {
    /// Start `n` hosts (one at a time for the namespaces, sshds in parallel).
    pub fn start(n: usize) -> Result<Fleet> {
        if n == 0 || n > MAX_HOSTS {
            bail!("a fleet has 1..={MAX_HOSTS} hosts, not {n}");
        }
        let lock = net::allocate_fleet()?;
        let number = lock.number;
        let dir = net::fleet_dir(number);
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let mut fleet = Fleet {
            number,
            ed25519_key: dir.join("id_ed25519"),
            rsa_key: dir.join("id_rsa.pem"),
            known_hosts: dir.join("known_hosts"),
            dir,
            hosts: Vec::new(),
            _lock: lock,
        };
        // From here on Drop cleans up whatever was half built.
        fleet.build(n)?;
        Ok(fleet)
    }

    fn build(&mut self, n: usize) -> Result<()> {
        keygen(&self.ed25519_key, &["-t", "ed25519"])?;
        keygen(&self.rsa_key, &["-t", "rsa", "-b", "2048", "-m", "PEM"])?;
        keygen(
            &self.dir.join("ssh_host_rsa_key"),
            &["-t", "rsa", "-b", "2048"],
        )?;
        let mut authorized = String::new();
        for k in [&self.ed25519_key, &self.rsa_key] {
            authorized.push_str(&read_pub(k)?);
            authorized.push('\n');
        }
        write(&self.dir.join("authorized_keys"), &authorized)?;

        let bridge = net::bridge_name(self.number);
        {
            let _g = net::netns_guard()?;
            net::run("ip", &["link", "add", &bridge, "type", "bridge"])?;
            // One /24 per PER_SUBNET hosts, the bridge the gateway of each.
            for k in 0..n.div_ceil(PER_SUBNET) {
                let cidr = format!("{}/24", self.gateway(k));
                net::run("ip", &["addr", "add", &cidr, "dev", &bridge])?;
            }
            net::run("ip", &["link", "set", &bridge, "up"])?;
        }
        let hierarchies = net::cgroup_hierarchies();
        for i in 0..n {
            let host = self.create_host(i, &hierarchies)?;
            self.hosts.push(host);
        }
        for h in &self.hosts {
            h.spawn_sshd()?;
        }
        for h in &self.hosts {
            h.wait_sshd(Duration::from_secs(20))?;
        }
        let mut kh = String::new();
        for h in &self.hosts {
            kh.push_str(&h.known_hosts_line());
            kh.push('\n');
        }
        write(&self.known_hosts, &kh)
    }

    fn create_host(&self, i: usize, hierarchies: &[Hierarchy]) -> Result<TestHost> {
        let name = format!("host{i}");
        let (k, j) = (i / PER_SUBNET, i % PER_SUBNET);
        let ip = format!("10.{}.{}.{}", 77 + k, self.number, j + 2);
        let gateway = self.gateway(k);
        let ns = net::netns_name(self.number, i);
        let veth = net::veth_name(self.number, i);
        let peer = net::peer_name(self.number, i);
        let dir = self.dir.join("hosts").join(&name);
        let fs = dir.join("fs");
        for d in HOST_DIRS {
            std::fs::create_dir_all(fs.join(d))?;
            // The mount point must exist on the machine too.
            std::fs::create_dir_all(Path::new("/").join(d))?;
        }
        set_mode(&fs.join("tmp"), 0o1777)?;
        set_mode(&fs.join("root"), 0o700)?;
        if Path::new("/etc/containers").is_dir() {
            let dest = format!("{}/", fs.join("etc/containers").display());
            net::run("cp", &["-a", "/etc/containers/.", &dest])?;
        }
        write(&fs.join("etc/containers/containers.conf"), CONTAINERS_CONF)?;
        let key = dir.join("ssh_host_ed25519_key");
        keygen(&key, &["-t", "ed25519"])?;
        let host_key_line = read_pub(&key)?;
        let rsa_host_key_line = read_pub(&self.dir.join("ssh_host_rsa_key"))?;
        write(&dir.join("sshd_config"), &sshd_config(&dir, &self.dir))?;

        {
            let _g = net::netns_guard()?;
            net::run("ip", &["netns", "add", &ns])?;
            net::run(
                "ip",
                &["link", "add", &veth, "type", "veth", "peer", "name", &peer],
            )?;
            net::run("ip", &["link", "set", &peer, "netns", &ns])?;
            net::run(
                "ip",
                &[
                    "link",
                    "set",
                    &veth,
                    "master",
                    &net::bridge_name(self.number),
                ],
            )?;
            net::run("ip", &["link", "set", &veth, "up"])?;
            net::run("ip", &["-n", &ns, "link", "set", &peer, "name", "eth0"])?;
            net::run(
                "ip",
                &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
            )?;
            net::run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            net::run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            net::run(
                "ip",
                &["-n", &ns, "route", "add", "default", "via", &gateway],
            )?;
        }

        let rel = PathBuf::from(net::CGROUP_SUBDIR)
            .join(format!("f{}", self.number))
            .join(&name);
        let mut cgroup_procs = Vec::new();
        let mut mount_cgroups = String::new();
        for h in hierarchies {
            let cg = net::make_cgroup(&h.root_path, &rel)?;
            cgroup_procs.push(cg.join("cgroup.procs"));
            mount_cgroups.push_str(&format!(
                "mkdir -p /sys/fs/cgroup/{d}; mount -t cgroup -o {o} cgroup /sys/fs/cgroup/{d}\n",
                d = h.dir,
                o = h.opts
            ));
        }
        let mut binds = String::new();
        for d in HOST_DIRS {
            binds.push_str(&format!("mount --bind \"$TB_FS/{d}\" /{d}\n"));
        }
        let inner = format!(
            "set -e\n\
             mount -t tmpfs -o mode=755 tmpfs /run\n\
             mkdir -p /run/sshd /run/lock\n\
             {binds}\
             mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup\n\
             {mount_cgroups}\
             hostname \"$TB_NAME\"\n\
             echo ready\n\
             exec sleep infinity </dev/null >/dev/null\n"
        );
        let anchor_log = dir.join("anchor.log");
        let mut cmd = in_cgroups(&cgroup_procs);
        cmd.args([
            "ip",
            "netns",
            "exec",
            &ns,
            "unshare",
            "-m",
            "-u",
            "-C",
            "--propagation",
            "private",
            "sh",
            "-c",
            &inner,
        ]);
        cmd.env("TB_FS", &fs)
            .env("TB_NAME", &name)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&anchor_log)?);
        let mut child = cmd
            .spawn()
            .context("cannot start the host's anchor process")?;
        let anchor_pid = child.id();
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        let host = TestHost {
            name,
            ip,
            port: 22,
            host_key_line,
            rsa_host_key_line,
            netns: ns,
            veth,
            dir,
            identity: self.ed25519_key.clone(),
            cgroup_procs,
            anchor_pid,
            anchor: Mutex::new(Some(child)),
            sshd: Mutex::new(None),
        };
        if line.trim() != "ready" {
            let log = std::fs::read_to_string(&anchor_log).unwrap_or_default();
            bail!("host {} did not come up: {}", host.name, log.trim());
        }
        Ok(host)
    }

    pub fn hosts(&self) -> &[TestHost] {
        &self.hosts
    }
    pub fn host(&self, i: usize) -> &TestHost {
        &self.hosts[i]
    }
    pub fn len(&self) -> usize {
        self.hosts.len()
    }
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
    /// The fleet number N: subnet 10.77.N.0/24 (and 10.78.N.0/24 … past 250 hosts).
    pub fn number(&self) -> u8 {
        self.number
    }
    /// The machine's address on the fleet's bridge, reachable from every host
    /// (e.g. for `git daemon --listen`).
    pub fn bridge_ip(&self) -> String {
        self.gateway(0)
    }

    /// The bridge's address in the k-th subnet (10.(77+k).N.0/24).
    fn gateway(&self, k: usize) -> String {
        format!("10.{}.{}.1", 77 + k, self.number)
    }
    /// The fleet's own directory on the machine (keys, known_hosts, host trees).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// Client key (ed25519, OpenSSH format), authorized on every host.
    pub fn ed25519_key(&self) -> &Path {
        &self.ed25519_key
    }
    /// Client key (RSA 2048, "BEGIN RSA PRIVATE KEY" PEM), authorized on every host.
    pub fn rsa_key(&self) -> &Path {
        &self.rsa_key
    }
    /// A known_hosts file with every host's key (`IP ssh-ed25519 ...`).
    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }
    /// Every host as tend sees it (ed25519 identity, host key pinned).
    pub fn tend_hosts(&self) -> Vec<Host> {
        self.hosts.iter().map(|h| h.tend_host()).collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for h in &self.hosts {
            h.stop_children();
        }
        net::cleanup_fleet(self.number);
    }
}

impl TestHost {
    /// `IP ssh-ed25519 AAAA...`
    pub fn known_hosts_line(&self) -> String {
        format!("{} {}", self.ip, self.host_key_line)
    }

    /// The host as tend's model has it: root, the fleet's ed25519 key, its host key pinned.
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

    /// The ssh target of [`TestHost::tend_host`], to vary in tests.
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

    /// Run `sh -c cmd` inside the host (its namespaces and cgroups, clean env,
    /// HOME=/root), without ssh.
    pub fn exec(&self, cmd: &str) -> Result<Output> {
        output_of(&self.name, self.command(cmd))
    }

    /// Like [`TestHost::exec`], but fails unless the command exits 0; its stdout.
    pub fn exec_ok(&self, cmd: &str) -> Result<String> {
        stdout_if_ok(&self.name, cmd, self.exec(cmd)?)
    }

    /// A `Command` running `sh -c cmd` inside the host, to spawn in the
    /// background (kill it yourself; teardown kills it anyway).
    pub fn command(&self, cmd: &str) -> Command {
        let mut c = in_cgroups(&self.cgroup_procs);
        c.args(self.nsenter_args()).args(["sh", "-c", cmd]);
        c.env_clear()
            .env("PATH", CLEAN_PATH)
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8");
        c
    }

    fn nsenter_args(&self) -> Vec<String> {
        [
            "nsenter",
            "-t",
            &self.anchor_pid.to_string(),
            "-n",
            "-m",
            "-u",
            "-C",
            "--",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// The root-side directory of a host path under one of [`HOST_DIRS`]
    /// (e.g. "/srv/x" → `<fleet>/hosts/host0/fs/srv/x`).
    pub fn path(&self, inside: &str) -> PathBuf {
        self.dir.join("fs").join(inside.trim_start_matches('/'))
    }

    /// The host's own directory on the machine (sshd config, log, fs/).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Cut the host off: its root-side veth goes down (connections time out).
    pub fn link_down(&self) -> Result<()> {
        net::run("ip", &["link", "set", &self.veth, "down"]).map(drop)
    }
    pub fn link_up(&self) -> Result<()> {
        net::run("ip", &["link", "set", &self.veth, "up"]).map(drop)
    }

    /// Kill sshd (listener and every session): connections are refused.
    pub fn kill_sshd(&self) -> Result<()> {
        let mut guard = self.sshd.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut c) = guard.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Session processes are separate from the listener: kill them too,
        // but only this host's (there is no pid namespace: pkill would hit
        // every fleet's sshd).
        for pid in net::pids_in_netns(&self.netns) {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "sshd" {
                net::kill_all(&[pid]);
            }
        }
        Ok(())
    }

    /// Start sshd again (after [`TestHost::kill_sshd`]) and wait until it listens.
    pub fn start_sshd(&self) -> Result<()> {
        self.spawn_sshd()?;
        self.wait_sshd(Duration::from_secs(20))
    }

    fn spawn_sshd(&self) -> Result<()> {
        let mut guard = self.sshd.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_some() {
            bail!("sshd of {} is already running", self.name);
        }
        let mut c = in_cgroups(&self.cgroup_procs);
        c.args(self.nsenter_args()).args([
            SSHD,
            "-D",
            "-f",
            &self.dir.join("sshd_config").to_string_lossy(),
            "-E",
            &self.sshd_log_path().to_string_lossy(),
        ]);
        c.env_clear()
            .env("PATH", CLEAN_PATH)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        *guard = Some(
            c.spawn()
                .with_context(|| format!("start sshd on {}", self.name))?,
        );
        Ok(())
    }

    /// Waits until sshd listens, by reading the host's socket table (a probe
    /// connection would show up in sshd's log, which tests count).
    fn wait_sshd(&self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        let table = format!("/proc/{}/net/tcp", self.anchor_pid);
        let port = format!(":{:04X}", self.port);
        loop {
            let tcp = std::fs::read_to_string(&table).unwrap_or_default();
            // Columns: sl local_address rem_address st ...; st 0A = LISTEN.
            let listening = tcp.lines().skip(1).any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[1].ends_with(&port) && f[3] == "0A"
            });
            if listening {
                return Ok(());
            }
            {
                let mut guard = self.sshd.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(c) = guard.as_mut() {
                    if let Ok(Some(status)) = c.try_wait() {
                        guard.take();
                        bail!(
                            "sshd on {} exited ({status}): {}",
                            self.name,
                            self.sshd_log().trim()
                        );
                    }
                }
            }
            if start.elapsed() > limit {
                return Err(anyhow!(
                    "sshd on {} not listening after {limit:?}: {}",
                    self.name,
                    self.sshd_log()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn sshd_log_path(&self) -> PathBuf {
        self.dir.join("sshd.log")
    }

    /// sshd's log (LogLevel VERBOSE) so far.
    pub fn sshd_log(&self) -> String {
        std::fs::read_to_string(self.sshd_log_path()).unwrap_or_default()
    }

    /// Logins sshd accepted so far (lines "Accepted publickey for ...").
    pub fn accepted_logins(&self) -> usize {
        self.sshd_log()
            .lines()
            .filter(|l| l.contains("Accepted publickey for"))
            .count()
    }

    fn stop_children(&self) {
        for m in [&self.sshd, &self.anchor] {
            let mut guard = m.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(mut c) = guard.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// A `sh` that first moves itself into the given cgroups, then execs its
/// arguments (so everything started in a host lands in the host's subtree).
pub(super) fn in_cgroups(procs: &[PathBuf]) -> Command {
    let mut script = String::new();
    for p in procs {
        script.push_str(&format!("echo $$ > '{}' || exit 125\n", p.display()));
    }
    script.push_str("exec \"$@\"\n");
    let mut c = Command::new("sh");
    c.args(["-c", &script, "sh"]);
    c
}

pub(super) fn keygen(path: &Path, args: &[&str]) -> Result<()> {
    let p = path.to_string_lossy();
    let mut a = vec!["-q", "-N", "", "-C", "tend-testbed", "-f", &p];
    a.extend_from_slice(args);
    net::run("ssh-keygen", &a).map(drop)
}

/// The public key as `type base64` (comment dropped).
pub(super) fn read_pub(key: &Path) -> Result<String> {
    let p = PathBuf::from(format!("{}.pub", key.display()));
    let s = std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
    let mut f = s.split_whitespace();
    match (f.next(), f.next()) {
        (Some(t), Some(b)) => Ok(format!("{t} {b}")),
        _ => bail!("{} is not a public key", p.display()),
    }
}

pub(super) fn write(path: &Path, s: &str) -> Result<()> {
    std::fs::write(path, s).with_context(|| format!("write {}", path.display()))
}

pub(super) fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

pub(super) fn sshd_config(host_dir: &Path, fleet_dir: &Path) -> String {
    format!(
        "Port 22\n\
         Port {ALT_PORT}\n\
         ListenAddress 0.0.0.0\n\
         HostKey {hk}\n\
         HostKey {rk}\n\
         PidFile /run/sshd.pid\n\
         AuthorizedKeysFile {ak}\n\
         UsePAM no\n\
         PermitRootLogin prohibit-password\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         StrictModes no\n\
         KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org\n\
         LogLevel VERBOSE\n\
         MaxSessions 10\n\
         MaxStartups 100:30:200\n\
         AllowTcpForwarding yes\n\
         UseDNS no\n\
         PrintMotd no\n\
         Subsystem sftp internal-sftp\n",
        hk = host_dir.join("ssh_host_ed25519_key").display(),
        rk = fleet_dir.join("ssh_host_rsa_key").display(),
        ak = fleet_dir.join("authorized_keys").display(),
    )
}

/// Podman on test hosts: root here lacks CAP_SYS_RESOURCE, so podman's
/// default ulimits fail in crun; no systemd, so cgroupfs and file events.
const CONTAINERS_CONF: &str = "[containers]\n\
default_ulimits = [\"nofile=20000:20000\", \"nproc=4096:4096\"]\n\
\n\
[engine]\n\
cgroup_manager = \"cgroupfs\"\n\
events_logger = \"file\"\n";

/// Run a host's prepared command with no stdin; its output.
pub(super) fn output_of(host: &str, mut c: Command) -> Result<Output> {
    c.stdin(Stdio::null())
        .output()
        .with_context(|| format!("exec on {host}"))
}

/// The stdout of `cmd`'s output, or an error with both streams unless it exited 0.
pub(super) fn stdout_if_ok(host: &str, cmd: &str, out: Output) -> Result<String> {
    if !out.status.success() {
        bail!(
            "`{cmd}` on {host} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
