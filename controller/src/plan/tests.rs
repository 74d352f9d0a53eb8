//! The drift and ordering rules, case by case, then properties over random
//! fleets, failures and moves: long the way a table of cases is.

use super::*;
use crate::instance::InstanceId;
use crate::model::{
    Address, CgroupMode, Delivery, Desired, Host, HostFacts, HostState, Listener, Observation,
    ObservedService, Service,
};
use crate::record::{Record, RuntimeKind};
use proptest::prelude::*;
use std::collections::BTreeMap;

pub(super) const MIB: u64 = 1 << 20;

pub(super) fn host(name: &str) -> Host {
    Host {
        name: name.into(),
        labels: BTreeMap::new(),
        address: Address::Local,
        root: "/var/lib/tend".into(),
        capacity: Some(4096 * MIB),
        reserved: 1024 * MIB,
    }
}

pub(super) fn svc(name: &str, host: &str) -> Service {
    Service {
        name: name.into(),
        labels: BTreeMap::new(),
        hosts: vec![host.into()],
        rollout: Default::default(),
        runtime: RuntimeKind::Process,
        version: "1.0".into(),
        delivery: Delivery::None,
        install: Vec::new(),
        command: vec!["sleep".into(), "1000".into()],
        env: BTreeMap::new(),
        ports: Vec::new(),
        memory: Some(64 * MIB),
        health: None,
        depends_on: Vec::new(),
        suspend: false,
    }
}

pub(super) fn fleet(hosts: &[&str], services: Vec<Service>) -> Desired {
    Desired {
        hosts: hosts.iter().map(|h| (h.to_string(), host(h))).collect(),
        services: services.into_iter().map(|s| (s.name.clone(), s)).collect(),
    }
}

pub(super) fn record_of(s: &Service, pid: u32) -> Record {
    Record {
        name: s.name.clone(),
        version: s.version.clone(),
        config_hash: s.config_hash(),
        runtime: Some(s.runtime),
        release: format!("{}-x", s.version),
        pid: Some(pid),
        start_time: Some(100),
        boot_id: Some("boot".into()),
        cgroup: Some(format!("/tend/{}", s.name)),
        ports: s.ports.clone(),
        memory_limit: s.memory,
        ..Record::default()
    }
}

/// What the hosts would show if everything in `d` ran as declared.
pub(super) fn converged(d: &Desired) -> BTreeMap<String, Observation> {
    let mut out = BTreeMap::new();
    let mut pid = 1000;
    for h in d.hosts.keys() {
        let mut st = HostState {
            facts: HostFacts {
                hostname: h.clone(),
                mem_total: 4096 * MIB,
                mem_available: 2048 * MIB,
                cgroup: CgroupMode::V1,
                boot_id: "boot".into(),
            },
            ..HostState::default()
        };
        for s in d.services_on(h) {
            pid += 1;
            st.services.insert(
                s.name.clone(),
                ObservedService {
                    record: record_of(s, pid),
                    running: true,
                    memory_usage: Some(MIB),
                    // The kernel rounds down to pages.
                    memory_limit: s.memory.map(|m| m - m % 4096),
                    oom_killed: false,
                    oom_kills: 0,
                    healthy: s.health.as_ref().map(|_| true),
                },
            );
            for p in &s.ports {
                st.listeners.insert(
                    *p,
                    Listener {
                        pid: Some(pid),
                        service: Some(s.name.clone()),
                        comm: Some("app".into()),
                    },
                );
            }
        }
        out.insert(h.clone(), Observation::Reachable(st));
    }
    out
}

pub(super) fn state<'a>(o: &'a mut BTreeMap<String, Observation>, h: &str) -> &'a mut HostState {
    match o.get_mut(h) {
        Some(Observation::Reachable(st)) => st,
        _ => panic!("{h} is not reachable"),
    }
}

pub(super) fn sp<'a>(p: &'a Plan, name: &str) -> &'a ServicePlan {
    p.services
        .iter()
        .find(|s| s.service == name)
        .unwrap_or_else(|| panic!("no plan for {name}"))
}

pub(super) fn kinds(p: &Plan) -> Vec<(ActionKind, &str)> {
    p.actions
        .iter()
        .map(|a| (a.kind, a.service.as_str()))
        .collect()
}

