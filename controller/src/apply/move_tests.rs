//! A service moving between hosts, with a dependent, converges in one run:
//! real processes on two local hosts (two roots), real scripts.

use super::{converge, ActionOutcome, ApplyOptions};
use crate::model::{Address, Delivery, Desired, Host, Service};
use crate::plan::ActionKind;
use crate::record::RuntimeKind;
use crate::transport::pool::{Pool, PoolOptions};
use std::collections::BTreeMap;

fn host(name: &str, root: &std::path::Path) -> Host {
    Host {
        name: name.into(),
        labels: BTreeMap::new(),
        address: Address::Local,
        root: root.join(name).display().to_string(),
        capacity: None,
        reserved: 0,
    }
}

fn svc(name: &str, host: &str, deps: &[&str]) -> Service {
    Service {
        name: name.into(),
        labels: BTreeMap::new(),
        hosts: vec![host.into()],
        rollout: Default::default(),
        runtime: RuntimeKind::Process,
        version: "1".into(),
        delivery: Delivery::None,
        install: Vec::new(),
        command: vec!["sleep".into(), "1000".into()],
        env: BTreeMap::new(),
        ports: Vec::new(),
        memory: None,
        health: None,
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        suspend: false,
    }
}

/// Kills what the records under `root` name when the test ends, pass or fail.
struct Reaper(std::path::PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = std::process::Command::new("sh")
            .arg("-c")
            .arg("for f in \"$1\"/*/records/*.rec; do p=$(sed -n 's/^pid=//p' \"$f\"); [ -n \"$p\" ] && kill \"$p\"; done; true")
            .arg("sh")
            .arg(&self.0)
            .status();
    }
}

fn fleet(dir: &std::path::Path, services: Vec<Service>) -> Desired {
    Desired {
        hosts: ["a", "b"]
            .iter()
            .map(|h| (h.to_string(), host(h, dir)))
            .collect(),
        services: services.into_iter().map(|s| (s.name.clone(), s)).collect(),
    }
}

async fn moved_with_a_dependent(prune: bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let _reaper = Reaper(dir.path().to_path_buf());
    let pool = Pool::new(PoolOptions::default());
    let opts = ApplyOptions {
        prune,
        max_prune_share: 1.0,
        ..ApplyOptions::default()
    };
    let before = fleet(
        dir.path(),
        vec![svc("db", "a", &[]), svc("api", "a", &["db"])],
    );
    let first = converge(&before, &pool, &opts, None).await;
    assert!(first.converged(), "{first:#?}");

    // db moves to b; api, which needs it, changes in the same commit.
    let mut api = svc("api", "a", &["db"]);
    api.version = "2".into();
    let after = fleet(dir.path(), vec![svc("db", "b", &[]), api]);
    let r = converge(&after, &pool, &opts, None).await;
    let got: Vec<(ActionKind, String, String, &str)> = r
        .actions
        .iter()
        .map(|a| {
            (
                a.action.kind,
                a.action.service.clone(),
                a.action.host.clone(),
                a.outcome.as_str(),
            )
        })
        .collect();
    let pruned = if prune { "succeeded" } else { "skipped" };
    assert_eq!(
        got,
        vec![
            (ActionKind::Start, "db".into(), "b".into(), "succeeded"),
            (ActionKind::Upgrade, "api".into(), "a".into(), "succeeded"),
            (ActionKind::Prune, "db".into(), "a".into(), pruned),
        ],
        "{r:#?}"
    );
    assert!(r.converged(), "{r:#?}");
    assert!(r
        .actions
        .iter()
        .all(|a| !matches!(&a.outcome, ActionOutcome::Skipped(m) if m.contains("dependency"))));

    // And the next run has nothing to do for api (with pruning off the old
    // copy stays, reported, and still blocks nothing).
    let again = converge(&after, &pool, &opts, None).await;
    let left: Vec<(ActionKind, &str)> = again
        .actions
        .iter()
        .map(|a| (a.action.kind, a.action.service.as_str()))
        .collect();
    let expect: Vec<(ActionKind, &str)> = if prune {
        vec![]
    } else {
        vec![(ActionKind::Prune, "db")]
    };
    assert_eq!(left, expect, "{again:#?}");
}

#[tokio::test]
async fn a_service_moved_to_another_host_with_pruning_on_converges_in_one_run_and_its_dependent_is_not_skipped(
) {
    moved_with_a_dependent(true).await;
}

#[tokio::test]
async fn a_service_moved_to_another_host_with_pruning_off_converges_in_one_run_and_its_dependent_is_not_skipped(
) {
    moved_with_a_dependent(false).await;
}
