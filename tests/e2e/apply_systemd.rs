//! The systemd runtime against a real systemd: a test host whose PID 1 is
//! systemd (see `tend_e2e::testbed::SystemdHost`), its sshd one of its
//! units, driven by `tend apply` / `tend plan` and `tend::apply::converge`.

use super::apply::{assert_converged, converge, http_health, pool, source, ROOT};
use super::common::{self, tend_bin};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tend::apply::{ActionOutcome, ApplyOptions};
use tend::model::{Desired, EnvValue, Health, HealthCheck, Service};
use tend::plan::ActionKind;
use tend::record::{Record, RuntimeKind};
use tend_e2e::testbed::{skip_unless_e2e, SystemdHost};

const MIB: u64 = 1 << 20;

fn host(test: &str) -> Option<SystemdHost> {
    if !skip_unless_e2e(test) {
        return None;
    }
    if let Some(why) = SystemdHost::unavailable() {
        if std::env::var("TEND_E2E").as_deref() == Ok("required") {
            panic!("{test}: a systemd test host is required (TEND_E2E=required): {why}");
        }
        println!("skipped {test}: {why}");
        return None;
    }
    Some(SystemdHost::start().unwrap_or_else(|e| panic!("{test}: {e:#}")))
}

fn unit(svc: &str) -> String {
    format!("tend-{svc}.service")
}

fn desired(h: &SystemdHost, services: Vec<Service>) -> Desired {
    let host = h.tend_host();
    Desired {
        hosts: [(host.name.clone(), host)].into_iter().collect(),
        services: services.into_iter().map(|s| (s.name.clone(), s)).collect(),
    }
}

/// The `serve` script of the test services: python3's http.server in the
/// release directory (cwd), on `$PORT` from the env file.
const SERVE: &str = "#!/bin/sh\nexec python3 -m http.server --bind 127.0.0.1 \"$PORT\"\n";

/// A systemd service from a source tree: `./serve` answers `/health` with
/// `web <version>`; 64 MiB limit; health-gated.
fn web(h: &SystemdHost, name: &str, version: &str, port: u16) -> Service {
    let body = format!("{name} {version}\n");
    Service {
        name: name.into(),
        labels: BTreeMap::new(),
        hosts: vec![h.name.clone()],
        rollout: Default::default(),
        runtime: RuntimeKind::Systemd,
        version: version.into(),
        delivery: source(&[("serve", SERVE, true), ("health", &body, false)]),
        install: Vec::new(),
        command: vec!["./serve".into()],
        env: [("PORT".to_string(), EnvValue::literal(port.to_string()))]
            .into_iter()
            .collect(),
        ports: vec![port],
        memory: Some(64 * MIB),
        health: http_health(port, 20),
        depends_on: Vec::new(),
        suspend: false,
    }
}

fn record(h: &SystemdHost, svc: &str) -> Option<Record> {
    let out = h
        .exec(&format!("cat {ROOT}/records/{svc}.rec"))
        .expect("exec");
    if !out.status.success() {
        return None;
    }
    Some(Record::parse(&String::from_utf8_lossy(&out.stdout)).expect("record parses"))
}

