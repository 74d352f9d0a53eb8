//! The probe against a real `sh` on this machine and its parser on recorded
//! output: long because each case is a small host state written out in full
//! (records, /proc, sockets) next to what the probe must make of it.

use super::*;
use crate::model::{Address, CgroupMode, HeldSocket, Host, HostState, Listener, Observation};
use crate::record::{Record, RuntimeKind};
use crate::transport::local::LocalTransport;
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

// ---------------------------------------------------------------- parsing

const BOOT: &str = "7000e21d-f29b-45f5-9a3f-af81cf233f79";

fn record(name: &str, pid: u32, start: u64) -> Record {
    Record {
        name: name.into(),
        version: "1.0".into(),
        config_hash: "abc".into(),
        runtime: Some(RuntimeKind::Process),
        release: "1.0-abc".into(),
        pid: Some(pid),
        start_time: Some(start),
        boot_id: Some(BOOT.into()),
        cgroup: Some(format!("/tend/{name}")),
        ports: vec![8100],
        memory_limit: Some(64 << 20),
        ..Record::default()
    }
}

/// A report as the probe prints it, from parts.
fn report(parts: &[&str]) -> String {
    let mut lines = vec!["tend-probe 1".to_string()];
    for p in parts {
        lines.extend(p.lines().map(str::to_string));
    }
    let n = lines.len();
    format!("{}\nend {n}\n", lines.join("\n"))
}

fn facts() -> String {
    format!("hostname web-1\nboot_id {BOOT}\nmeminfo 2048 1024\ncgroup v1")
}

fn framed(r: &Record) -> String {
    let body: String = r.render().lines().map(|l| format!("| {l}\n")).collect();
    format!("record {}\n{body}endrecord", r.name)
}

fn sample() -> String {
    let a = framed(&record("api", 100, 5000));
    let b = framed(&record("db", 200, 6000));
    report(&[
        &facts(),
        "listen 8100 111\nlisten 8100 112\nlisten 5432 222\nlisten 22 333",
        &format!("{a}\nproc 100 S 5000\nmemory 1048576 67108864 0\nprocs 100 101 "),
        &format!("{b}\nproc 200 S 6000\nmemory 2097152 9223372036854771712 2\nprocs 200 "),
        "sock 101 111 3 gunicorn\nsock 200 222 5 postgres\ncheck api 0\ncheck db 1",
    ])
}

fn ok(text: &str) -> HostState {
    match parse(text.as_bytes()) {
        Ok(st) => st,
        Err(e) => panic!("{e}\n{text}"),
    }
}

#[test]
fn oom_kills_a_systemd_hook_kept_in_the_record_count_when_the_cgroup_is_gone() {
    let mut r = record("unit", 300, 7000);
    r.runtime = Some(RuntimeKind::Systemd);
    let body = framed(&r).replace("endrecord", "| oom_kills=2\n| oom_kills=3\nendrecord");
    let st = ok(&report(&[&facts(), &body]));
    let u = &st.services["unit"];
    assert!(u.oom_killed);
    assert_eq!(u.oom_kills, 3, "the last count the hook wrote");
}

#[test]
fn a_report_without_records_gives_the_host_facts() {
    let st = ok(&report(&[&facts()]));
    assert_eq!(st.facts.hostname, "web-1");
    assert_eq!(st.facts.mem_total, 2048 * 1024);
    assert_eq!(st.facts.mem_available, 1024 * 1024);
    assert_eq!(st.facts.cgroup, CgroupMode::V1);
    assert_eq!(st.facts.boot_id, BOOT);
    assert!(st.services.is_empty());
}

