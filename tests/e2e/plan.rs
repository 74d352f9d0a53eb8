//! Observe + plan against real sshd hosts: records and processes are put on
//! the hosts by hand (through the test bed), then one probe per host is
//! planned against the desired state.

use super::common::{self, fleet};
use std::collections::BTreeMap;
use std::time::Duration;
use tend::model::{Delivery, Desired, Observation, Service};
use tend::observe::SocketCache;
use tend::plan::{plan, ActionKind, DriftReason, Plan, Status};
use tend::record::{Record, RuntimeKind};
use tend::transport::pool::Pool;
use tend_e2e::testbed::{Fleet, TestHost};

const MIB: u64 = 1 << 20;

fn pool() -> Pool {
    common::test_pool(Duration::from_secs(30))
}

/// A python http server on `port` of `host`, limited to 64 MiB.
fn web(name: &str, host: &str, port: u16) -> Service {
    Service {
        name: name.into(),
        labels: BTreeMap::new(),
        hosts: vec![host.into()],
        rollout: Default::default(),
        runtime: RuntimeKind::Process,
        version: "1.0".into(),
        delivery: Delivery::None,
        install: Vec::new(),
        command: [
            "python3",
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ]
        .map(String::from)
        .to_vec(),
        env: BTreeMap::new(),
        ports: vec![port],
        memory: Some(64 * MIB),
        health: None,
        depends_on: Vec::new(),
        suspend: false,
    }
}

/// One web service per host, on port 8100 + i.
fn one_per_host(fleet: &Fleet) -> Desired {
    let mut d = Desired::default();
    for (i, h) in fleet.tend_hosts().into_iter().enumerate() {
        let s = web(&format!("web{i}"), &h.name, 8100 + i as u16);
        d.services.insert(s.name.clone(), s);
        d.hosts.insert(h.name.clone(), h);
    }
    d
}

/// Start `cmd` detached inside the host, in memory cgroup `/tend/<cg>` when
/// given (limited to `limit`); its pid once `port` listens.
fn start(h: &TestHost, cg: Option<(&str, u64)>, cmd: &str, port: u16) -> u32 {
    let join = match cg {
        Some((name, limit)) => {
            let dir = format!("/sys/fs/cgroup/memory/tend/{name}");
            h.exec_ok(&format!(
                "mkdir -p {dir} && echo {limit} > {dir}/memory.limit_in_bytes"
            ))
            .unwrap();
            format!("echo $$ > {dir}/cgroup.procs && ")
        }
        None => String::new(),
    };
    let out = h
        .exec_ok(&format!(
            "sh -c '{join}exec {cmd}' </dev/null >/dev/null 2>&1 & echo $!"
        ))
        .unwrap();
    let pid: u32 = out.trim().parse().unwrap();
    // Bounded wait for the listener (not a timing assertion).
    let hex = format!(":{port:04X} ");
    h.exec_ok(&format!(
        "i=0; while ! grep -q '{hex}.* 0A ' /proc/net/tcp; do i=$((i+1)); [ $i -gt 2400 ] && exit 1; sleep 0.05; done"
    ))
    .unwrap();
    pid
}

fn start_time(h: &TestHost, pid: u32) -> u64 {
    let stat = h.exec_ok(&format!("cat /proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 1..];
    after.split_whitespace().nth(19).unwrap().parse().unwrap()
}

fn boot_id(h: &TestHost) -> String {
    h.exec_ok("cat /proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_string()
}

fn write_record(h: &TestHost, r: &Record) {
    let dir = h.path("/var/lib/tend/records");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{}.rec", r.name)), r.render()).unwrap();
}

/// Make `s` run on `h` exactly as declared, as `tend apply` would: process
/// in its memory cgroup, record written. Returns the pid.
fn converge(h: &TestHost, s: &Service) -> u32 {
    let limit = s.memory.unwrap_or(u64::MAX);
    let pid = start(h, Some((&s.name, limit)), &s.command.join(" "), s.ports[0]);
    write_record(
        h,
        &Record {
            name: s.name.clone(),
            version: s.version.clone(),
            config_hash: s.config_hash(),
            runtime: Some(s.runtime),
            release: format!("{}-{}", s.version, &s.config_hash()[..8]),
            pid: Some(pid),
            start_time: Some(start_time(h, pid)),
            boot_id: Some(boot_id(h)),
            cgroup: Some(format!("/tend/{}", s.name)),
            ports: s.ports.clone(),
            memory_limit: s.memory,
            ..Record::default()
        },
    );
    pid
}

fn converged_fleet(fleet: &Fleet) -> (Desired, Vec<u32>) {
    let d = one_per_host(fleet);
    let pids = fleet
        .hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| converge(h, &d.services[&format!("web{i}")]))
        .collect();
    (d, pids)
}

async fn observe_and_plan(pool: &Pool, d: &Desired) -> (BTreeMap<String, Observation>, Plan) {
    let hosts: Vec<String> = d.hosts.keys().cloned().collect();
    let observed = tend::observe::observe_all(pool, d, &hosts).await;
    let p = plan(d, &observed);
    (observed, p)
}

fn reasons_of<'a>(p: &'a Plan, svc: &str) -> &'a [DriftReason] {
    &p.services
        .iter()
        .find(|s| s.service == svc)
        .unwrap_or_else(|| panic!("no {svc} in {p:#?}"))
        .reasons
}