fn empty_hosts(d: &Desired) -> BTreeMap<String, Observation> {
    d.hosts
        .keys()
        .map(|h| {
            let st = HostState {
                facts: HostFacts {
                    cgroup: CgroupMode::V1,
                    boot_id: "boot".into(),
                    ..HostFacts::default()
                },
                ..HostState::default()
            };
            (h.clone(), Observation::Reachable(st))
        })
        .collect()
}

#[test]
fn empty_hosts_plan_missing_and_a_start_for_every_service() {
    let d = fleet(&["a", "b"], vec![svc("x", "a"), svc("y", "b")]);
    let p = plan(&d, &empty_hosts(&d));
    assert_eq!(
        kinds(&p),
        vec![(ActionKind::Start, "x"), (ActionKind::Start, "y")]
    );
    for s in &p.services {
        assert_eq!(s.reasons, vec![DriftReason::Missing]);
        assert_eq!(s.status, Status::Drifted);
        assert_eq!(s.observed_version, None);
    }
    assert!(!p.in_sync());
}

#[test]
fn a_converged_fleet_plans_nothing() {
    let mut web = svc("web", "a");
    web.ports = vec![8100];
    let d = fleet(&["a", "b"], vec![web, svc("db", "b")]);
    let p = plan(&d, &converged(&d));
    assert!(p.in_sync(), "{p:#?}");
    assert!(p.services.iter().all(|s| s.status == Status::InSync));
}

#[test]
fn a_dead_process_plans_stopped_and_a_start() {
    let d = fleet(&["a"], vec![svc("x", "a")]);
    let mut o = converged(&d);
    if let Some(s) = state(&mut o, "a").services.get_mut("x") {
        s.running = false;
    }
    let p = plan(&d, &o);
    assert_eq!(sp(&p, "x").reasons, vec![DriftReason::Stopped]);
    assert_eq!(kinds(&p), vec![(ActionKind::Start, "x")]);
    assert_eq!(p.actions[0].reasons, vec![DriftReason::Stopped]);
}

#[test]
fn an_oom_killed_service_plans_oom_killed_with_its_count() {
    let d = fleet(&["a"], vec![svc("x", "a"), svc("y", "a")]);
    let mut o = converged(&d);
    let st = state(&mut o, "a");
    // x died of it; y was restarted by its supervisor and runs again.
    for (name, running, n) in [("x", false, 1), ("y", true, 3)] {
        if let Some(s) = st.services.get_mut(name) {
            s.running = running;
            s.oom_killed = true;
            s.oom_kills = n;
        }
    }
    let p = plan(&d, &o);
    assert_eq!(
        sp(&p, "x").reasons,
        vec![DriftReason::Stopped, DriftReason::OomKilled]
    );
    assert_eq!(sp(&p, "x").oom_kills, 1);
    assert_eq!(sp(&p, "y").reasons, vec![DriftReason::OomKilled]);
    assert_eq!(sp(&p, "y").oom_kills, 3);
    assert_eq!(
        kinds(&p),
        vec![(ActionKind::Start, "x"), (ActionKind::Restart, "y")]
    );
    assert_eq!(sp(&plan(&d, &converged(&d)), "x").oom_kills, 0);
}

#[test]
fn a_changed_desired_version_plans_an_upgrade() {
    let mut d = fleet(&["a"], vec![svc("x", "a")]);
    let o = converged(&d);
    if let Some(s) = d.services.get_mut("x") {
        s.version = "1.1".into();
    }
    let p = plan(&d, &o);
    let x = sp(&p, "x");
    assert_eq!(x.reasons, vec![DriftReason::Version]);
    assert_eq!(x.observed_version.as_deref(), Some("1.0"));
    assert_eq!(x.desired_version.as_deref(), Some("1.1"));
    assert_eq!(kinds(&p), vec![(ActionKind::Upgrade, "x")]);
}

#[test]
fn a_changed_command_plans_config_and_an_upgrade() {
    let mut d = fleet(&["a"], vec![svc("x", "a")]);
    let o = converged(&d);
    if let Some(s) = d.services.get_mut("x") {
        s.command.push("--verbose".into());
    }
    let p = plan(&d, &o);
    assert_eq!(sp(&p, "x").reasons, vec![DriftReason::Config]);
    assert_eq!(kinds(&p), vec![(ActionKind::Upgrade, "x")]);
}