/// What the service answers on the host's loopback.
fn get(h: &SystemdHost, port: u16, path: &str) -> Option<String> {
    let out = h
        .exec(&format!(
            "curl -fsS --max-time 3 http://127.0.0.1:{port}{path}"
        ))
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn show(h: &SystemdHost, svc: &str) -> BTreeMap<String, String> {
    h.show(
        &unit(svc),
        &[
            "LoadState",
            "ActiveState",
            "SubState",
            "MainPID",
            "MemoryMax",
            "NRestarts",
            "FragmentPath",
            "WorkingDirectory",
            "UnitFileState",
        ],
    )
    .expect("systemctl show")
}

/// Poll (bounded) until `f` gives a value; panics naming `what` otherwise.
fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "{what} not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the host's systemd runs for a service, checked against tend's record.
fn assert_unit_runs(h: &SystemdHost, svc: &str, rec: &Record) {
    let u = show(h, svc);
    assert_eq!(
        u["ActiveState"],
        "active",
        "{u:?}\n{}",
        h.journal(&unit(svc))
    );
    assert_eq!(
        u["MainPID"],
        rec.pid.expect("pid recorded").to_string(),
        "MainPID vs record: {u:?}"
    );
    assert_eq!(
        u["WorkingDirectory"],
        format!("{ROOT}/releases/{svc}/{}", rec.release),
        "{u:?}"
    );
    assert_eq!(
        rec.cgroup.as_deref(),
        Some(&*format!("/system.slice/{}", unit(svc)))
    );
}

fn manifests(h: &SystemdHost, port: u16) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("services/web");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("serve"), SERVE).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(src.join("serve"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
    }
    std::fs::write(src.join("health"), "web 1\n").unwrap();
    let y = format!(
        "apiVersion: tend/v1\nkind: Host\nmetadata: {{name: {name}}}\nspec:\n  address: {ip}\n  port: {p}\n  user: root\n  identity: {id}\n  hostKeys: [\"{key}\"]\n---\n\
         apiVersion: tend/v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  host: {name}\n  runtime: systemd\n  version: \"1\"\n  source: {{path: services/web}}\n  command: [./serve]\n  env: {{PORT: \"{port}\"}}\n  ports: [{port}]\n  memory: 64MiB\n  health: {{http: {{port: {port}, path: /health}}, interval: 500ms, timeout: 2s, retries: 20}}\n",
        name = h.name,
        ip = h.ip,
        p = h.port,
        id = h.identity().display(),
        key = h.host_key_line,
    );
    std::fs::write(dir.path().join("fleet.yaml"), y).unwrap();
    dir
}

fn tend(args: &[&str], dir: &std::path::Path) -> (i32, String) {
    let mut cmd = Command::new(tend_bin());
    cmd.args(args).arg(dir).stdin(Stdio::null());
    common::run(&mut cmd)
}