#[test]
fn a_full_report_gives_services_memory_listeners_and_health() {
    let st = ok(&sample());
    let api = &st.services["api"];
    assert_eq!(api.record, record("api", 100, 5000));
    assert!(api.running);
    assert_eq!(api.memory_usage, Some(1 << 20));
    assert_eq!(api.memory_limit, Some(64 << 20));
    assert!(!api.oom_killed);
    assert_eq!(api.healthy, Some(true));
    let db = &st.services["db"];
    assert_eq!(db.memory_limit, None, "v1's huge limit means none");
    assert!(db.oom_killed);
    assert_eq!((api.oom_kills, db.oom_kills), (0, 2));
    assert_eq!(db.healthy, Some(false));
    // A worker in the cgroup holds the socket: still the service's.
    assert_eq!(st.listeners[&8100].service.as_deref(), Some("api"));
    assert_eq!(st.listeners[&8100].pid, Some(101));
    assert_eq!(st.listeners[&5432].comm.as_deref(), Some("postgres"));
    assert_eq!(
        st.listeners[&22],
        Listener {
            pid: None,
            service: None,
            comm: None
        }
    );
}

#[test]
fn a_reused_pid_is_not_running() {
    let r = record("api", 100, 5000);
    let st = ok(&report(&[
        &facts(),
        &format!("{}\nproc 100 S 5001", framed(&r)),
    ]));
    assert!(!st.services["api"].running);
}

#[test]
fn a_process_from_another_boot_is_not_running() {
    let mut r = record("api", 100, 5000);
    r.boot_id = Some("old-boot".into());
    let st = ok(&report(&[
        &facts(),
        &format!("{}\nproc 100 S 5000", framed(&r)),
    ]));
    assert!(!st.services["api"].running);
}

#[test]
fn a_zombie_is_not_running() {
    let r = record("api", 100, 5000);
    let st = ok(&report(&[
        &facts(),
        &format!("{}\nproc 100 Z 5000", framed(&r)),
    ]));
    assert!(!st.services["api"].running);
}

#[test]
fn a_gone_process_is_not_running_and_its_health_is_unknown() {
    let r = record("api", 100, 5000);
    let st = ok(&report(&[&facts(), &framed(&r), "check api 0"]));
    assert!(!st.services["api"].running);
    assert_eq!(st.services["api"].healthy, None);
}

#[test]
fn a_recorded_pid_listed_in_its_own_cgroup_runs_without_a_proc_line() {
    let r = record("api", 100, 5000);
    let st = ok(&report(&[
        &facts(),
        &format!("{}\nmemory 1 2 0\nprocs 99 100 ", framed(&r)),
    ]));
    assert!(st.services["api"].running);
    let elsewhere = ok(&report(&[
        &facts(),
        &format!("{}\nmemory 1 2 0\nprocs 99 ", framed(&r)),
    ]));
    assert!(!elsewhere.services["api"].running);
    let mut old = r.clone();
    old.boot_id = Some("old-boot".into());
    let other_boot = ok(&report(&[
        &facts(),
        &format!("{}\nprocs 100 ", framed(&old)),
    ]));
    assert!(!other_boot.services["api"].running);
}

#[test]
fn a_systemd_unit_runs_when_its_cgroup_has_a_process() {
    let mut r = record("unit", 1, 1);
    r.runtime = Some(RuntimeKind::Systemd);
    r.pid = None;
    let live = ok(&report(&[
        &facts(),
        &format!("{}\nprocs 4242 ", framed(&r)),
    ]));
    assert!(live.services["unit"].running);
    let dead = ok(&report(&[&facts(), &format!("{}\nprocs ", framed(&r))]));
    assert!(!dead.services["unit"].running);
}

#[test]
fn a_v2_max_limit_means_none() {
    let r = record("api", 100, 5000);
    let text = report(&[&facts(), &format!("{}\nmemory 10 max 0", framed(&r))]);
    assert_eq!(ok(&text).services["api"].memory_limit, None);
    assert_eq!(ok(&text).services["api"].memory_usage, Some(10));
}

#[test]
fn a_stranger_beats_the_service_on_the_same_port() {
    // The service on v4, someone else on v6: that is a conflict to show.
    let r = record("api", 100, 5000);
    let text = report(&[
        &facts(),
        "listen 8100 1\nlisten 8100 2",
        &format!("{}\nproc 100 S 5000", framed(&r)),
        "sock 100 1 4 api\nsock 999 2 4 nc",
    ]);
    let l = &ok(&text).listeners[&8100];
    assert_eq!(
        (l.pid, l.service.as_deref(), l.comm.as_deref()),
        (Some(999), None, Some("nc"))
    );
}

