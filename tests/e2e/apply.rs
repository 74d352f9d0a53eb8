//! `tend::apply::converge` on real sshd test hosts, process runtime: from
//! empty, idempotence, upgrade, rollback, cross-host order, memory limits,
//! prune guards, the host lock. Helpers here are shared by `apply_*.rs`.

use super::common::fleet;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tend::apply::{self, ActionOutcome, ApplyOptions, ApplyReport};
use tend::model::{
    Delivery, Desired, EnvValue, Health, HealthCheck, Observation, Service, SourceFile, SourceTree,
};
use tend::plan::ActionKind;
use tend::record::{Record, RuntimeKind};
use tend::transport::pool::{Pool, PoolOptions};
use tend_e2e::testbed::{Fleet, TestHost};

/// A stand-in digest: the tests only need distinct trees to differ.
fn digest(files: &[(&str, &str, bool)]) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    files.hash(&mut h);
    format!("{:016x}", h.finish())
}

pub const ROOT: &str = "/var/lib/tend";

pub fn source(files: &[(&str, &str, bool)]) -> Delivery {
    Delivery::Source(SourceTree {
        path: "services/test".into(),
        digest: digest(files),
        files: Arc::new(
            files
                .iter()
                .map(|(p, c, x)| SourceFile {
                    path: p.to_string(),
                    executable: *x,
                    contents: c.as_bytes().to_vec(),
                })
                .collect(),
        ),
    })
}

pub fn service(name: &str, host: &str, version: &str, command: &[&str]) -> Service {
    Service {
        name: name.into(),
        labels: BTreeMap::new(),
        hosts: vec![host.into()],
        rollout: Default::default(),
        runtime: RuntimeKind::Process,
        version: version.into(),
        delivery: Delivery::None,
        install: Vec::new(),
        command: command.iter().map(|s| s.to_string()).collect(),
        env: BTreeMap::new(),
        ports: Vec::new(),
        memory: None,
        health: None,
        depends_on: Vec::new(),
        suspend: false,
    }
}

pub fn http_health(port: u16, retries: u32) -> Option<Health> {
    Some(Health {
        check: HealthCheck::Http {
            port,
            path: "/health".into(),
        },
        interval: Duration::from_millis(500),
        timeout: Duration::from_secs(2),
        retries,
    })
}

/// busybox httpd serving `www/health` = `body` on `port`.
pub fn httpd(name: &str, host: &str, port: u16, version: &str, body: &str) -> Service {
    let p = port.to_string();
    let mut s = service(
        name,
        host,
        version,
        &["busybox", "httpd", "-f", "-p", &p, "-h", "www"],
    );
    s.delivery = source(&[("www/health", body, false)]);
    s.ports = vec![port];
    s.memory = Some(32 << 20);
    s.health = http_health(port, 6);
    s
}

pub fn desired(fleet: &Fleet, services: Vec<Service>) -> Desired {
    Desired {
        hosts: fleet
            .tend_hosts()
            .into_iter()
            .map(|h| (h.name.clone(), h))
            .collect(),
        services: services.into_iter().map(|s| (s.name.clone(), s)).collect(),
    }
}

pub fn pool() -> Pool {
    Pool::new(PoolOptions::default())
}

pub async fn converge(pool: &Pool, d: &Desired, opts: &ApplyOptions) -> ApplyReport {
    apply::converge(d, pool, opts, None).await
}

pub fn outcomes(r: &ApplyReport) -> Vec<(String, ActionKind, ActionOutcome)> {
    r.actions
        .iter()
        .map(|a| (a.action.service.clone(), a.action.kind, a.outcome.clone()))
        .collect()
}

pub fn assert_converged(r: &ApplyReport) {
    assert!(r.converged(), "not converged: {:#?}", r.actions);
}

pub fn record(h: &TestHost, svc: &str) -> Option<Record> {
    let out = h
        .exec(&format!("cat {ROOT}/records/{svc}.rec"))
        .expect("exec");
    if !out.status.success() {
        return None;
    }
    Some(Record::parse(&String::from_utf8_lossy(&out.stdout)).expect("record parses"))
}