#[test]
fn tend_apply_starts_a_systemd_unit_that_runs_the_recorded_pid_under_its_memory_limit() {
    let Some(h) = host("tend_apply_starts_a_systemd_unit_that_runs_the_recorded_pid") else {
        return;
    };
    let dir = manifests(&h, 18080);
    let (code, text) = tend(&["apply", "--yes"], dir.path());
    assert_eq!(code, 0, "{text}\n{}", h.journal(&unit("web")));

    let rec = record(&h, "web").expect("record");
    assert_eq!(rec.runtime, Some(RuntimeKind::Systemd));
    assert_unit_runs(&h, "web", &rec);
    let u = show(&h, "web");
    assert_eq!(u["MemoryMax"], (64 * MIB).to_string());
    assert_eq!(u["FragmentPath"], "/etc/systemd/system/tend-web.service");
    assert_eq!(u["UnitFileState"], "enabled");
    // The kernel enforces it: systemd wrote the limit into the unit's cgroup.
    let limit = h
        .exec_ok("cat /sys/fs/cgroup/memory/system.slice/tend-web.service/memory.limit_in_bytes")
        .unwrap();
    assert_eq!(limit.trim(), (64 * MIB).to_string());
    // The main process is the service's own (python), in the unit's cgroup.
    let pid = rec.pid.unwrap();
    let cg = h.exec_ok(&format!("cat /proc/{pid}/cgroup")).unwrap();
    assert!(
        cg.lines()
            .any(|l| l.ends_with(":memory:/system.slice/tend-web.service")),
        "{cg}"
    );
    assert_eq!(get(&h, 18080, "/health").as_deref(), Some("web 1\n"));

    // In sync: `tend plan` exits 0, and a second apply changes nothing.
    let (code, text) = tend(&["plan"], dir.path());
    assert_eq!(code, 0, "plan after apply: {text}");
    let (code, text) = tend(&["apply", "--yes"], dir.path());
    assert_eq!(code, 0, "{text}");
    let again = record(&h, "web").unwrap();
    assert_eq!(again.pid, rec.pid, "the second apply restarted it");
    assert_eq!(show(&h, "web")["NRestarts"], "0");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_rewrites_the_unit_and_a_failed_one_points_it_back_at_the_old_release() {
    let Some(h) = host("an_upgrade_rewrites_the_unit_and_a_failed_one_points_it_back") else {
        return;
    };
    let pool = pool();
    let opts = ApplyOptions::default();
    assert_converged(&converge(&pool, &desired(&h, vec![web(&h, "web", "1", 18081)]), &opts).await);
    let v1 = record(&h, "web").unwrap();

    let r = converge(&pool, &desired(&h, vec![web(&h, "web", "2", 18081)]), &opts).await;
    assert_converged(&r);
    assert_eq!(r.actions[0].action.kind, ActionKind::Upgrade);
    let v2 = record(&h, "web").unwrap();
    assert_ne!(v2.release, v1.release);
    assert_ne!(v2.pid, v1.pid, "restarted");
    assert_unit_runs(&h, "web", &v2);
    assert_eq!(get(&h, 18081, "/health").as_deref(), Some("web 2\n"));
    let file = h
        .exec_ok("cat /etc/systemd/system/tend-web.service")
        .unwrap();
    assert!(
        file.contains(&v2.release) && !file.contains(&v1.release),
        "{file}"
    );

    // Version 3 exits at once: systemd restarts it in vain, the health gate
    // fails, tend rolls back to 2.
    let mut bad = web(&h, "web", "3", 18081);
    bad.command = vec!["sh".into(), "-c".into(), "echo broken >&2; exit 3".into()];
    bad.health = http_health(18081, 4);
    let r = converge(&pool, &desired(&h, vec![bad]), &opts).await;
    match &r.actions[0].outcome {
        ActionOutcome::RolledBack(m) => {
            assert!(m.contains("rolled back to 2"), "{m}");
            // The journal's tail is the failed action's output.
            let out = r.actions[0].output.join("\n");
            assert!(out.contains("web's last log lines"), "{out}");
            assert!(out.contains("broken"), "{out}");
        }
        o => panic!(
            "expected a rollback, got {o:?}\n{}\n{}",
            r.actions[0].output.join("\n"),
            h.journal(&unit("web"))
        ),
    }
    let back = record(&h, "web").unwrap();
    assert_eq!(back.version, "2");
    assert_eq!(back.release, v2.release);
    assert_eq!(back.failed_version.as_deref(), Some("3"));
    assert_unit_runs(&h, "web", &back);
    assert_eq!(get(&h, 18081, "/health").as_deref(), Some("web 2\n"));
    let file = h
        .exec_ok("cat /etc/systemd/system/tend-web.service")
        .unwrap();
    assert!(file.contains(&v2.release), "{file}");
}

#[tokio::test(flavor = "multi_thread")]
async fn after_systemd_restarts_a_killed_service_the_next_plan_is_empty_and_the_record_names_the_new_pid(
) {
    let Some(h) = host("after_systemd_restarts_a_killed_service_the_next_plan_is_empty") else {
        return;
    };
    let pool = pool();
    let opts = ApplyOptions::default();
    let d = desired(&h, vec![web(&h, "web", "1", 18082)]);
    assert_converged(&converge(&pool, &d, &opts).await);
    let before = record(&h, "web").unwrap();
    let old = before.pid.unwrap();

    h.exec_ok(&format!("kill -9 {old}")).unwrap();
    // systemd's Restart=on-failure brings it back with a new main pid.
    let new = wait_for(
        "systemd restarting the unit",
        Duration::from_secs(20),
        || {
            let u = show(&h, "web");
            let pid: u32 = u["MainPID"].parse().ok()?;
            (u["ActiveState"] == "active" && pid != 0 && pid != old).then_some(pid)
        },
    );
    assert_eq!(show(&h, "web")["NRestarts"], "1");
    wait_for(
        "the restarted service answering",
        Duration::from_secs(20),
        || get(&h, 18082, "/health"),
    );

    let r = converge(&pool, &d, &opts).await;
    assert_converged(&r);
    assert!(r.plan.actions.is_empty(), "plan: {:?}", r.plan.actions);
    let after = record(&h, "web").unwrap();
    assert_eq!(after.release, before.release);
    assert_eq!(
        after.pid,
        Some(new),
        "the record names systemd's new main pid"
    );
    assert_unit_runs(&h, "web", &after);

    // tend's own restart starts the count again: a deploy without a health
    // gate, judged by the unit's state alone, succeeds.
    let mut v2 = web(&h, "web", "2", 18082);
    v2.health = None;
    let r = converge(&pool, &desired(&h, vec![v2]), &opts).await;
    assert_eq!(
        r.actions[0].outcome,
        ActionOutcome::Succeeded,
        "{:?}",
        r.actions
    );
    assert_eq!(show(&h, "web")["NRestarts"], "0");
    assert_unit_runs(&h, "web", &record(&h, "web").unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_systemd_service_allocating_past_memory_max_is_oom_killed_and_reported() {
    let Some(h) = host("a_systemd_service_allocating_past_memory_max_is_oom_killed") else {
        return;
    };
    let mut hog = web(&h, "hog", "1", 18083);
    hog.delivery = tend::model::Delivery::None;
    hog.command = [
        "python3",
        "-c",
        "import time\ntime.sleep(0.3)\nb = b'x' * (256 << 20)\ntime.sleep(600)",
    ]
    .map(String::from)
    .to_vec();
    hog.env.clear();
    hog.health = Some(Health {
        check: HealthCheck::Tcp { port: 18083 },
        interval: Duration::from_millis(500),
        timeout: Duration::from_secs(1),
        retries: 6,
    });
    let d = desired(&h, vec![hog]);
    let pool = pool();
    let r = converge(&pool, &d, &ApplyOptions::default()).await;
    let a = &r.actions[0];
    assert!(
        a.oom_killed,
        "apply did not see the OOM kill: {a:#?}\n{}",
        h.journal(&unit("hog"))
    );
    match &a.outcome {
        ActionOutcome::Failed(m) => assert!(m.contains("OOM"), "{m}"),
        o => panic!("expected a failure, got {o:?}"),
    }
    assert_eq!(show(&h, "hog")["MemoryMax"], (64 * MIB).to_string());
    let j = h.journal(&unit("hog"));
    assert!(j.contains("status=9/KILL"), "{j}");

    // systemd restarts it, and the kernel kills it again: each kill is added
    // to the record by the unit's ExecStopPost (systemd removes the cgroup,
    // and the kernel's counter with it, as soon as the service stops; on
    // cgroup v1 systemd itself only sees a SIGKILL).
    let kills = wait_for(
        "a second OOM kill recorded",
        Duration::from_secs(30),
        || {
            let rec = h.exec_ok(&format!("cat {ROOT}/records/hog.rec")).ok()?;
            let n: u64 = rec
                .lines()
                .find_map(|l| l.strip_prefix("oom_kills="))?
                .parse()
                .ok()?;
            (n >= 2).then_some(n)
        },
    );
    assert!(show(&h, "hog")["NRestarts"].parse::<u64>().unwrap() >= kills - 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_stops_disables_and_removes_the_unit() {
    let Some(h) = host("prune_stops_disables_and_removes_the_unit") else {
        return;
    };
    let pool = pool();
    let d = desired(
        &h,
        vec![web(&h, "web", "1", 18084), web(&h, "keep", "1", 18085)],
    );
    assert_converged(&converge(&pool, &d, &ApplyOptions::default()).await);
    let pid = record(&h, "web").unwrap().pid.unwrap();
    let wants = "/etc/systemd/system/multi-user.target.wants/tend-web.service";
    h.exec_ok(&format!("test -L {wants}")).unwrap();

    let opts = ApplyOptions {
        prune: true,
        ..ApplyOptions::default()
    };
    let r = converge(
        &pool,
        &desired(&h, vec![web(&h, "keep", "1", 18085)]),
        &opts,
    )
    .await;
    assert_converged(&r);
    assert_eq!(r.actions.len(), 1, "{:?}", r.actions);
    assert_eq!(r.actions[0].action.kind, ActionKind::Prune);
    let u = show(&h, "web");
    assert_eq!(u["LoadState"], "not-found", "{u:?}");
    assert_eq!(u["ActiveState"], "inactive", "{u:?}");
    let gone = h
        .exec(&format!(
            "test -e /etc/systemd/system/tend-web.service || test -L {wants} || kill -0 {pid}"
        ))
        .unwrap();
    assert!(
        !gone.status.success(),
        "unit file, wants link or process left"
    );
    assert!(record(&h, "web").is_none());
    assert_eq!(get(&h, 18084, "/health"), None);
    let ls = h
        .exec_ok(&format!("ls {ROOT}/releases {ROOT}/env"))
        .unwrap();
    assert!(!ls.contains("web"), "{ls}");
    // The other one is untouched.
    assert_eq!(get(&h, 18085, "/health").as_deref(), Some("keep 1\n"));
}