#[test]
fn a_record_whose_name_is_not_its_file_is_that_services_problem_only() {
    let r = record("api", 100, 5000);
    let text = framed(&r).replacen("record api", "record web", 1);
    let st = ok(&report(&[&facts(), &text]));
    assert!(st.services.is_empty());
    assert!(st.bad_records["web"].contains("names service"), "{st:?}");
}

#[test]
fn a_garbled_record_is_reported_for_its_service_while_the_others_are_observed() {
    let garbled = "record api\n| name=api\n| version=1\nendrecord";
    let good = framed(&record("web", 100, 5000));
    let st = ok(&report(&[&facts(), garbled, &good]));
    assert!(
        st.bad_records["api"].starts_with("record api.rec:"),
        "{st:?}"
    );
    assert!(!st.services.contains_key("api"));
    assert!(st.services.contains_key("web"), "{st:?}");
}

#[test]
fn an_unknown_line_is_an_error() {
    let e = parse(report(&[&facts(), "surprise 1"]).as_bytes());
    assert!(
        matches!(e, Err(ObserveError::Line { line: 6, .. })),
        "{e:?}"
    );
}

#[test]
fn a_report_missing_a_fact_is_an_error() {
    let e = parse(report(&["hostname x\nboot_id b\ncgroup v2"]).as_bytes());
    assert!(e.is_err());
}

#[test]
fn a_wrong_end_count_is_truncation() {
    let text = sample().replace("\nend ", "\nend 1");
    assert!(matches!(
        parse(text.as_bytes()),
        Err(ObserveError::Truncated)
    ));
}

#[test]
fn a_login_banner_before_the_header_is_refused() {
    let text = format!("Welcome!\n{}", sample());
    assert!(matches!(parse(text.as_bytes()), Err(ObserveError::Header)));
}

#[test]
fn every_strict_prefix_of_a_report_is_an_error() {
    let text = sample();
    for cut in 0..text.len() {
        assert!(
            parse(&text.as_bytes()[..cut]).is_err(),
            "prefix of {cut} bytes parsed"
        );
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse(&bytes);
    }

    #[test]
    fn a_damaged_report_never_panics(cut in 0usize..2000, at in 0usize..2000, b in any::<u8>()) {
        let mut bytes = sample().into_bytes();
        if !bytes.is_empty() {
            let i = at % bytes.len();
            bytes[i] = b;
        }
        bytes.truncate(cut.min(bytes.len()));
        let _ = parse(&bytes);
    }

    #[test]
    fn lines_out_of_a_report_are_never_parsed_as_the_same_state(drop in 1usize..60) {
        let text = sample();
        let lines: Vec<&str> = text.lines().collect();
        let i = drop % (lines.len() - 1);
        let kept: Vec<&str> = lines.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, l)| *l).collect();
        let damaged = format!("{}\n", kept.join("\n"));
        // A dropped line always trips the count (or the framing).
        prop_assert!(parse(damaged.as_bytes()).is_err());
    }
}

#[test]
fn the_probe_quotes_the_root_and_the_check_argv() {
    let s = probe_script(
        "/srv/it's here",
        &[("api".into(), vec!["curl".into(), "$(reboot)".into()])],
    )
    .unwrap_or_default();
    assert!(s.starts_with("ROOT='/srv/it'\\''s here'\n"), "{s}");
    assert!(s.contains("'curl' '$(reboot)'"), "{s}");
    assert!(s.ends_with("printf '%send %s\\n' \"$OUT\" \"$n\"\n"));
}

