//! The podman runtime for real inside a test host: a container from a
//! busybox rootfs (no image can be pulled here), health-gated, upgraded,
//! removed.

use super::apply::{assert_converged, converge, desired, get, pool, record, service, ROOT};
use super::common::fleet;
use std::time::Duration;
use tend::apply::{ActionOutcome, ApplyOptions};
use tend::model::{Delivery, EnvValue, Health, HealthCheck, Service};
use tend::record::RuntimeKind;
use tend_e2e::testbed::TestHost;

/// A busybox-static rootfs under the host's /srv, and a containers.conf
/// whose ulimits fit this machine (no CAP_SYS_RESOURCE here).
fn prepare(h: &TestHost) -> bool {
    if !std::path::Path::new("/usr/bin/podman").exists() {
        println!("skipped: podman is not installed (apt-get install podman)");
        if std::env::var("TEND_E2E").as_deref() == Ok("required") {
            panic!("podman is required (TEND_E2E=required)");
        }
        return false;
    }
    h.exec_ok(concat!(
        "set -e; r=/srv/rootfs; mkdir -p $r/bin $r/www $r/tmp $r/proc $r/sys $r/dev $r/etc; ",
        "cp /bin/busybox $r/bin/busybox; for a in sh httpd printf cat sleep; do ln -sf busybox $r/bin/$a; done; ",
        "echo ok > $r/www/health; ",
        "mkdir -p /etc/containers; ",
        "printf '[containers]\\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=4096:4096\"]\\n' > /etc/containers/containers.conf"
    ))
    .expect("rootfs");
    true
}

fn container(name: &str, host: &str, port: u16, version: &str) -> Service {
    let mut s = service(
        name,
        host,
        version,
        &[
            "/bin/sh",
            "-c",
            "printf '%s' \"$MSG\" > /www/msg; printf '%s' \"$VERSION\" > /www/version; exec httpd -f -p \"$PORT\" -h /www",
        ],
    );
    s.runtime = RuntimeKind::Podman;
    s.delivery = Delivery::Image {
        image: "rootfs:/srv/rootfs".into(),
    };
    s.ports = vec![port];
    s.memory = Some(32 << 20);
    s.env
        .insert("PORT".into(), EnvValue::literal(port.to_string()));
    s.env.insert("VERSION".into(), EnvValue::literal(version));
    s.env.insert(
        "MSG".into(),
        EnvValue::literal("it's \"quoted\" $HOME `x`\nline 2"),
    );
    s.health = Some(Health {
        check: HealthCheck::Http {
            port,
            path: "/health".into(),
        },
        interval: Duration::from_millis(500),
        timeout: Duration::from_secs(2),
        retries: 20,
    });
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn a_podman_service_runs_from_a_rootfs_upgrades_and_is_pruned() {
    let Some(f) = fleet("a_podman_service_runs_from_a_rootfs", 1) else {
        return;
    };
    let h = f.host(0);
    if !prepare(h) {
        return;
    }
    let pool = pool();
    let d = desired(&f, vec![container("db", &h.name, 18800, "1")]);
    let r = converge(&pool, &d, &ApplyOptions::default()).await;
    assert_converged(&r);
    assert_eq!(get(h, 18800, "/version").as_deref(), Some("1"));
    assert_eq!(
        get(h, 18800, "/msg").as_deref(),
        Some("it's \"quoted\" $HOME `x`\nline 2")
    );
    let rec = record(h, "db").unwrap();
    let pid = rec.pid.expect("pid recorded");
    // The recorded pid is the container's main process, its cgroup from /proc.
    let comm = h.exec_ok(&format!("cat /proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "httpd");
    let cg = rec.cgroup.clone().expect("cgroup recorded");
    let limit = h
        .exec_ok(&format!(
            "cat /sys/fs/cgroup/memory{cg}/memory.limit_in_bytes"
        ))
        .unwrap();
    assert_eq!(limit.trim(), (32u64 << 20).to_string());
    let labels = h
        .exec_ok("podman inspect --format '{{index .Config.Labels \"tend.service\"}} {{index .Config.Labels \"tend.version\"}}' tend-db")
        .unwrap();
    assert_eq!(labels.trim(), "db 1");

    // Idempotent, then an upgrade replaces the container.
    let again = converge(&pool, &d, &ApplyOptions::default()).await;
    assert!(again.plan.actions.is_empty(), "{:?}", again.plan.actions);
    let d2 = desired(&f, vec![container("db", &h.name, 18800, "2")]);
    let r = converge(&pool, &d2, &ApplyOptions::default()).await;
    assert_converged(&r);
    assert_eq!(get(h, 18800, "/version").as_deref(), Some("2"));
    let running = h
        .exec_ok("podman ps -q --filter label=tend.service=db | wc -l")
        .unwrap();
    assert_eq!(running.trim(), "1");

    // Pruned (forced: it is the only service): container and files gone.
    let empty = desired(&f, vec![]);
    let opts = ApplyOptions {
        prune: true,
        force_prune: true,
        ..ApplyOptions::default()
    };
    let r = converge(&pool, &empty, &opts).await;
    assert!(
        matches!(r.actions[0].outcome, ActionOutcome::Succeeded),
        "{:?}",
        r.actions
    );
    let left = h
        .exec_ok("podman ps -a -q --filter name=tend-db | wc -l")
        .unwrap();
    assert_eq!(left.trim(), "0");
    assert!(record(h, "db").is_none());
    let ls = h.exec_ok(&format!("ls {ROOT}/releases")).unwrap();
    assert!(ls.trim().is_empty(), "{ls}");
}

/// What podman-restart.service would start at the next boot under this name:
/// `always` containers, running or not (`podman start --all --filter
/// restart-policy=always`, narrowed to one name so no other test's container
/// on this machine is touched).
fn started_at_boot(h: &TestHost, name: &str) -> String {
    h.exec_ok(&format!(
        "podman ps -a --format '{{{{.Names}}}}' --filter restart-policy=always --filter name='^{name}$'"
    ))
    .expect("podman ps")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_podman_service_moved_to_the_process_runtime_leaves_no_container_to_come_back_at_boot() {
    let Some(f) = fleet("a_podman_service_moved_to_the_process", 1) else {
        return;
    };
    let h = f.host(0);
    if !prepare(h) {
        return;
    }
    let pool = pool();
    let d = desired(&f, vec![container("moved", &h.name, 18810, "1")]);
    assert_converged(&converge(&pool, &d, &ApplyOptions::default()).await);
    assert_eq!(started_at_boot(h, "tend-moved").trim(), "tend-moved");

    // Same name and port, now a process: tend stops the container, and the
    // stop removes it, so no boot brings it back beside the process.
    let d2 = desired(
        &f,
        vec![super::apply::httpd("moved", &h.name, 18810, "2", "2\n")],
    );
    assert_converged(&converge(&pool, &d2, &ApplyOptions::default()).await);
    assert_eq!(started_at_boot(h, "tend-moved").trim(), "");
    assert_eq!(get(h, 18810, "/health").as_deref(), Some("2\n"));
    let rec = record(h, "moved").expect("record");
    assert_eq!(rec.runtime, Some(RuntimeKind::Process));
    let again = converge(&pool, &d2, &ApplyOptions::default()).await;
    assert!(again.plan.actions.is_empty(), "{:?}", again.plan.actions);
}
