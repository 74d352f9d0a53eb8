//! Fault: the disk fills during an upgrade. tend's root on the host is a
//! 2 MiB tmpfs, nearly full when the upgrade ships a 1 MiB file. The running
//! release keeps serving, the failure is reported, and once space is freed
//! the next run upgrades cleanly.

use super::apply::{get, httpd, source};
use super::common::checks::{all_records, assert_intact};
use super::common::fleet;
use super::common::{fast_opts, fast_pool};
use tend::apply::{self, ActionOutcome};
use tend::model::{Desired, Service};
use tend_e2e::testbed::Fleet;

const FULL_ROOT: &str = "/srv/tend-small";

fn desired_on_small_root(f: &Fleet, s: Service) -> Desired {
    let mut host = f.host(0).tend_host();
    host.root = FULL_ROOT.into();
    Desired {
        hosts: [(host.name.clone(), host)].into_iter().collect(),
        services: [(s.name.clone(), s)].into_iter().collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_full_during_an_upgrade_keeps_the_running_release_and_reports_the_failure() {
    let Some(f) = fleet("a_disk_full_during_an_upgrade", 1) else {
        return;
    };
    let h = f.host(0);
    h.exec_ok(&format!(
        "mkdir -p {FULL_ROOT} && mount -t tmpfs -o size=2m tmpfs {FULL_ROOT}"
    ))
    .unwrap();
    let pool = fast_pool();
    let v1 = httpd("df", &h.name, 19601, "1", "df 1\n");
    let r = apply::converge(&desired_on_small_root(&f, v1), &pool, &fast_opts(), None).await;
    assert!(r.converged(), "{:#?}", r.actions);

    // Leave ~256 KiB free; version 2 ships 1 MiB.
    h.exec_ok(&format!(
        "free=$(df -k {FULL_ROOT} | awk 'NR==2 {{print $4}}'); dd if=/dev/zero of={FULL_ROOT}/filler bs=1k count=$((free - 256)) 2>/dev/null"
    ))
    .unwrap();
    let blob = "x".repeat(1 << 20);
    let mut v2 = httpd("df", &h.name, 19601, "2", "df 2\n");
    v2.delivery = source(&[("www/health", "df 2\n", false), ("www/blob", &blob, false)]);
    let r = apply::converge(
        &desired_on_small_root(&f, v2.clone()),
        &pool,
        &fast_opts(),
        None,
    )
    .await;
    assert!(!r.converged());
    let a = r
        .actions
        .iter()
        .find(|a| a.action.service == "df")
        .expect("the upgrade was tried");
    let ActionOutcome::Failed(m) = &a.outcome else {
        panic!("expected a failure, got {:?}", a.outcome)
    };
    let said = format!("{m}\n{}", a.output.join("\n"));
    assert_eq!(
        get(h, 19601, "/health").as_deref(),
        Some("df 1\n"),
        "the running release stopped"
    );
    assert_eq!(all_records(h, FULL_ROOT)["df"].version, "1");

    // Space freed: the next run upgrades, nothing of the failed try is left.
    h.exec_ok(&format!("rm -f {FULL_ROOT}/filler")).unwrap();
    let r = apply::converge(&desired_on_small_root(&f, v2), &pool, &fast_opts(), None).await;
    assert!(
        r.converged(),
        "after freeing space: {:#?} locked: {:?}",
        r.actions,
        r.locked
    );
    assert_intact(h, FULL_ROOT, "df", 19601, "2", "df 2\n");
    // Last, as it is about the words only: the report says why it failed.
    assert!(
        said.contains("No space left on device"),
        "the report does not say why: {said}"
    );
}
