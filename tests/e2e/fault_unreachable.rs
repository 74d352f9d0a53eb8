//! Fault: a host cannot be reached — before an apply (link down), cut off in
//! the middle of one (link down), or its sshd killed in the middle of an
//! action. The other hosts converge; the cut-off host converges on the run
//! after it is back, with nothing half-installed and its records intact.

use super::apply::{desired, httpd, ROOT};
use super::common::checks::assert_intact;
use super::common::fleet;
use super::common::{fast_opts, fast_pool};
use std::sync::Arc;
use tend::apply::{self, ActionOutcome, Event};
use tend::model::Desired;
use tend::transport::pool::Pool;
use tend_e2e::testbed::{Fleet, TestHost};

/// One httpd per host; the one on host1 installs slowly (`sleep 3`), so a
/// fault can land while its script runs.
fn one_per_host(f: &Fleet, base: u16) -> (Desired, Vec<(usize, String, u16)>) {
    let mut svcs = Vec::new();
    let mut want = Vec::new();
    for (i, h) in f.hosts().iter().enumerate() {
        let name = format!("u{i}");
        let port = base + i as u16;
        let mut s = httpd(&name, &h.name, port, "1", &format!("{name}\n"));
        if i == 1 {
            s.install = vec!["sleep 3".into()];
        }
        svcs.push(s);
        want.push((i, name, port));
    }
    (desired(f, svcs), want)
}

/// Converge, running `fault` once host1's action has started.
async fn converge_with_fault(
    pool: Arc<Pool>,
    d: Arc<Desired>,
    victim: String,
    fault: impl FnOnce(),
) -> apply::ApplyReport {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let task = {
        let (pool, d) = (pool.clone(), d.clone());
        tokio::spawn(
            async move { apply::converge(&d, pool.as_ref(), &fast_opts(), Some(tx)).await },
        )
    };
    let mut fault = Some(fault);
    while let Some(e) = rx.recv().await {
        if let Event::ActionStarted { host, .. } = &e {
            if *host == victim {
                if let Some(f) = fault.take() {
                    // Into the install step's `sleep 3`: the script is on the host.
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    f();
                }
            }
        }
    }
    assert!(fault.is_none(), "the action on {victim} never started");
    task.await.expect("converge task")
}

fn assert_all_intact(f: &Fleet, want: &[(usize, String, u16)]) {
    for (i, name, port) in want {
        assert_intact(f.host(*i), ROOT, name, *port, "1", &format!("{name}\n"));
    }
}

fn others_succeeded(r: &apply::ApplyReport, victim: &TestHost) {
    for a in &r.actions {
        if a.action.host != victim.name {
            assert_eq!(
                a.outcome,
                ActionOutcome::Succeeded,
                "{}: {:?}",
                a.action.service,
                a.output
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_unreachable_before_an_apply_is_skipped_and_converges_once_it_is_back() {
    let Some(f) = fleet("a_host_unreachable_before_an_apply_is_skipped", 3) else {
        return;
    };
    let (d, want) = one_per_host(&f, 19201);
    let pool = fast_pool();
    let down = f.host(2);
    down.link_down().unwrap();

    let r = apply::converge(&d, &pool, &fast_opts(), None).await;
    assert!(!r.converged());
    assert!(
        r.plan.unreachable.contains_key(&down.name),
        "{:?}",
        r.plan.unreachable
    );
    assert!(
        r.actions.iter().all(|a| a.action.host != down.name),
        "{:#?}",
        r.actions
    );
    others_succeeded(&r, down);
    assert_eq!(r.actions.len(), 2);

    down.link_up().unwrap();
    let r = apply::converge(&d, &pool, &fast_opts(), None).await;
    assert!(
        r.converged(),
        "after the link is back: {:#?} {:?}",
        r.actions,
        r.locked
    );
    assert_all_intact(&f, &want);
}

/// Converge with `cut` done to host1 while its action runs: that action
/// fails, the others succeed; after `restore` the next run converges and
/// every host is intact.
async fn cut_mid_action_then_restore(
    name: &str,
    base: u16,
    cut: impl FnOnce(&TestHost),
    restore: impl FnOnce(&TestHost),
) {
    let Some(f) = fleet(name, 3) else {
        return;
    };
    let (d, want) = one_per_host(&f, base);
    let (pool, d) = (Arc::new(fast_pool()), Arc::new(d));
    let victim = f.host(1);

    let r = converge_with_fault(pool.clone(), d.clone(), victim.name.clone(), || cut(victim)).await;
    assert!(!r.converged());
    others_succeeded(&r, victim);
    let hit = r
        .actions
        .iter()
        .find(|a| a.action.host == victim.name)
        .expect("victim's action");
    assert!(
        matches!(hit.outcome, ActionOutcome::Failed(_)),
        "{:?}",
        hit.outcome
    );

    restore(victim);
    let r = apply::converge(&d, pool.as_ref(), &fast_opts(), None).await;
    assert!(
        r.converged(),
        "after the host is back: {:#?} locked: {:?}",
        r.actions,
        r.locked
    );
    assert_all_intact(&f, &want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cut_off_in_the_middle_of_an_apply_converges_on_the_next_run() {
    cut_mid_action_then_restore(
        "a_host_cut_off_in_the_middle_of_an_apply",
        19211,
        |h| h.link_down().unwrap(),
        |h| h.link_up().unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sshd_killed_in_the_middle_of_an_action_converges_on_the_next_run() {
    cut_mid_action_then_restore(
        "sshd_killed_in_the_middle_of_an_action",
        19221,
        |h| h.kill_sshd().unwrap(),
        |h| h.start_sshd().unwrap(),
    )
    .await;
}