fn only_action(p: &Plan) -> (ActionKind, &str) {
    assert_eq!(p.actions.len(), 1, "{:#?}", p.actions);
    (p.actions[0].kind, p.actions[0].service.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_hosts_plan_missing_and_a_start_for_everything() {
    let Some(fleet) = fleet("empty_hosts_plan_missing_and_a_start_for_everything", 3) else {
        return;
    };
    let d = one_per_host(&fleet);
    let (observed, p) = observe_and_plan(&pool(), &d).await;
    for (h, o) in &observed {
        match o {
            Observation::Reachable(st) => assert_eq!(&st.facts.hostname, h, "each host is its own"),
            Observation::Unreachable { reason, .. } => panic!("{h} unreachable: {reason}"),
        }
    }
    assert_eq!(p.services.len(), 3);
    for s in &p.services {
        assert_eq!(s.reasons, vec![DriftReason::Missing], "{s:?}");
    }
    let starts: Vec<&str> = p
        .actions
        .iter()
        .filter(|a| a.kind == ActionKind::Start)
        .map(|a| a.service.as_str())
        .collect();
    assert_eq!(starts, vec!["web0", "web1", "web2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_converged_fleet_plans_nothing_with_one_exec_per_host() {
    let Some(fleet) = fleet("a_converged_fleet_plans_nothing_with_one_exec_per_host", 3) else {
        return;
    };
    let (d, _) = converged_fleet(&fleet);
    let pool = pool();
    let (observed, p) = observe_and_plan(&pool, &d).await;
    assert!(p.in_sync(), "{p:#?}\n{observed:#?}");
    for (i, h) in fleet.hosts().iter().enumerate() {
        let Observation::Reachable(st) = &observed[&h.name] else {
            panic!("{} unreachable", h.name)
        };
        let svc = &st.services[&format!("web{i}")];
        assert!(svc.running);
        assert_eq!(svc.memory_limit, Some(64 * MIB));
        assert_eq!(
            st.listeners[&(8100 + i as u16)].service.as_deref(),
            Some(svc.record.name.as_str())
        );
        assert_eq!(
            pool.stats(&h.name).map(|s| s.execs()),
            Some(1),
            "one round trip on {}",
            h.name
        );
    }
    assert_eq!(pool.total_stats().execs(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_plans_stopped() {
    let Some(fleet) = fleet("a_killed_process_plans_stopped", 3) else {
        return;
    };
    let (d, pids) = converged_fleet(&fleet);
    let h = fleet.host(1);
    h.exec_ok(&format!(
        "kill {p}; i=0; while [ -d /proc/{p} ] && ! grep -q '^State:.*Z' /proc/{p}/status; do \
         i=$((i+1)); [ $i -gt 1200 ] && exit 1; sleep 0.05; done",
        p = pids[1]
    ))
    .unwrap();
    let (_, p) = observe_and_plan(&pool(), &d).await;
    assert_eq!(reasons_of(&p, "web1"), [DriftReason::Stopped]);
    assert_eq!(only_action(&p), (ActionKind::Start, "web1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_desired_version_plans_version() {
    let Some(fleet) = fleet("a_changed_desired_version_plans_version", 3) else {
        return;
    };
    let (mut d, _) = converged_fleet(&fleet);
    if let Some(s) = d.services.get_mut("web2") {
        s.version = "1.1".into();
    }
    let (_, p) = observe_and_plan(&pool(), &d).await;
    assert_eq!(reasons_of(&p, "web2"), [DriftReason::Version]);
    assert_eq!(only_action(&p), (ActionKind::Upgrade, "web2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_limit_changed_by_hand_plans_memory_limit() {
    let Some(fleet) = fleet("a_memory_limit_changed_by_hand_plans_memory_limit", 3) else {
        return;
    };
    let (d, _) = converged_fleet(&fleet);
    fleet
        .host(0)
        .exec_ok(&format!(
            "echo {} > /sys/fs/cgroup/memory/tend/web0/memory.limit_in_bytes",
            48 * MIB
        ))
        .unwrap();
    let (_, p) = observe_and_plan(&pool(), &d).await;
    assert_eq!(reasons_of(&p, "web0"), [DriftReason::MemoryLimit]);
    assert_eq!(only_action(&p), (ActionKind::Restart, "web0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_on_a_declared_port_blocks_the_start_and_is_left_running() {
    let Some(fleet) = fleet(
        "a_stranger_on_a_declared_port_blocks_the_start_and_is_left_running",
        3,
    ) else {
        return;
    };
    let d = one_per_host(&fleet);
    let h = fleet.host(2);
    let stranger = start(
        h,
        None,
        "python3 -m http.server 8102 --bind 127.0.0.1",
        8102,
    );
    let (_, p) = observe_and_plan(&pool(), &d).await;
    assert_eq!(
        reasons_of(&p, "web2"),
        [DriftReason::Missing, DriftReason::Port]
    );
    let sp = p.services.iter().find(|s| s.service == "web2").unwrap();
    let blocked = sp.blocked.as_deref().unwrap_or_default();
    assert!(
        blocked.contains(&format!("port 8102 held by pid {stranger} (python")),
        "{blocked}"
    );
    assert!(
        !p.actions.iter().any(|a| a.host == h.name),
        "{:#?}",
        p.actions
    );
    // The other hosts still start theirs.
    assert_eq!(p.actions.len(), 2);
    h.exec_ok(&format!("kill -0 {stranger}")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_link_is_down_is_unreachable_while_the_others_are_planned() {
    let Some(fleet) = fleet(
        "a_host_whose_link_is_down_is_unreachable_while_the_others_are_planned",
        3,
    ) else {
        return;
    };
    let (d, _) = converged_fleet(&fleet);
    fleet.host(1).link_down().unwrap();
    let (_, p) = observe_and_plan(&pool(), &d).await;
    fleet.host(1).link_up().unwrap();
    assert_eq!(
        p.unreachable.keys().collect::<Vec<_>>(),
        vec![&fleet.host(1).name]
    );
    let web1 = p.services.iter().find(|s| s.service == "web1").unwrap();
    assert_eq!(web1.status, Status::Unknown);
    for other in ["web0", "web2"] {
        let s = p.services.iter().find(|s| s.service == other).unwrap();
        assert_eq!(s.status, Status::InSync, "{s:?}");
    }
    assert!(p.actions.is_empty());
    assert!(!p.in_sync());
}

/// The `tend` binary, built once per test run.
fn tend_bin() -> &'static std::path::Path {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let ws = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args([
                    "build",
                    "--quiet",
                    "--message-format=json",
                    "--manifest-path",
                ])
                .arg(ws.join("Cargo.toml"))
                .args(["-p", "tend", "--bin", "tend"])
                .output()
                .unwrap();
        assert!(
            out.status.success(),
            "cargo build: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "tend")
            .find_map(|v| v["executable"].as_str().map(std::path::PathBuf::from))
            .expect("cargo reported no tend executable")
    })
}

/// `tend plan` itself, as a user runs it.
fn tend_plan(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(tend_bin())
        .arg("plan")
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn manifests_for(fleet: &Fleet, dir: &std::path::Path) {
    let mut y = String::new();
    for (i, h) in fleet.hosts().iter().enumerate() {
        let tend::model::Address::Ssh(t) = h.tend_host().address else {
            unreachable!()
        };
        let identity = t
            .identity
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        y.push_str(&format!(
            "apiVersion: tend/v1\nkind: Host\nmetadata: {{name: {name}, labels: {{idx: \"{i}\"}}}}\n\
             spec:\n  address: {ip}\n  port: {port}\n  user: root\n  identity: {identity}\n  \
             hostKeys: [\"{key}\"]\n---\n\
             apiVersion: tend/v1\nkind: Service\nmetadata: {{name: web{i}}}\n\
             spec:\n  host: {name}\n  runtime: process\n  version: \"1.0\"\n  \
             command: [python3, -m, http.server, \"{p}\", --bind, 127.0.0.1]\n  \
             ports: [{p}]\n  memory: 64MiB\n---\n",
            name = h.name,
            ip = h.ip,
            port = h.port,
            key = h.host_key_line,
            p = 8100 + i,
        ));
    }
    std::fs::write(dir.join("fleet.yaml"), y).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tend_plan_prints_the_diff_and_exits_by_whether_the_selected_hosts_are_in_sync() {
    let Some(fleet) = fleet(
        "tend_plan_prints_the_diff_and_exits_by_whether_the_selected_hosts_are_in_sync",
        3,
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    manifests_for(&fleet, tmp.path());
    let loaded = tend::manifest::load_path(tmp.path(), tend::manifest::Secrets::Resolve).unwrap();
    converge(fleet.host(0), &loaded.desired.services["web0"]);
    let dir = tmp.path().to_str().unwrap();

    let (code, out, err) = tend_plan(&[dir]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains("+ start web1 (missing)\n"), "{out}");
    assert!(out.contains("+ start web2 (missing)\n"), "{out}");
    assert!(!out.contains("web0 ("), "web0 is in sync: {out}");
    assert!(out.contains("COMMITTED"), "memory table: {out}");
    assert!(!out.contains('\x1b'), "plain when piped");

    let (code, json, err) = tend_plan(&[dir, "--output", "json"]);
    assert_eq!(code, 2, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["actions"].as_array().map(Vec::len), Some(2), "{json}");

    let (code, out, err) = tend_plan(&[dir, "-l", "idx=0"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("in sync"), "{out}");

    fleet.host(2).link_down().unwrap();
    let (code, out, _) = tend_plan(&[dir, "-l", "idx=2"]);
    fleet.host(2).link_up().unwrap();
    assert_eq!(code, 1, "an unobservable host is an error: {out}");
    assert!(out.contains("? unreachable"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_probes_verify_the_known_sockets_and_still_find_a_stranger_after_a_kill() {
    let Some(fleet) = fleet(
        "later_probes_verify_the_known_sockets_and_still_find_a_stranger_after_a_kill",
        2,
    ) else {
        return;
    };
    let (d, pids) = converged_fleet(&fleet);
    let pool = pool();
    let (first, p) = observe_and_plan(&pool, &d).await;
    assert!(p.in_sync(), "{p:#?}");
    for h in fleet.hosts() {
        let opts = tend::observe::options_for(&d, &h.name);
        assert!(
            !pool
                .memory::<SocketCache>()
                .known(&h.name, &opts)
                .is_empty(),
            "nothing to verify next time on {}",
            h.name
        );
    }
    let (second, p) = observe_and_plan(&pool, &d).await;
    assert!(p.in_sync(), "{p:#?}");
    for (i, h) in fleet.hosts().iter().enumerate() {
        let port = 8100 + i as u16;
        let (Observation::Reachable(a), Observation::Reachable(b)) =
            (&first[&h.name], &second[&h.name])
        else {
            panic!("{} unreachable", h.name)
        };
        assert_eq!(a.listeners[&port], b.listeners[&port]);
        // Everything but the live memory use, which moves between probes.
        let steady = |st: &tend::model::HostState| {
            st.services
                .iter()
                .map(|(n, o)| {
                    (
                        n.clone(),
                        o.record.clone(),
                        o.running,
                        o.memory_limit,
                        o.oom_kills,
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(steady(a), steady(b));
    }
    // web1 dies and a stranger takes its port: the known socket is gone, so
    // the probe walks the table again and names the stranger.
    let h = fleet.host(1);
    h.exec_ok(&format!(
        "kill {p}; i=0; while [ -d /proc/{p} ] && ! grep -q '^State:.*Z' /proc/{p}/status; do \
         i=$((i+1)); [ $i -gt 1200 ] && exit 1; sleep 0.05; done",
        p = pids[1]
    ))
    .unwrap();
    let stranger = start(
        h,
        None,
        "python3 -m http.server 8101 --bind 127.0.0.1",
        8101,
    );
    let (_, p) = observe_and_plan(&pool, &d).await;
    assert_eq!(
        reasons_of(&p, "web1"),
        [DriftReason::Stopped, DriftReason::Port]
    );
    let sp = p.services.iter().find(|s| s.service == "web1").unwrap();
    assert!(
        sp.blocked
            .as_deref()
            .unwrap_or_default()
            .contains(&format!("port 8101 held by pid {stranger}")),
        "{sp:#?}"
    );
    assert!(p.actions.is_empty(), "{:#?}", p.actions);
}