#[test]
fn a_stopped_service_with_a_new_version_is_upgraded_not_started() {
    let mut d = fleet(&["a"], vec![svc("x", "a")]);
    let mut o = converged(&d);
    if let Some(s) = state(&mut o, "a").services.get_mut("x") {
        s.running = false;
    }
    if let Some(s) = d.services.get_mut("x") {
        s.version = "2".into();
    }
    let p = plan(&d, &o);
    assert_eq!(kinds(&p), vec![(ActionKind::Upgrade, "x")]);
    assert_eq!(
        p.actions[0].reasons,
        vec![DriftReason::Stopped, DriftReason::Version]
    );
}

#[test]
fn a_limit_rounded_down_to_a_page_is_in_sync() {
    let mut s = svc("x", "a");
    s.memory = Some(100_000_001);
    let d = fleet(&["a"], vec![s]);
    let o = converged(&d);
    if let Some(Observation::Reachable(st)) = o.get("a") {
        assert_ne!(st.services["x"].memory_limit, Some(100_000_001));
    }
    assert!(plan(&d, &o).in_sync());
}

#[test]
fn a_memory_limit_changed_by_hand_plans_memory_limit_and_a_restart() {
    let d = fleet(&["a"], vec![svc("x", "a")]);
    let mut o = converged(&d);
    if let Some(s) = state(&mut o, "a").services.get_mut("x") {
        s.memory_limit = Some(32 * MIB);
    }
    let p = plan(&d, &o);
    assert_eq!(sp(&p, "x").reasons, vec![DriftReason::MemoryLimit]);
    assert_eq!(kinds(&p), vec![(ActionKind::Restart, "x")]);
}

#[test]
fn an_unlimited_cgroup_plans_memory_limit_when_git_wants_one() {
    let d = fleet(&["a"], vec![svc("x", "a")]);
    let mut o = converged(&d);
    if let Some(s) = state(&mut o, "a").services.get_mut("x") {
        s.memory_limit = None;
    }
    assert_eq!(
        sp(&plan(&d, &o), "x").reasons,
        vec![DriftReason::MemoryLimit]
    );
}

#[test]
fn a_limit_left_in_force_after_git_drops_it_plans_memory_limit() {
    let mut d = fleet(&["a"], vec![svc("x", "a")]);
    let o = converged(&d);
    if let Some(s) = d.services.get_mut("x") {
        s.memory = None;
    }
    let p = plan(&d, &o);
    let reasons = &sp(&p, "x").reasons;
    assert!(reasons.contains(&DriftReason::MemoryLimit), "{reasons:?}");
}

#[test]
fn a_host_without_a_memory_controller_never_plans_memory_limit() {
    let d = fleet(&["a"], vec![svc("x", "a")]);
    let mut o = converged(&d);
    let st = state(&mut o, "a");
    st.facts.cgroup = CgroupMode::None;
    if let Some(s) = st.services.get_mut("x") {
        s.memory_limit = None;
        s.memory_usage = None;
    }
    assert!(plan(&d, &o).in_sync());
}

#[test]
fn a_stranger_on_a_declared_port_blocks_the_start_and_is_left_alone() {
    let mut x = svc("x", "a");
    x.ports = vec![8100];
    let d = fleet(&["a"], vec![x]);
    let mut o = empty_hosts(&d);
    state(&mut o, "a").listeners.insert(
        8100,
        Listener {
            pid: Some(123),
            service: None,
            comm: Some("nc".into()),
        },
    );
    let p = plan(&d, &o);
    let x = sp(&p, "x");
    assert_eq!(x.reasons, vec![DriftReason::Missing, DriftReason::Port]);
    assert_eq!(x.blocked.as_deref(), Some("port 8100 held by pid 123 (nc)"));
    assert!(p.actions.is_empty(), "{:?}", p.actions);
}

