//! One host, things going wrong on it, and nothing lost: an unreadable
//! record, a dead controller's lease (whatever it called itself), a lease an
//! operator breaks, a full disk at lock time, a host lost mid-apply. In each
//! the host's other services converge in the same run.

use super::apply::{converge, desired, httpd, pool, ROOT};
use super::common::checks::assert_intact;
use super::common::{fast_opts, fast_pool, fleet};
use std::sync::Arc;
use tend::apply::{self, ActionOutcome, ApplyOptions, Event};
use tend::plan::DriftReason;

fn kill_service(h: &tend_e2e::testbed::TestHost, root: &str, svc: &str) {
    h.exec_ok(&format!(
        "kill -9 $(sed -n 's/^pid=//p' {root}/records/{svc}.rec)"
    ))
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_record_is_its_services_problem_and_the_hosts_other_service_is_repaired() {
    let Some(f) = fleet("an_unreadable_record_is_its_services_problem", 1) else {
        return;
    };
    let h = f.host(0);
    let d = desired(
        &f,
        vec![
            httpd("rb", &h.name, 19711, "1", "rb\n"),
            httpd("rg", &h.name, 19712, "1", "rg\n"),
        ],
    );
    let pool = pool();
    let opts = ApplyOptions::default();
    assert!(converge(&pool, &d, &opts).await.converged());
    // A truncated record for rb, and rg killed.
    h.exec_ok(&format!(
        "head -c 20 {ROOT}/records/rb.rec > /tmp/rb && mv /tmp/rb {ROOT}/records/rb.rec"
    ))
    .unwrap();
    kill_service(h, ROOT, "rg");

    let r = converge(&pool, &d, &opts).await;
    assert!(r.plan.unreachable.is_empty(), "{:#?}", r.plan.unreachable);
    let rb = r.plan.services.iter().find(|s| s.service == "rb").unwrap();
    assert_eq!(rb.reasons, vec![DriftReason::Record], "{rb:?}");
    let why = rb.blocked.as_deref().unwrap_or("");
    assert!(why.contains("rb.rec"), "{why}");
    assert!(
        !why.contains("held by"),
        "tend's own process is no stranger: {why}"
    );
    let acts: Vec<_> = r
        .actions
        .iter()
        .map(|a| (a.action.service.as_str(), a.outcome.as_str()))
        .collect();
    assert_eq!(acts, vec![("rg", "succeeded")], "{:#?}", r.actions);
    assert_eq!(
        super::apply::get(h, 19712, "/health").as_deref(),
        Some("rg\n")
    );
    // The old rb still serves: nothing was done to it.
    assert_eq!(
        super::apply::get(h, 19711, "/health").as_deref(),
        Some("rb\n")
    );
}

/// Writes a lease on the host as `owner` holds it, valid for 15 minutes.
fn plant_lease(h: &tend_e2e::testbed::TestHost, owner: &str, token: &str) {
    h.exec_ok(&format!(
        "mkdir -p {ROOT} && echo '{owner}' > {ROOT}/lock.owner && echo \"{token} $(( $(date +%s) + 900 ))\" > {ROOT}/lock.lease"
    ))
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_tend_run_lease_on_this_machine_is_taken_over_by_tend_apply_at_once() {
    let Some(f) = fleet("a_dead_tend_run_lease_is_taken_over", 1) else {
        return;
    };
    let h = f.host(0);
    let d = desired(&f, vec![httpd("dl", &h.name, 19721, "1", "dl\n")]);
    let pool = pool();
    // What a `tend run` killed mid-reconcile leaves: its own name, this
    // machine, a pid that is gone.
    let me = apply::lock::Owner::me(None);
    let owner = format!(
        "controller=tend@{m} machine={m} boot={b} pid=999999999 since=1 token=run:999999999:1",
        m = me.machine,
        b = me.boot
    );
    plant_lease(h, &owner, "run:999999999:1");
    let opts = ApplyOptions::default();
    let r = converge(&pool, &d, &opts).await;
    assert!(r.locked.is_empty(), "{:#?}", r.locked);
    assert!(r.converged(), "{:#?}", r.actions);
    assert_intact(h, ROOT, "dl", 19721, "1", "dl\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_foreign_lease_blocks_until_an_operator_breaks_it_by_name_and_the_output_says_so() {
    let Some(f) = fleet("a_live_foreign_lease_blocks_until_broken", 1) else {
        return;
    };
    let h = f.host(0);
    let d = desired(&f, vec![httpd("bl", &h.name, 19731, "1", "bl\n")]);
    let pool = pool();
    plant_lease(
        h,
        "controller=ci-runner machine=elsewhere boot=x pid=1 since=1 token=ci:1:1",
        "ci:1:1",
    );
    let r = converge(&pool, &d, &ApplyOptions::default()).await;
    assert!(
        r.locked
            .get(&h.name)
            .is_some_and(|w| w.contains("ci-runner")),
        "{:#?}",
        r.locked
    );
    assert!(r.actions.is_empty());

    let opts = ApplyOptions {
        break_lock: Some("ci-runner".into()),
        ..ApplyOptions::default()
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let r = apply::converge(&d, &pool, &opts, Some(tx)).await;
    assert!(r.converged(), "{:#?}", r);
    let mut broken = None;
    while let Ok(e) = rx.try_recv() {
        if let Event::HostLockBroken { holder, .. } = e {
            broken = Some(holder);
        }
    }
    assert!(
        broken.is_some_and(|b| b.contains("ci-runner")),
        "the break is recorded"
    );
    assert_intact(h, ROOT, "bl", 19731, "1", "bl\n");
}

const SMALL: &str = "/srv/tend-tiny";

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_at_lock_time_is_named_with_the_free_space_and_the_next_run_converges() {
    let Some(f) = fleet("a_full_disk_at_lock_time_is_named", 1) else {
        return;
    };
    let h = f.host(0);
    h.exec_ok(&format!(
        "mkdir -p {SMALL} && mount -t tmpfs -o size=1m tmpfs {SMALL}"
    ))
    .unwrap();
    let mut d = desired(&f, vec![httpd("fd", &h.name, 19741, "1", "fd\n")]);
    if let Some(host) = d.hosts.get_mut(&h.name) {
        host.root = SMALL.into();
    }
    // Room for the directories, none for the lease.
    h.exec_ok(&format!(
        "mkdir -p {SMALL}/records {SMALL}/releases {SMALL}/env {SMALL}/logs && : > {SMALL}/lock && dd if=/dev/zero of={SMALL}/filler bs=1k 2>/dev/null; true"
    ))
    .unwrap();
    let pool = pool();
    let opts = ApplyOptions::default();
    let r = converge(&pool, &d, &opts).await;
    let why = r.locked.get(&h.name).cloned().unwrap_or_default();
    assert!(
        why.contains(&format!("No space left on device under {SMALL} ("))
            && why.contains("KiB free)"),
        "{:#?}",
        r.locked
    );
    h.exec_ok(&format!("rm -f {SMALL}/filler")).unwrap();
    let r = converge(&pool, &d, &opts).await;
    assert!(r.converged(), "{:#?}", r.actions);
    assert_intact(h, SMALL, "fd", 19741, "1", "fd\n");
    h.exec_ok(&format!(
        "kill $(sed -n 's/^pid=//p' {SMALL}/records/fd.rec); sleep 0.3; umount -l {SMALL}; true"
    ))
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_lost_mid_apply_fails_its_waiting_actions_at_once_and_the_next_run_converges() {
    let Some(f) = fleet("a_host_lost_mid_apply_fails_its_waiting_actions", 1) else {
        return;
    };
    let h = f.host(0);
    // Every install marks that it runs, then takes a while: whichever runs
    // first is cut off, the three others wait for their turn behind it.
    let all: Vec<_> = (0..4)
        .map(|i| {
            let mut s = httpd(&format!("l{i}"), &h.name, 19751 + i, "1", "x\n");
            s.install = vec!["touch /srv/l-started; sleep 5".into()];
            s
        })
        .collect();
    let started = h.path("/srv/l-started");
    let d = Arc::new(desired(&f, all));
    let pool = Arc::new(fast_pool());
    let task = {
        let (pool, d) = (pool.clone(), d.clone());
        tokio::spawn(async move { apply::converge(&d, pool.as_ref(), &fast_opts(), None).await })
    };
    super::common::wait_for_file(&started, "an install never started").await;
    h.link_down().unwrap();
    let r = task.await.unwrap();
    h.link_up().unwrap();
    let failed: Vec<String> = r
        .actions
        .iter()
        .filter_map(|a| match &a.outcome {
            ActionOutcome::Failed(m) => Some(m.clone()),
            _ => None,
        })
        .collect();
    let lost_at_once = failed
        .iter()
        .filter(|m| m.contains("the host was lost"))
        .count();
    // The one that ran fails on the transport; the three waiting for their
    // turn fail without trying, not each after its own timeout.
    assert_eq!(failed.len(), 4, "{failed:#?}");
    assert_eq!(lost_at_once, 3, "{failed:#?}");
    let r = apply::converge(&d, pool.as_ref(), &fast_opts(), None).await;
    assert!(r.converged(), "{:#?}", r.actions);
}