/// What the service answers on the host's loopback.
pub fn get(h: &TestHost, port: u16, path: &str) -> Option<String> {
    let out = h
        .exec(&format!("wget -q -T 3 -O - http://127.0.0.1:{port}{path}"))
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Processes of a service, counted in its cgroup.
pub fn procs(h: &TestHost, svc: &str) -> usize {
    let out = h
        .exec_ok(&format!(
            "cat /sys/fs/cgroup/memory/tend/{svc}/cgroup.procs 2>/dev/null || true"
        ))
        .unwrap_or_default();
    out.lines().filter(|l| !l.trim().is_empty()).count()
}

async fn observe(pool: &Pool, d: &Desired, host: &str) -> tend::model::HostState {
    let obs = tend::observe::observe_all(pool, d, &[host.to_string()]).await;
    match obs.get(host) {
        Some(Observation::Reachable(st)) => st.clone(),
        other => panic!("{host} not observed: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_converges_from_empty_in_dependency_order_and_a_second_apply_plans_nothing() {
    let Some(f) = fleet("a_fleet_converges_from_empty_in_dependency_order", 2) else {
        return;
    };
    let (h0, h1) = (f.host(0).name.clone(), f.host(1).name.clone());
    // The seed's batches: auth first, then the AI service (other host), then the CRM.
    let auth = httpd("auth", &h0, 18207, "1.0", "auth 1.0\n");
    let mut ai = httpd("ai", &h1, 18100, "2.3.1", "ai\n");
    ai.depends_on = vec!["auth".into()];
    ai.env.insert("DB_HOST".into(), EnvValue::literal("aliyun"));
    let mut crm = httpd("crm", &h0, 18700, "0.9", "crm\n");
    crm.depends_on = vec!["ai".into()];
    let d = desired(&f, vec![crm, ai, auth]);
    let pool = pool();
    let opts = ApplyOptions::default();

    let r = converge(&pool, &d, &opts).await;
    assert_converged(&r);
    assert_eq!(r.actions.len(), 3);
    assert_eq!(
        get(f.host(0), 18207, "/health").as_deref(),
        Some("auth 1.0\n")
    );
    assert_eq!(get(f.host(1), 18100, "/health").as_deref(), Some("ai\n"));
    assert_eq!(get(f.host(0), 18700, "/health").as_deref(), Some("crm\n"));

    // Order, from what the hosts recorded: each started after its dependency.
    let (a, b, c) = (
        record(f.host(0), "auth").unwrap(),
        record(f.host(1), "ai").unwrap(),
        record(f.host(0), "crm").unwrap(),
    );
    assert!(a.deployed_at <= b.deployed_at && b.deployed_at <= c.deployed_at);
    assert!(
        a.start_time.unwrap() < b.start_time.unwrap(),
        "ai started before auth"
    );
    assert!(
        b.start_time.unwrap() < c.start_time.unwrap(),
        "crm started before ai"
    );
    assert_eq!(a.version, "1.0");
    assert_eq!(a.cgroup.as_deref(), Some("/tend/auth"));

    // The layout: release dir, current link, 0600 env file, no temp leftovers.
    let ls = f.host(1).exec_ok(&format!(
        "cd {ROOT}; readlink releases/ai/current; stat -c %a env/ai.env; cat env/ai.env; ls -a releases/ai records | grep -c tmp || true"
    )).unwrap();
    let lines: Vec<&str> = ls.lines().collect();
    assert_eq!(lines[0], b.release);
    assert_eq!(lines[1], "600");
    assert_eq!(lines[2], "DB_HOST=\"aliyun\"");
    assert_eq!(lines.last(), Some(&"0"));

    // Idempotent: the next run has nothing to do and touches nothing.
    let again = converge(&pool, &d, &opts).await;
    assert_converged(&again);
    assert!(
        again.plan.actions.is_empty(),
        "second plan: {:?}",
        again.plan.actions
    );
    assert_eq!(record(f.host(0), "auth").unwrap().pid, a.pid);
    assert_eq!(procs(f.host(0), "auth"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_switches_current_keeps_the_previous_release_and_collects_older_ones() {
    let Some(f) = fleet("an_upgrade_switches_current", 1) else {
        return;
    };
    let h = f.host(0).name.clone();
    let pool = pool();
    let opts = ApplyOptions::default();
    let mut releases = Vec::new();
    for v in ["1", "2", "3"] {
        let d = desired(&f, vec![httpd("web", &h, 18300, v, &format!("web {v}\n"))]);
        let r = converge(&pool, &d, &opts).await;
        assert_converged(&r);
        assert_eq!(get(f.host(0), 18300, "/health"), Some(format!("web {v}\n")));
        let rec = record(f.host(0), "web").unwrap();
        releases.push(rec.release.clone());
        if v != "1" {
            assert_eq!(r.actions[0].action.kind, ActionKind::Upgrade);
            let prev = rec.previous.expect("previous release recorded");
            assert_eq!(prev.release, releases[releases.len() - 2]);
        }
        assert_eq!(procs(f.host(0), "web"), 1);
    }
    // Current and previous kept, the first one collected.
    let ls = f
        .host(0)
        .exec_ok(&format!("ls {ROOT}/releases/web"))
        .unwrap();
    let mut got: Vec<&str> = ls.lines().collect();
    got.sort();
    let mut want = vec!["current", releases[1].as_str(), releases[2].as_str()];
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_upgrade_rolls_back_and_the_old_version_still_serves() {
    let Some(f) = fleet("a_failed_upgrade_rolls_back", 1) else {
        return;
    };
    let h = f.host(0).name.clone();
    let pool = pool();
    let opts = ApplyOptions::default();
    let good = httpd("api", &h, 18400, "1", "api 1\n");
    assert_converged(&converge(&pool, &desired(&f, vec![good.clone()]), &opts).await);
    let before = record(f.host(0), "api").unwrap();

    // Version 2 serves on the wrong port: its health gate never passes.
    let mut bad = httpd("api", &h, 18400, "2", "api 2\n");
    bad.command = ["busybox", "httpd", "-f", "-p", "18401", "-h", "www"]
        .map(String::from)
        .to_vec();
    bad.health = http_health(18400, 3);
    let r = converge(&pool, &desired(&f, vec![bad.clone()]), &opts).await;
    assert!(!r.converged());
    match &r.actions[0].outcome {
        ActionOutcome::RolledBack(m) => assert!(m.contains("rolled back to 1"), "{m}"),
        o => panic!("expected a rollback, got {o:?}"),
    }
    assert_eq!(get(f.host(0), 18400, "/health").as_deref(), Some("api 1\n"));
    let after = record(f.host(0), "api").unwrap();
    assert_eq!(after.version, "1");
    assert_eq!(after.release, before.release);
    assert_eq!(after.failed_version.as_deref(), Some("2"));
    assert_ne!(after.pid, before.pid, "the old release was restarted");
    assert_eq!(
        procs(f.host(0), "api"),
        1,
        "the failed release is not left running"
    );
    let current = f
        .host(0)
        .exec_ok(&format!("readlink {ROOT}/releases/api/current"))
        .unwrap();
    assert_eq!(current.trim(), before.release);

    // The failed version is not retried; a crash of the old one restarts the
    // old one in place (it never installs version 2 again).
    f.host(0)
        .exec_ok(&format!("kill -9 {}", after.pid.unwrap()))
        .unwrap();
    let r = converge(&pool, &desired(&f, vec![bad]), &opts).await;
    assert_eq!(r.actions.len(), 1, "{:?}", r.actions);
    assert_eq!(r.actions[0].action.kind, ActionKind::Restart);
    assert_eq!(r.actions[0].outcome, ActionOutcome::Succeeded);
    assert!(!r.converged(), "version 2 is still not running");
    assert_eq!(get(f.host(0), 18400, "/health").as_deref(), Some("api 1\n"));
    let again = record(f.host(0), "api").unwrap();
    assert_eq!(
        (again.version.as_str(), again.failed_version.as_deref()),
        ("1", Some("2"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_allocating_past_its_limit_is_oom_killed_and_reported() {
    let Some(f) = fleet("a_service_allocating_past_its_limit_is_oom_killed", 1) else {
        return;
    };
    let h = f.host(0).name.clone();
    let mut hog = service(
        "hog",
        &h,
        "1",
        &[
            "python3",
            "-c",
            "import time\nb = b'x' * (256 << 20)\ntime.sleep(600)",
        ],
    );
    hog.memory = Some(64 << 20);
    hog.ports = vec![18500];
    hog.health = Some(Health {
        check: HealthCheck::Tcp { port: 18500 },
        interval: Duration::from_millis(500),
        timeout: Duration::from_secs(1),
        retries: 4,
    });
    let d = desired(&f, vec![hog]);
    let pool = pool();
    let r = converge(&pool, &d, &ApplyOptions::default()).await;
    let a = &r.actions[0];
    assert!(a.oom_killed, "apply did not see the OOM kill: {a:#?}");
    match &a.outcome {
        ActionOutcome::Failed(m) => assert!(m.contains("OOM"), "{m}"),
        o => panic!("expected a failure, got {o:?}"),
    }
    let limit = f
        .host(0)
        .exec_ok("cat /sys/fs/cgroup/memory/tend/hog/memory.limit_in_bytes")
        .unwrap();
    assert_eq!(limit.trim(), (64u64 << 20).to_string());
    let st = observe(&pool, &d, &h).await;
    let o = &st.services["hog"];
    assert!(o.oom_killed && !o.running, "observed: {o:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_runs_only_when_on_within_its_share_or_forced() {
    let Some(f) = fleet("prune_runs_only_when_on_within_its_share_or_forced", 1) else {
        return;
    };
    let h = f.host(0).name.clone();
    let pool = pool();
    let sleeper = |n: &str| service(n, &h, "1", &["sleep", "600"]);
    let all = desired(
        &f,
        vec![sleeper("pa"), sleeper("pb"), sleeper("pc"), sleeper("pd")],
    );
    assert_converged(&converge(&pool, &all, &ApplyOptions::default()).await);
    // Services start with no signal ignored (HUP and PIPE are theirs to handle).
    let pid = record(f.host(0), "pa").unwrap().pid.unwrap();
    let ign = f
        .host(0)
        .exec_ok(&format!(
            "sed -n 's/^SigIgn:[[:space:]]*//p' /proc/{pid}/status"
        ))
        .unwrap();
    let mask = u64::from_str_radix(ign.trim(), 16).unwrap();
    assert_eq!(mask & ((1 << 0) | (1 << 12)), 0, "SigIgn {ign}");

    // Off: nothing removed, and that is no failure.
    let three_gone = desired(&f, vec![sleeper("pd")]);
    let r = converge(&pool, &three_gone, &ApplyOptions::default()).await;
    assert!(r.actions.iter().all(|a| a.action.kind == ActionKind::Prune));
    assert!(r
        .actions
        .iter()
        .all(|a| matches!(&a.outcome, ActionOutcome::Skipped(m) if m.contains("off"))));
    assert!(record(f.host(0), "pa").is_some());

    // On, but 3 of 4 is more than half: refused.
    let on = ApplyOptions {
        prune: true,
        ..ApplyOptions::default()
    };
    let r = converge(&pool, &three_gone, &on).await;
    assert!(!r.converged());
    assert!(
        r.actions
            .iter()
            .all(|a| matches!(&a.outcome, ActionOutcome::Skipped(m) if m.contains("3 of the 4"))),
        "{:?}",
        outcomes(&r)
    );
    assert_eq!(procs(f.host(0), "pa"), 1);

    // Within the share: 2 of 4 go.
    let two_gone = desired(&f, vec![sleeper("pc"), sleeper("pd")]);
    let r = converge(&pool, &two_gone, &on).await;
    assert_converged(&r);
    assert!(record(f.host(0), "pa").is_none() && record(f.host(0), "pb").is_none());
    assert_eq!(procs(f.host(0), "pa"), 0);
    let ls = f
        .host(0)
        .exec_ok(&format!("ls {ROOT}/releases {ROOT}/env"))
        .unwrap();
    assert!(!ls.contains("pa"), "{ls}");

    // Forced: the last but one goes too, past the share.
    let forced = ApplyOptions {
        prune: true,
        force_prune: true,
        ..ApplyOptions::default()
    };
    let r = converge(&pool, &desired(&f, vec![sleeper("pd")]), &forced).await;
    assert_converged(&r);
    assert!(record(f.host(0), "pc").is_none());
    assert!(record(f.host(0), "pd").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_locked_by_another_controller_is_skipped_and_names_the_holder() {
    let Some(f) = fleet("a_host_locked_by_another_controller_is_skipped", 2) else {
        return;
    };
    let (h0, h1) = (f.host(0).name.clone(), f.host(1).name.clone());
    let d = desired(
        &f,
        vec![
            service("la", &h0, "1", &["sleep", "600"]),
            service("lb", &h1, "1", &["sleep", "600"]),
        ],
    );
    // Another controller's live lease on host0.
    let until = 4_000_000_000u64;
    f.host(0)
        .exec_ok(&format!(
            "mkdir -p {ROOT}; echo 'other:7:1 {until}' > {ROOT}/lock.lease; echo 'controller=ctl-b pid=7 since=1 token=other:7:1' > {ROOT}/lock.owner"
        ))
        .unwrap();
    let pool = pool();
    let r = converge(&pool, &d, &ApplyOptions::default()).await;
    assert!(!r.converged());
    let why = r.locked.get(&h0).expect("host0 reported locked");
    assert!(why.contains("locked by controller=ctl-b pid=7"), "{why}");
    assert!(
        record(f.host(0), "la").is_none(),
        "a locked host was changed"
    );
    assert!(
        record(f.host(1), "lb").is_some(),
        "the other host still converges"
    );

    // A script holding the flock (another apply mid-script) blocks too.
    f.host(0)
        .exec_ok(&format!("rm -f {ROOT}/lock.lease {ROOT}/lock.owner"))
        .unwrap();
    let mut holder = f
        .host(0)
        .command(&format!(
            "exec 9>>{ROOT}/lock; flock 9; echo held; sleep 30"
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(holder.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "held");
    }
    let quick = ApplyOptions {
        lock_wait: Duration::from_secs(1),
        ..ApplyOptions::default()
    };
    let r = converge(&pool, &d, &quick).await;
    assert!(r.locked.contains_key(&h0), "{:?}", r.locked);
    let _ = holder.kill();
    let _ = holder.wait();

    // Free again: converges, and gives the lease back.
    let r = converge(&pool, &d, &ApplyOptions::default()).await;
    assert_converged(&r);
    assert!(record(f.host(0), "la").is_some());
    let left = f.host(0).exec_ok(&format!("ls {ROOT}")).unwrap();
    assert!(!left.contains("lock.lease"), "{left}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_controller_never_converges_a_host_twice_at_once() {
    let Some(f) = fleet("one_controller_never_converges_a_host_twice_at_once", 1) else {
        return;
    };
    let h = f.host(0).name.clone();
    let mut slow = service("slow", &h, "1", &["sleep", "600"]);
    slow.install = vec!["sleep 2".into()];
    let d = desired(&f, vec![slow]);
    let pool = pool();
    let opts = ApplyOptions::default();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // The second starts once the first holds the host.
    let (a, b) = tokio::join!(apply::converge(&d, &pool, &opts, Some(tx)), async {
        while let Some(e) = rx.recv().await {
            if matches!(e, apply::Event::HostLocked { .. }) {
                break;
            }
        }
        converge(&pool, &d, &opts).await
    });
    assert_converged(&a);
    let why = b.locked.get(&h).expect("the second apply was refused");
    assert!(why.contains("this controller"), "{why}");
    assert_eq!(procs(f.host(0), "slow"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn values_with_quotes_substitutions_and_newlines_reach_the_host_over_ssh_exactly() {
    let Some(f) = fleet("values_reach_the_host_over_ssh_exactly", 1) else {
        return;
    };
    let h = f.host(0).name.clone();
    let nasty = [
        "it's",
        "$(touch /tmp/pwned)",
        "`touch /tmp/pwned`",
        "a\nb\n",
        "\"\\$x'\\''",
        "üñí\ttab",
    ];
    let mut services = Vec::new();
    for (i, v) in nasty.iter().enumerate() {
        let mut s = service(
            &format!("q{i}"),
            &h,
            &format!("1 {v}"),
            &[
                "sh",
                "-c",
                "printf '%s' \"$V\" > out.env; printf '%s' \"$1\" > out.arg; exec sleep 600",
                "tend-q",
                v,
            ],
        );
        s.env.insert("V".into(), EnvValue::literal(*v));
        s.install = vec![format!(
            "printf '%s' '{}' > out.step",
            v.replace('\'', "'\\''")
        )];
        services.push(s);
    }
    let d = desired(&f, services);
    let r = converge(&pool(), &d, &ApplyOptions::default()).await;
    assert_converged(&r);
    for (i, v) in nasty.iter().enumerate() {
        let dir = format!("{ROOT}/releases/q{i}/current");
        let read = |file: &str| {
            let mut out = Vec::new();
            for _ in 0..100 {
                out = f.host(0).exec(&format!("cat {dir}/{file}")).unwrap().stdout;
                if !out.is_empty() || v.is_empty() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            out
        };
        assert_eq!(read("out.env"), v.as_bytes(), "env of q{i}");
        assert_eq!(read("out.arg"), v.as_bytes(), "argv of q{i}");
        assert_eq!(read("out.step"), v.as_bytes(), "install step of q{i}");
        assert_eq!(
            record(f.host(0), &format!("q{i}")).unwrap().version,
            format!("1 {v}")
        );
    }
    let pwned = f.host(0).exec("test -e /tmp/pwned").unwrap();
    assert!(!pwned.status.success(), "a value was run as a command");
}