#[test]
fn a_stranger_on_a_running_services_port_plans_port_without_an_action() {
    let mut x = svc("x", "a");
    x.ports = vec![8100, 8101];
    let d = fleet(&["a"], vec![x]);
    let mut o = converged(&d);
    state(&mut o, "a").listeners.insert(
        8101,
        Listener {
            pid: Some(9),
            service: None,
            comm: None,
        },
    );
    let p = plan(&d, &o);
    assert_eq!(sp(&p, "x").reasons, vec![DriftReason::Port]);
    assert_eq!(
        sp(&p, "x").blocked.as_deref(),
        Some("port 8101 held by pid 9")
    );
    assert!(p.actions.is_empty());
}

#[test]
fn a_port_held_by_an_unknown_holder_is_not_drift_while_the_service_runs() {
    let mut x = svc("x", "a");
    x.ports = vec![8100];
    let d = fleet(&["a"], vec![x]);
    let mut o = converged(&d);
    state(&mut o, "a").listeners.insert(
        8100,
        Listener {
            pid: None,
            service: None,
            comm: None,
        },
    );
    assert!(plan(&d, &o).in_sync());
}

#[test]
fn a_failing_health_check_plans_unhealthy_and_a_restart() {
    let d = fleet(&["a"], vec![svc("x", "a")]);
    let mut o = converged(&d);
    if let Some(s) = state(&mut o, "a").services.get_mut("x") {
        s.healthy = Some(false);
    }
    let p = plan(&d, &o);
    assert_eq!(sp(&p, "x").reasons, vec![DriftReason::Unhealthy]);
    assert_eq!(kinds(&p), vec![(ActionKind::Restart, "x")]);
}

#[test]
fn a_record_not_in_git_plans_unmanaged_and_a_prune_after_the_starts() {
    let old = fleet(&["a"], vec![svc("gone", "a")]);
    let o = converged(&old);
    let d = fleet(&["a"], vec![svc("new", "a")]);
    let p = plan(&d, &o);
    let gone = sp(&p, "gone");
    assert_eq!(gone.reasons, vec![DriftReason::Unmanaged]);
    assert_eq!(gone.desired_version, None);
    assert_eq!(gone.observed_version.as_deref(), Some("1.0"));
    assert_eq!(
        kinds(&p),
        vec![(ActionKind::Start, "new"), (ActionKind::Prune, "gone")]
    );
}