#[test]
fn the_probe_is_valid_posix_sh() {
    let s = probe_script("/x", &[("a".into(), vec!["true".into()])]).unwrap_or_default();
    for shell in ["sh", "dash", "bash"] {
        if Command::new(shell).arg("-c").arg("true").output().is_err() {
            continue;
        }
        let out = Command::new(shell)
            .arg("-n")
            .arg("-c")
            .arg(&s)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ---------------------------------------------------------------- real runs

/// A tend root in a temp dir, the processes it started, and cgroups it made.
struct Fixture {
    dir: tempfile::TempDir,
    children: Vec<Child>,
    cgroups: Vec<PathBuf>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("records")).unwrap();
        Fixture {
            dir,
            children: Vec::new(),
            cgroups: Vec::new(),
        }
    }

    fn root(&self) -> String {
        self.dir.path().to_string_lossy().into_owned()
    }

    fn host(&self) -> Host {
        Host {
            name: "local".into(),
            labels: Default::default(),
            address: Address::Local,
            root: self.root(),
            capacity: None,
            reserved: 0,
        }
    }

    fn spawn(&mut self, argv: &[&str]) -> u32 {
        let c = Command::new(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = c.id();
        self.children.push(c);
        pid
    }

    /// A python http server on a free loopback port, once it listens.
    fn http_server(&mut self) -> (u32, u16) {
        let port = free_port();
        let pid = self.spawn(&[
            "python3",
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ]);
        wait_listening(port);
        (pid, port)
    }

    fn kill(&mut self, pid: u32) {
        if let Some(c) = self.children.iter_mut().find(|c| c.id() == pid) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn write(&self, r: &Record) {
        std::fs::write(
            self.dir
                .path()
                .join("records")
                .join(format!("{}.rec", r.name)),
            r.render(),
        )
        .unwrap();
    }

    /// A cgroup v1 memory cgroup with `limit`, or None when this machine
    /// has none we may write.
    fn memory_cgroup(&mut self, name: &str, limit: u64) -> Option<String> {
        let base = Path::new("/sys/fs/cgroup/memory");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || !base.join("cgroup.procs").exists() {
            return None;
        }
        let rel = format!("/tend-observe-test-{}/{name}", std::process::id());
        let dir = base.join(rel.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).ok()?;
        self.cgroups.push(dir.clone());
        std::fs::write(dir.join("memory.limit_in_bytes"), limit.to_string()).ok()?;
        Some(rel)
    }

    /// Start argv inside cgroup `rel` (the shell joins it, then execs).
    fn spawn_in(&mut self, rel: &str, argv: &str) -> u32 {
        let procs = format!("/sys/fs/cgroup/memory{rel}/cgroup.procs");
        let script = format!("echo $$ > {procs} && exec {argv}");
        self.spawn(&["sh", "-c", &script])
    }

    async fn observe(&self, opts: &ProbeOptions) -> HostState {
        let t = LocalTransport::new();
        match try_observe(&t, &self.host(), opts).await {
            Ok(st) => st,
            Err(e) => panic!("observe failed: {e}"),
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for d in self.cgroups.iter().rev() {
            let _ = std::fs::remove_dir(d);
            if let Some(parent) = d.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn wait_listening(port: u16) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("nothing listens on {port}");
}

fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 1..];
    after.split_whitespace().nth(19).unwrap().parse().unwrap()
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_string()
}

fn live_record(name: &str, pid: u32, ports: Vec<u16>, cgroup: Option<String>) -> Record {
    Record {
        name: name.into(),
        version: "1.0".into(),
        config_hash: "c0ffee".into(),
        runtime: Some(RuntimeKind::Process),
        release: "1.0-c0ffee".into(),
        pid: Some(pid),
        start_time: Some(start_time(pid)),
        boot_id: Some(boot_id()),
        cgroup,
        ports,
        ..Record::default()
    }
}

#[tokio::test]
async fn an_empty_root_observes_no_services_and_the_hosts_facts() {
    let f = Fixture::new();
    let st = f.observe(&ProbeOptions::default()).await;
    assert!(st.services.is_empty());
    assert_eq!(st.facts.boot_id, boot_id());
    assert!(st.facts.mem_total > 0 && st.facts.mem_available > 0);
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(st.facts.hostname, hostname.trim());
}

#[tokio::test]
async fn a_recorded_live_process_runs_and_a_killed_one_does_not() {
    let mut f = Fixture::new();
    let a = f.spawn(&["sleep", "1000"]);
    let b = f.spawn(&["sleep", "1000"]);
    f.write(&live_record("alive", a, vec![], None));
    f.write(&live_record("killed", b, vec![], None));
    let mut reused = live_record("reused", a, vec![], None);
    reused.start_time = reused.start_time.map(|t| t + 1);
    f.write(&reused);
    f.kill(b);
    let st = f.observe(&ProbeOptions::default()).await;
    assert!(st.services["alive"].running);
    assert!(!st.services["killed"].running);
    assert!(!st.services["reused"].running, "same pid, other start time");
    assert_eq!(
        st.services["alive"].record,
        live_record("alive", a, vec![], None)
    );
}

#[tokio::test]
async fn a_comm_with_spaces_and_parens_still_yields_the_start_time() {
    let mut f = Fixture::new();
    // comm comes from the file name: make one that looks like stat fields.
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("a) b (c");
    std::fs::copy("/bin/sleep", &exe).unwrap();
    let pid = f.spawn(&[exe.to_str().unwrap(), "1000"]);
    std::thread::sleep(Duration::from_millis(50));
    f.write(&live_record("odd", pid, vec![], None));
    let st = f.observe(&ProbeOptions::default()).await;
    assert!(st.services["odd"].running);
}

async fn listener_is_attributed(src: ListenSource) {
    let mut f = Fixture::new();
    let (pid, port) = f.http_server();
    f.write(&live_record("web", pid, vec![port], None));
    let st = f
        .observe(&ProbeOptions {
            listen_source: src,
            ..ProbeOptions::default()
        })
        .await;
    let l = &st.listeners[&port];
    assert_eq!(l.service.as_deref(), Some("web"), "{l:?}");
    assert_eq!(l.pid, Some(pid));
}

#[tokio::test]
async fn a_services_listener_is_attributed_to_it_via_ss() {
    listener_is_attributed(ListenSource::Auto).await;
}

#[tokio::test]
async fn a_services_listener_is_attributed_to_it_via_proc_net_tcp() {
    listener_is_attributed(ListenSource::Proc).await;
}

#[tokio::test]
async fn the_sockets_one_probe_saw_let_the_next_skip_the_table_and_see_the_same() {
    let mut f = Fixture::new();
    let (pid, port) = f.http_server();
    f.write(&live_record("web", pid, vec![port], None));
    let opts = ProbeOptions {
        ports: vec![port],
        ..ProbeOptions::default()
    };
    let full = f.observe(&opts).await;
    assert_eq!(full.held.len(), 1, "{:?}", full.held);
    assert_eq!((full.held[0].port, full.held[0].pid), (port, pid));
    let fast = f
        .observe(&ProbeOptions {
            known: full.held.clone(),
            ..opts.clone()
        })
        .await;
    assert_eq!(fast.listeners[&port], full.listeners[&port]);
    assert_eq!(fast.held, full.held);
    assert_eq!(fast.services, full.services);
    // The probe trusts a socket it verified as still open: named on a port
    // nothing listens on, it is reported there, so the table was not read.
    let lie = HeldSocket {
        port: 1,
        ..full.held[0]
    };
    let trusted = f
        .observe(&ProbeOptions {
            known: vec![lie],
            ..opts
        })
        .await;
    assert_eq!(trusted.listeners[&1].service.as_deref(), Some("web"));
    assert!(!trusted.listeners.contains_key(&port));
}

#[tokio::test]
async fn a_known_socket_that_is_no_longer_open_means_the_full_walk() {
    let mut f = Fixture::new();
    let (pid, port) = f.http_server();
    let other = f.spawn(&["sleep", "1000"]);
    f.write(&live_record("web", pid, vec![port], None));
    let opts = ProbeOptions {
        ports: vec![port],
        ..ProbeOptions::default()
    };
    let held = f.observe(&opts).await.held[0];
    for stale in [
        HeldSocket {
            port: 1,
            inode: held.inode + 1,
            ..held
        },
        HeldSocket {
            port: 1,
            fd: held.fd + 100,
            ..held
        },
        HeldSocket {
            port: 1,
            pid: other,
            ..held
        },
    ] {
        let st = f
            .observe(&ProbeOptions {
                known: vec![stale],
                ..opts.clone()
            })
            .await;
        assert!(!st.listeners.contains_key(&1), "{stale:?} was trusted");
        assert_eq!(st.listeners[&port].service.as_deref(), Some("web"));
    }
}

#[tokio::test]
async fn a_stranger_on_a_declared_port_is_named_with_its_pid_and_comm() {
    let mut f = Fixture::new();
    let (pid, port) = f.http_server();
    let opts = ProbeOptions {
        ports: vec![port],
        ..ProbeOptions::default()
    };
    let st = f.observe(&opts).await;
    let l = &st.listeners[&port];
    assert_eq!((l.pid, l.service.as_deref()), (Some(pid), None));
    assert!(
        l.comm.as_deref().is_some_and(|c| c.starts_with("python")),
        "{l:?}"
    );
}

#[tokio::test]
async fn an_undeclared_listener_is_listed_without_searching_for_its_holder() {
    let mut f = Fixture::new();
    let (_pid, port) = f.http_server();
    let st = f.observe(&ProbeOptions::default()).await;
    assert_eq!(
        st.listeners[&port],
        Listener {
            pid: None,
            service: None,
            comm: None
        }
    );
}

#[tokio::test]
async fn a_v1_memory_cgroup_gives_usage_limit_and_ownership() {
    let mut f = Fixture::new();
    let Some(cg) = f.memory_cgroup("web", 64 << 20) else {
        println!("skipped: no writable cgroup v1 memory hierarchy");
        return;
    };
    let port = free_port();
    let pid = f.spawn_in(
        &cg,
        &format!("python3 -m http.server {port} --bind 127.0.0.1"),
    );
    wait_listening(port);
    f.write(&live_record("web", pid, vec![port], Some(cg.clone())));
    let st = f.observe(&ProbeOptions::default()).await;
    assert_eq!(st.facts.cgroup, CgroupMode::V1);
    let web = &st.services["web"];
    assert!(web.running);
    assert_eq!(web.memory_limit, Some(64 << 20));
    assert!(web.memory_usage.is_some_and(|u| u > 0));
    assert!(!web.oom_killed);
    assert_eq!(st.listeners[&port].service.as_deref(), Some("web"));

    // Raise the limit by hand: the probe reports what is in force.
    std::fs::write(
        format!("/sys/fs/cgroup/memory{cg}/memory.limit_in_bytes"),
        "-1",
    )
    .unwrap();
    let st = f.observe(&ProbeOptions::default()).await;
    assert_eq!(st.services["web"].memory_limit, None);
}

#[tokio::test]
async fn an_oom_kill_in_the_cgroup_is_reported() {
    let mut f = Fixture::new();
    let Some(cg) = f.memory_cgroup("hog", 16 << 20) else {
        println!("skipped: no writable cgroup v1 memory hierarchy");
        return;
    };
    // Keep one process in the cgroup so it is still there to read.
    let keeper = f.spawn_in(&cg, "sleep 1000");
    let hog = f.spawn_in(&cg, "python3 -c 'x = bytearray(200 << 20)'");
    if let Some(c) = f.children.iter_mut().find(|c| c.id() == hog) {
        let _ = c.wait();
    }
    f.write(&live_record("hog", keeper, vec![], Some(cg)));
    let st = f.observe(&ProbeOptions::default()).await;
    assert!(st.services["hog"].oom_killed);
}

#[tokio::test]
async fn command_checks_run_in_the_release_directory_with_the_services_env() {
    let mut f = Fixture::new();
    let pid = f.spawn(&["sleep", "1000"]);
    for (name, ok) in [("good", true), ("bad", false)] {
        f.write(&live_record(name, pid, vec![], None));
        let rel = f.dir.path().join("releases").join(name).join("current");
        std::fs::create_dir_all(&rel).unwrap();
        if ok {
            std::fs::write(rel.join("ready"), "").unwrap();
        }
        std::fs::create_dir_all(f.dir.path().join("env")).unwrap();
        std::fs::write(
            f.dir.path().join("env").join(format!("{name}.env")),
            "WANT='ready'\n",
        )
        .unwrap();
    }
    let check = |service: &str| CommandCheck {
        service: service.into(),
        argv: vec!["sh".into(), "-c".into(), "test -f \"$WANT\"".into()],
        timeout: Duration::from_secs(5),
    };
    let opts = ProbeOptions {
        checks: vec![check("good"), check("bad"), check("absent")],
        ..Default::default()
    };
    let st = f.observe(&opts).await;
    assert_eq!(st.services["good"].healthy, Some(true));
    assert_eq!(st.services["bad"].healthy, Some(false));
    assert!(!st.services.contains_key("absent"));
}

#[tokio::test]
async fn a_root_with_quotes_and_spaces_is_read_literally() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("it's a $root");
    std::fs::create_dir_all(root.join("records")).unwrap();
    let r = record("api", 1, 1);
    std::fs::write(root.join("records/api.rec"), r.render()).unwrap();
    let host = Host {
        name: "local".into(),
        labels: Default::default(),
        address: Address::Local,
        root: root.to_string_lossy().into_owned(),
        capacity: None,
        reserved: 0,
    };
    let st = try_observe(&LocalTransport::new(), &host, &ProbeOptions::default())
        .await
        .unwrap();
    assert_eq!(st.services["api"].record, r);
}

#[tokio::test]
async fn every_strict_prefix_of_a_real_report_is_an_error() {
    let mut f = Fixture::new();
    let (pid, port) = f.http_server();
    f.write(&live_record("web", pid, vec![port], None));
    let t = LocalTransport::new();
    let out = t
        .exec(&probe_script(&f.root(), &[]).unwrap(), b"")
        .await
        .unwrap();
    assert!(parse(&out.stdout).is_ok(), "{}", out.stdout_lossy());
    for cut in 0..out.stdout.len() {
        assert!(
            parse(&out.stdout[..cut]).is_err(),
            "prefix of {cut} bytes parsed"
        );
    }
}

#[tokio::test]
async fn a_garbage_record_is_reported_with_its_file_and_the_host_stays_reachable() {
    let mut f = Fixture::new();
    let (pid, port) = f.http_server();
    f.write(&live_record("web", pid, vec![port], None));
    std::fs::write(f.dir.path().join("records/x.rec"), "not a record\n").unwrap();
    let obs = observe_host(&LocalTransport::new(), &f.host()).await;
    match obs {
        Observation::Reachable(st) => {
            assert!(st.bad_records["x"].contains("x.rec"), "{st:?}");
            assert!(st.services["web"].running, "{st:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_probe_is_one_exec() {
    let mut f = Fixture::new();
    let (pid, port) = f.http_server();
    f.write(&live_record("web", pid, vec![port], None));
    let t = LocalTransport::new();
    let _ = observe_host(&t, &f.host()).await;
    assert_eq!(t.stats().execs(), 1);
}

/// Run the probe in a private mount namespace whose /sys/fs/cgroup is a
/// tmpfs laid out by `setup` (files as a v2 host has them). Root only.
fn probe_with_cgroup_tree(root: &str, setup: &[(&str, String)]) -> Option<HostState> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let mut prep = String::from("mount -t tmpfs tend-test /sys/fs/cgroup || exit 99\n");
    for (path, content) in setup {
        let full = format!("/sys/fs/cgroup/{path}");
        let dir = &full[..full.rfind('/').unwrap_or(0)];
        prep.push_str(&format!(
            "mkdir -p {} && printf '%s' {} > {}\n",
            crate::shell::quote(dir).unwrap(),
            crate::shell::quote(content).unwrap(),
            crate::shell::quote(&full).unwrap()
        ));
    }
    prep.push_str("exec sh -c \"$0\"\n");
    let probe = probe_script(root, &[]).unwrap();
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &prep, &probe])
        .output()
        .ok()?;
    if out.status.code() == Some(99) || !out.status.success() {
        println!(
            "skipped: cannot make a private cgroup tree: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    Some(
        parse(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}\n{}", String::from_utf8_lossy(&out.stdout))),
    )
}

#[test]
fn a_v2_host_reports_memory_current_max_and_oom_kills() {
    let mut f = Fixture::new();
    let pid = f.spawn(&["sleep", "1000"]);
    f.write(&live_record("web", pid, vec![], Some("/tend/web".into())));
    let mut unit = live_record(
        "unit",
        pid,
        vec![],
        Some("/system.slice/tend-unit.service".into()),
    );
    unit.runtime = Some(RuntimeKind::Systemd);
    unit.pid = None;
    f.write(&unit);
    let mut gone = unit.clone();
    gone.name = "gone".into();
    gone.cgroup = Some("/system.slice/tend-gone.service".into());
    f.write(&gone);
    let tree = [
        (
            "cgroup.controllers",
            "cpuset cpu io memory pids\n".to_string(),
        ),
        ("cgroup.procs", "1\n".to_string()),
        ("tend/web/memory.current", "1234567\n".to_string()),
        ("tend/web/memory.max", "67108864\n".to_string()),
        (
            "tend/web/memory.events",
            "low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n".to_string(),
        ),
        ("tend/web/cgroup.procs", format!("{pid}\n")),
        (
            "system.slice/tend-unit.service/memory.current",
            "100\n".to_string(),
        ),
        (
            "system.slice/tend-unit.service/memory.max",
            "max\n".to_string(),
        ),
        (
            "system.slice/tend-unit.service/memory.events",
            "oom_kill 0\n".to_string(),
        ),
        (
            "system.slice/tend-unit.service/cgroup.procs",
            format!("{pid}\n"),
        ),
        (
            "system.slice/tend-gone.service/memory.current",
            "0\n".to_string(),
        ),
        (
            "system.slice/tend-gone.service/memory.max",
            "max\n".to_string(),
        ),
        ("system.slice/tend-gone.service/cgroup.procs", String::new()),
    ];
    let Some(st) = probe_with_cgroup_tree(&f.root(), &tree) else {
        println!("skipped: needs root and unshare");
        return;
    };
    assert_eq!(st.facts.cgroup, CgroupMode::V2);
    let web = &st.services["web"];
    assert!(web.running);
    assert_eq!(
        (web.memory_usage, web.memory_limit, web.oom_killed),
        (Some(1234567), Some(64 << 20), true)
    );
    assert_eq!(web.oom_kills, 2, "the count from memory.events");
    let unit = &st.services["unit"];
    assert!(unit.running, "a unit runs when its cgroup has a process");
    assert_eq!(
        (unit.memory_usage, unit.memory_limit, unit.oom_killed),
        (Some(100), None, false)
    );
    assert!(
        !st.services["gone"].running,
        "an empty unit cgroup is not running"
    );
}

#[test]
fn a_host_without_a_memory_controller_reports_none() {
    let f = Fixture::new();
    let tree = [("cgroup.controllers", "cpuset cpu io pids\n".to_string())];
    let Some(st) = probe_with_cgroup_tree(&f.root(), &tree) else {
        println!("skipped: needs root and unshare");
        return;
    };
    assert_eq!(st.facts.cgroup, CgroupMode::None);
}

/// A user who cannot write the memory hierarchy cannot enforce limits, so the
/// probe must say `none` (else the plan restarts services forever to fix them).
#[test]
fn a_memory_hierarchy_the_probe_user_cannot_write_reports_no_cgroup() {
    let is_root = unsafe { libc::geteuid() } == 0;
    let writable = std::path::Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists();
    if !is_root || !writable || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: needs root, setpriv and a cgroup v1 memory hierarchy");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = probe_script(&dir.path().to_string_lossy(), &[]).unwrap();
    let run = |argv: &[&str]| {
        let out = Command::new(argv[0])
            .args(&argv[1..])
            .arg(&s)
            .output()
            .unwrap();
        parse(&out.stdout).unwrap().facts.cgroup
    };
    assert_eq!(run(&["sh", "-c"]), CgroupMode::V1);
    let nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "sh",
        "-c",
    ];
    assert_eq!(run(&nobody), CgroupMode::None);
}