#[test]
fn a_service_moved_to_another_host_starts_there_and_its_old_copy_is_pruned() {
    let before = fleet(&["a", "b"], vec![svc("x", "a")]);
    let o = converged(&before);
    let after = fleet(&["a", "b"], vec![svc("x", "b")]);
    let p = plan(&after, &o);
    let got: Vec<(ActionKind, &str, &str)> = p
        .actions
        .iter()
        .map(|a| (a.kind, a.service.as_str(), a.host.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![(ActionKind::Start, "x", "b"), (ActionKind::Prune, "x", "a")]
    );
}

#[test]
fn a_suspended_service_is_reported_but_never_acted_on() {
    let mut x = svc("x", "a");
    x.suspend = true;
    let d = fleet(&["a"], vec![x]);
    let p = plan(&d, &empty_hosts(&d));
    assert_eq!(sp(&p, "x").status, Status::Suspended);
    assert_eq!(sp(&p, "x").reasons, vec![DriftReason::Missing]);
    assert!(p.actions.is_empty());
    assert!(p.in_sync());
}

#[test]
fn an_unreachable_host_leaves_its_services_unknown_and_the_others_planned() {
    let d = fleet(&["a", "b"], vec![svc("x", "a"), svc("y", "b")]);
    let mut o = empty_hosts(&d);
    o.insert(
        "a".into(),
        Observation::unreachable("other", "connection refused"),
    );
    let p = plan(&d, &o);
    assert_eq!(sp(&p, "x").status, Status::Unknown);
    assert!(sp(&p, "x").reasons.is_empty());
    assert_eq!(
        p.unreachable.get("a").map(String::as_str),
        Some("connection refused")
    );
    assert_eq!(kinds(&p), vec![(ActionKind::Start, "y")]);
    assert!(!p.in_sync());
}

#[test]
fn a_rolled_back_version_is_blocked_instead_of_retried() {
    let mut d = fleet(&["a"], vec![svc("x", "a")]);
    let mut o = converged(&d);
    if let Some(s) = state(&mut o, "a").services.get_mut("x") {
        s.record.failed_version = Some("2.0".into());
    }
    if let Some(s) = d.services.get_mut("x") {
        s.version = "2.0".into();
        s.command.push("--new-flag".into());
    }
    let p = plan(&d, &o);
    let x = sp(&p, "x");
    assert_eq!(x.reasons, vec![DriftReason::Version, DriftReason::Config]);
    assert_eq!(
        x.blocked.as_deref(),
        Some(
            "version 2.0 failed its health check and was rolled back; change the manifest to retry"
        )
    );
    assert!(p.actions.is_empty());
}

#[test]
fn a_rolled_back_service_that_died_is_restarted_in_place() {
    let mut d = fleet(&["a"], vec![svc("x", "a")]);
    let mut o = converged(&d);
    if let Some(s) = state(&mut o, "a").services.get_mut("x") {
        s.record.failed_version = Some("2.0".into());
        s.running = false;
    }
    if let Some(s) = d.services.get_mut("x") {
        s.version = "2.0".into();
    }
    let p = plan(&d, &o);
    assert_eq!(kinds(&p), vec![(ActionKind::Restart, "x")]);
    assert_eq!(p.actions[0].reasons, vec![DriftReason::Stopped]);
}

#[test]
fn a_new_manifest_version_after_a_rollback_is_upgraded_again() {
    let mut d = fleet(&["a"], vec![svc("x", "a")]);
    let mut o = converged(&d);
    if let Some(s) = state(&mut o, "a").services.get_mut("x") {
        s.record.failed_version = Some("2.0".into());
    }
    if let Some(s) = d.services.get_mut("x") {
        s.version = "2.1".into();
    }
    assert_eq!(kinds(&plan(&d, &o)), vec![(ActionKind::Upgrade, "x")]);
}

#[test]
fn dependencies_come_first_even_across_hosts() {
    // "api" on host a needs "auth" on host z: host order alone would be wrong.
    let mut api = svc("api", "a");
    api.depends_on = vec!["auth".into(), "db".into()];
    let d = fleet(&["a", "z"], vec![api, svc("auth", "z"), svc("db", "a")]);
    let p = plan(&d, &empty_hosts(&d));
    assert_eq!(
        kinds(&p),
        vec![
            (ActionKind::Start, "db"),
            (ActionKind::Start, "auth"),
            (ActionKind::Start, "api")
        ]
    );
    assert_eq!(
        p.actions[2].after,
        vec![InstanceId::new("auth", "z"), InstanceId::new("db", "a")]
    );
}

#[test]
fn after_lists_dependencies_that_have_no_action() {
    let mut api = svc("api", "a");
    api.depends_on = vec!["auth".into()];
    let mut d = fleet(&["a"], vec![api, svc("auth", "a")]);
    let o = converged(&d);
    if let Some(s) = d.services.get_mut("api") {
        s.version = "9".into();
    }
    let p = plan(&d, &o);
    assert_eq!(kinds(&p), vec![(ActionKind::Upgrade, "api")]);
    assert_eq!(p.actions[0].after, vec![InstanceId::new("auth", "a")]);
}

#[test]
fn a_dependency_cycle_still_yields_each_action_once() {
    let mut a = svc("a1", "a");
    a.depends_on = vec!["a2".into()];
    let mut b = svc("a2", "a");
    b.depends_on = vec!["a1".into()];
    let d = fleet(&["a"], vec![a, b]);
    let p = plan(&d, &empty_hosts(&d));
    assert_eq!(
        kinds(&p),
        vec![(ActionKind::Start, "a1"), (ActionKind::Start, "a2")]
    );
}

#[test]
fn the_memory_budget_sums_declared_limits_and_reports_what_the_host_has() {
    let mut big = svc("big", "a");
    big.memory = Some(512 * MIB);
    let mut none = svc("none", "a");
    none.memory = None;
    let d = fleet(&["a", "b"], vec![big, none, svc("small", "a")]);
    let mut o = converged(&d);
    o.insert("b".into(), Observation::unreachable("other", "down"));
    let p = plan(&d, &o);
    assert_eq!(
        p.memory,
        vec![
            MemoryBudget {
                host: "a".into(),
                capacity: Some(4096 * MIB),
                reserved: 1024 * MIB,
                committed: 576 * MIB,
                mem_total: Some(4096 * MIB),
                mem_available: Some(2048 * MIB),
            },
            MemoryBudget {
                host: "b".into(),
                capacity: Some(4096 * MIB),
                reserved: 1024 * MIB,
                committed: 0,
                mem_total: None,
                mem_available: None,
            },
        ]
    );
}

#[test]
fn hosts_that_were_not_observed_are_not_planned() {
    let d = fleet(&["a", "b"], vec![svc("x", "a"), svc("y", "b")]);
    let mut o = empty_hosts(&d);
    o.remove("b");
    let p = plan(&d, &o);
    assert_eq!(
        p.services
            .iter()
            .map(|s| s.service.as_str())
            .collect::<Vec<_>>(),
        vec!["x"]
    );
    assert_eq!(p.memory.len(), 1);
}

#[test]
fn limits_match_allows_only_rounding_down_within_a_page() {
    assert!(limits_match(None, None));
    assert!(limits_match(Some(4096), Some(4096)));
    assert!(limits_match(Some(100_000_001), Some(99_999_744)));
    assert!(!limits_match(Some(4096), Some(8192)));
    assert!(!limits_match(Some(64 * MIB), Some(32 * MIB)));
    assert!(!limits_match(Some(4096), None));
    assert!(!limits_match(None, Some(4096)));
}

// ---------------------------------------------------------------- properties

#[derive(Debug, Clone)]
struct Gen {
    desired: Desired,
    /// Per service (by index): which drift to inject.
    faults: Vec<u8>,
    unreachable: Vec<bool>,
    unmanaged: Vec<(usize, String)>,
}

fn arb_fleet() -> impl Strategy<Value = Gen> {
    (1usize..4, 0usize..8).prop_flat_map(|(nh, ns)| {
        let svcs = proptest::collection::vec(
            (
                0..nh,
                proptest::option::of(1u64..2048),
                any::<bool>(),
                proptest::collection::vec(any::<prop::sample::Index>(), 0..3),
                prop::bool::weighted(0.15),
            ),
            ns,
        );
        (
            Just(nh),
            svcs,
            proptest::collection::vec(0u8..9, ns),
            proptest::collection::vec(prop::bool::weighted(0.2), nh),
            proptest::collection::vec((0..nh, "[a-z]{1,3}"), 0..3),
        )
            .prop_map(|(nh, svcs, faults, unreachable, unmanaged)| {
                let hosts: Vec<String> = (0..nh).map(|i| format!("h{i}")).collect();
                let mut services = Vec::new();
                for (i, (h, mem, port, deps, suspend)) in svcs.into_iter().enumerate() {
                    let mut s = svc(&format!("s{i}"), &hosts[h]);
                    s.memory = mem.map(|m| m * MIB);
                    if port {
                        s.ports = vec![8000 + i as u16];
                    }
                    // Only earlier services: acyclic, as validation guarantees.
                    if i > 0 {
                        s.depends_on = deps.iter().map(|d| format!("s{}", d.index(i))).collect();
                    }
                    s.suspend = suspend;
                    services.push(s);
                }
                let hr: Vec<&str> = hosts.iter().map(String::as_str).collect();
                Gen {
                    desired: fleet(&hr, services),
                    faults,
                    unreachable,
                    unmanaged,
                }
            })
    })
}

fn perturb(g: &Gen) -> (Desired, BTreeMap<String, Observation>) {
    let mut d = g.desired.clone();
    let mut o = converged(&d);
    let names: Vec<String> = d.services.keys().cloned().collect();
    for (i, f) in g.faults.iter().enumerate() {
        let Some(name) = names.get(i) else { continue };
        let Some(h) = d.services.get(name).map(|s| s.hosts[0].clone()) else {
            continue;
        };
        let st = state(&mut o, &h);
        match f {
            1 => {
                st.services.remove(name);
            }
            2 => {
                if let Some(s) = st.services.get_mut(name) {
                    s.running = false;
                }
            }
            3 => {
                if let Some(s) = d.services.get_mut(name) {
                    s.version = "2.0".into();
                }
            }
            4 => {
                if let Some(s) = st.services.get_mut(name) {
                    s.memory_limit = Some(1);
                }
            }
            5 => {
                if let Some(s) = st.services.get_mut(name) {
                    s.healthy = Some(false);
                }
            }
            6 => {
                st.services.remove(name);
                let port = 8000 + i as u16;
                st.listeners.insert(
                    port,
                    Listener {
                        pid: Some(1),
                        service: None,
                        comm: None,
                    },
                );
            }
            7 => {
                if let Some(s) = st.services.get_mut(name) {
                    s.record.failed_version = Some("2.0".into());
                }
                if let Some(s) = d.services.get_mut(name) {
                    s.version = "2.0".into();
                }
            }
            8 => {
                if let Some(s) = d.services.get_mut(name) {
                    s.command.push("--changed".into());
                }
            }
            _ => {}
        }
    }
    let hosts: Vec<String> = d.hosts.keys().cloned().collect();
    for (h, name) in &g.unmanaged {
        let st = state(&mut o, &hosts[*h]);
        let mut r = svc(&format!("old-{name}"), &hosts[*h]);
        r.version = "0.9".into();
        st.services.insert(
            r.name.clone(),
            ObservedService {
                record: record_of(&r, 1),
                running: true,
                memory_usage: None,
                memory_limit: None,
                oom_killed: false,
                oom_kills: 0,
                healthy: None,
            },
        );
    }
    for (i, down) in g.unreachable.iter().enumerate() {
        if *down {
            o.insert(hosts[i].clone(), Observation::unreachable("other", "down"));
        }
    }
    (d, o)
}

proptest! {
    #[test]
    fn a_converged_fleet_plans_nothing_whatever_its_shape(g in arb_fleet()) {
        let p = plan(&g.desired, &converged(&g.desired));
        prop_assert!(p.in_sync(), "{:#?}", p);
        prop_assert!(p.actions.is_empty());
    }

    #[test]
    fn plans_are_deterministic_and_ordered(g in arb_fleet()) {
        let (d, o) = perturb(&g);
        let p = plan(&d, &o);
        prop_assert_eq!(&p, &plan(&d.clone(), &o.clone()));

        let mut seen = std::collections::BTreeSet::new();
        let mut pruning = false;
        for (i, a) in p.actions.iter().enumerate() {
            // Every dependency with an action runs earlier.
            for dep in &a.after {
                if let Some(j) = p.actions.iter().position(|b| b.id() == *dep) {
                    prop_assert!(j < i, "{} runs before its dependency {}", a.service, dep);
                    prop_assert!(p.actions[j].kind != ActionKind::Prune, "{} waits on a prune", a.service);
                }
            }
            // Prunes only after every start/upgrade/restart.
            if a.kind == ActionKind::Prune {
                pruning = true;
            } else {
                prop_assert!(!pruning, "{:?} after a prune", a);
            }
            prop_assert!(seen.insert((a.host.clone(), a.service.clone())), "two actions for {}", a.service);
            prop_assert!(!p.unreachable.contains_key(&a.host), "action on unreachable {}", a.host);
            if let Some(s) = d.services.get(&a.service) {
                prop_assert!(!s.suspend, "action on suspended {}", a.service);
            }
        }
        for s in &p.services {
            if p.unreachable.contains_key(&s.host) {
                prop_assert_eq!(s.status, Status::Unknown);
            }
            if s.status == Status::InSync {
                prop_assert!(!p.actions.iter().any(|a| a.service == s.service && a.host == s.host));
            }
            if s.status == Status::Drifted && s.blocked.is_none() {
                prop_assert!(p.actions.iter().any(|a| a.service == s.service && a.host == s.host),
                    "drift without an action or a reason why: {:?}", s);
            }
        }
    }
}

// ---------------------------------------------------------------- moves

#[test]
fn a_moved_service_is_started_where_git_puts_it_and_its_dependents_wait_for_that_copy() {
    let mut api = svc("api", "a");
    api.depends_on = vec!["db".into()];
    let before = fleet(&["a", "b"], vec![api.clone(), svc("db", "a")]);
    let o = converged(&before);
    api.version = "2".into();
    let after = fleet(&["a", "b"], vec![api, svc("db", "b")]);
    let p = plan(&after, &o);
    let got: Vec<(ActionKind, InstanceId, Vec<InstanceId>)> = p
        .actions
        .iter()
        .map(|a| (a.kind, a.id(), a.after.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (ActionKind::Start, InstanceId::new("db", "b"), vec![]),
            (
                ActionKind::Upgrade,
                InstanceId::new("api", "a"),
                vec![InstanceId::new("db", "b")]
            ),
            (ActionKind::Prune, InstanceId::new("db", "a"), vec![]),
        ]
    );
}

fn arb_moves() -> impl Strategy<Value = (Gen, Vec<prop::sample::Index>)> {
    arb_fleet().prop_flat_map(|g| {
        let n = g.desired.services.len();
        (
            Just(g),
            proptest::collection::vec(any::<prop::sample::Index>(), n),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever moves: every edge points at the instance Git asks for, runs
    /// before its dependent, and is never a prune; each move is one start
    /// where the service goes and one prune where it was.
    #[test]
    fn after_random_moves_every_edge_points_at_a_desired_instance_planned_first((g, to) in arb_moves()) {
        let o = converged(&g.desired);
        let mut d = g.desired.clone();
        let hosts: Vec<String> = d.hosts.keys().cloned().collect();
        let mut moved = Vec::new();
        for (s, ix) in d.services.values_mut().zip(&to) {
            let h = hosts[ix.index(hosts.len())].clone();
            if h != s.hosts[0] {
                moved.push((s.name.clone(), s.hosts[0].clone(), h.clone()));
                s.hosts = vec![h];
            }
        }
        let p = plan(&d, &o);
        for (i, a) in p.actions.iter().enumerate() {
            for dep in &a.after {
                let placed = d.services.get(&dep.service).map(|s| s.hosts[0].as_str());
                prop_assert_eq!(placed, Some(dep.host.as_str()), "{} waits on {}", a.id(), dep);
                if let Some(j) = p.actions.iter().position(|b| b.id() == *dep) {
                    prop_assert!(j < i, "{} runs before its dependency {}", a.id(), dep);
                    prop_assert!(p.actions[j].kind != ActionKind::Prune);
                }
            }
        }
        for (name, from, to) in &moved {
            if d.services[name].suspend {
                continue;
            }
            let on = |h: &str, k: ActionKind| p.actions.iter().any(|a| a.service == *name && a.host == h && a.kind == k);
            prop_assert!(on(to, ActionKind::Start), "{} not started on {}: {:?}", name, to, p.actions);
            prop_assert!(on(from, ActionKind::Prune), "{} not pruned on {}: {:?}", name, from, p.actions);
        }
    }
}

#[test]
fn a_service_the_kernel_oom_killed_after_its_gate_is_named_oom_killed_with_the_count() {
    let d = fleet(&["a"], vec![svc("hog", "a")]);
    let mut o = converged(&d);
    if let Some(s) = state(&mut o, "a").services.get_mut("hog") {
        s.running = false;
        s.oom_killed = true;
        s.oom_kills = 3;
    }
    let p = plan(&d, &o);
    let hog = sp(&p, "hog");
    assert_eq!(
        hog.reasons,
        vec![DriftReason::Stopped, DriftReason::OomKilled]
    );
    assert_eq!(hog.oom_kills, 3);
    assert_eq!(kinds(&p), vec![(ActionKind::Start, "hog")]);
    assert!(p.actions[0].reasons.contains(&DriftReason::OomKilled));
}

#[test]
fn an_unreadable_record_blocks_only_its_own_service_and_the_host_stays_managed() {
    let d = fleet(&["a"], vec![svc("bad", "a"), svc("good", "a")]);
    let mut o = converged(&d);
    let st = state(&mut o, "a");
    st.services.remove("bad");
    st.bad_records
        .insert("bad".into(), "record bad.rec: line 3: no '='".into());
    if let Some(s) = st.services.get_mut("good") {
        s.running = false;
    }
    let p = plan(&d, &o);
    assert!(p.unreachable.is_empty());
    let bad = sp(&p, "bad");
    assert_eq!(bad.reasons, vec![DriftReason::Record]);
    assert!(
        bad.blocked.as_deref().unwrap_or("").contains("bad.rec"),
        "{bad:?}"
    );
    assert_eq!(kinds(&p), vec![(ActionKind::Start, "good")]);
}
