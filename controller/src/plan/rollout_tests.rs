//! Rollouts: batches, the unavailable budget, halts and rollbacks, case by
//! case, then a property over random fleets caught mid-rollout.

use super::tests::{converged, fleet, host, kinds, record_of, state, svc};
use super::*;
use crate::instance::InstanceId;
use crate::model::{Desired, FailureAction, Observation, Rollout, Service, Share};
use crate::record::PreviousRelease;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("h{i}")).collect()
}

/// `web` on `n` hosts, every one running 1.0, Git asking for 2.0.
fn rollout_fleet(n: usize, mu: Share) -> (Desired, BTreeMap<String, Observation>) {
    let hosts = names(n);
    let refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let mut web = svc("web", "h0");
    web.hosts = hosts.clone();
    web.version = "1.0".into();
    web.rollout = Rollout {
        max_unavailable: mu,
        ..Rollout::default()
    };
    let mut d = fleet(&refs, vec![web]);
    let o = converged(&d);
    if let Some(s) = d.services.get_mut("web") {
        s.version = "2.0".into();
    }
    (d, o)
}

fn web(d: &Desired) -> &Service {
    &d.services["web"]
}

/// The instance on `h` runs 2.0, with 1.0 kept for rollback.
fn upgraded(d: &Desired, o: &mut BTreeMap<String, Observation>, h: &str) {
    let mut rec = record_of(web(d), 7);
    rec.previous = Some(PreviousRelease {
        version: "1.0".into(),
        config_hash: web(d).config_hash(),
        release: "1.0-x".into(),
    });
    if let Some(s) = state(o, h).services.get_mut("web") {
        s.record = rec;
    }
}

/// 2.0 failed its gate on `h` and was rolled back to 1.0 there.
fn failed_on(o: &mut BTreeMap<String, Observation>, h: &str) {
    if let Some(s) = state(o, h).services.get_mut("web") {
        s.record.failed_version = Some("2.0".into());
    }
}

fn stopped(o: &mut BTreeMap<String, Observation>, h: &str) {
    if let Some(s) = state(o, h).services.get_mut("web") {
        s.running = false;
    }
}

fn action<'a>(p: &'a Plan, h: &str) -> &'a Action {
    p.actions
        .iter()
        .find(|a| a.service == "web" && a.host == h)
        .unwrap_or_else(|| panic!("no action on {h}: {:#?}", p.actions))
}

fn web_after(a: &Action) -> Vec<&str> {
    a.after
        .iter()
        .filter(|i| i.service == "web")
        .map(|i| i.host.as_str())
        .collect()
}

#[test]
fn an_upgrade_on_five_hosts_goes_in_batches_of_max_unavailable_each_after_the_last() {
    let (d, o) = rollout_fleet(5, Share::Count(2));
    let p = plan(&d, &o);
    let r = &p.rollouts[0];
    assert_eq!(
        r.batches,
        vec![vec!["h0", "h1"], vec!["h2", "h3"], vec!["h4"]]
    );
    assert_eq!(r.progress, "0/5 current, batch 1 of 3");
    assert!(web_after(action(&p, "h0")).is_empty());
    assert!(web_after(action(&p, "h1")).is_empty());
    assert_eq!(web_after(action(&p, "h2")), vec!["h0", "h1"]);
    assert_eq!(web_after(action(&p, "h4")), vec!["h2", "h3"]);
    assert!(p
        .actions
        .iter()
        .all(|a| a.kind == ActionKind::Upgrade && a.reasons == vec![DriftReason::Version]));
}

#[test]
fn the_pause_between_batches_is_on_every_batch_but_the_first() {
    let (mut d, o) = rollout_fleet(3, Share::Count(1));
    if let Some(s) = d.services.get_mut("web") {
        s.rollout.pause_between = Duration::from_secs(10);
    }
    let p = plan(&d, &o);
    assert_eq!(action(&p, "h0").pause, Duration::ZERO);
    assert_eq!(action(&p, "h1").pause, Duration::from_secs(10));
    assert_eq!(action(&p, "h2").pause, Duration::from_secs(10));
}

#[test]
fn a_percentage_rounds_down_and_never_below_one() {
    assert_eq!(Share::Percent(25).of(10), 2);
    assert_eq!(Share::Percent(25).of(3), 1);
    assert_eq!(Share::Percent(100).of(4), 4);
    assert_eq!(Share::Count(3).of(2), 3);
    let (d, o) = rollout_fleet(8, Share::Percent(25));
    let p = plan(&d, &o);
    assert_eq!(p.rollouts[0].max_unavailable, 2);
    assert_eq!(p.rollouts[0].batches.len(), 4);
}

#[test]
fn a_rollout_resumes_from_the_records_and_counts_upgraded_instances_current() {
    let (d, mut o) = rollout_fleet(5, Share::Count(2));
    upgraded(&d, &mut o, "h0");
    upgraded(&d, &mut o, "h1");
    let p = plan(&d, &o);
    let r = &p.rollouts[0];
    assert_eq!(r.current, 2);
    assert_eq!(r.progress, "2/5 current, batch 2 of 3");
    assert_eq!(r.batches, vec![vec!["h2", "h3"], vec!["h4"]]);
    assert!(p.actions.iter().all(|a| a.host != "h0" && a.host != "h1"));
}

#[test]
fn an_instance_already_down_is_repaired_first_and_shrinks_the_batches() {
    let (d, mut o) = rollout_fleet(5, Share::Count(2));
    stopped(&mut o, "h3");
    let p = plan(&d, &o);
    let r = &p.rollouts[0];
    assert_eq!(r.unavailable, 1);
    // The repair first, then batches of 2 (it is back up by then).
    assert_eq!(r.batches[0], vec!["h3"]);
    assert_eq!(r.batches[1], vec!["h0", "h1"]);
    assert_eq!(web_after(action(&p, "h0")), vec!["h3"]);
}

#[test]
fn an_unreachable_instance_counts_as_down_and_no_more_are_taken_down() {
    let (d, mut o) = rollout_fleet(4, Share::Count(1));
    o.insert(
        "h2".into(),
        Observation::unreachable("timeout", "timed out"),
    );
    let p = plan(&d, &o);
    let r = &p.rollouts[0];
    assert_eq!(r.unavailable, 1);
    assert!(r.batches.is_empty(), "{r:#?}");
    assert!(p.actions.is_empty(), "{:#?}", p.actions);
    let held = p
        .services
        .iter()
        .find(|s| s.host == "h0")
        .and_then(|s| s.blocked.clone())
        .unwrap_or_default();
    assert!(held.contains("1 of 4 instances unavailable"), "{held}");
}

#[test]
fn a_version_that_failed_anywhere_halts_the_rollout_and_rolls_back_the_upgraded_ones() {
    let (d, mut o) = rollout_fleet(5, Share::Count(1));
    upgraded(&d, &mut o, "h0");
    failed_on(&mut o, "h1");
    let p = plan(&d, &o);
    let r = &p.rollouts[0];
    assert!(r
        .halted
        .as_deref()
        .unwrap_or("")
        .contains("failed its health check (rolled back on h1)"));
    assert!(r.progress.ends_with(", halted"), "{}", r.progress);
    assert_eq!(kinds(&p), vec![(ActionKind::Rollback, "web")]);
    assert_eq!(action(&p, "h0").reasons, vec![DriftReason::RolloutFailed]);
    // The others keep 1.0 and say why.
    for h in ["h2", "h3", "h4"] {
        let s = p.services.iter().find(|s| s.host == h).unwrap();
        assert!(
            s.blocked.as_deref().unwrap_or("").contains("stopped"),
            "{s:?}"
        );
    }
}

#[test]
fn with_failure_action_pause_the_upgraded_instances_keep_the_new_version() {
    let (mut d, mut o) = rollout_fleet(4, Share::Count(1));
    if let Some(s) = d.services.get_mut("web") {
        s.rollout.failure_action = FailureAction::Pause;
    }
    upgraded(&d, &mut o, "h0");
    failed_on(&mut o, "h1");
    let p = plan(&d, &o);
    assert!(p.actions.is_empty(), "{:#?}", p.actions);
    assert!(p.rollouts[0].halted.is_some());
}

#[test]
fn rollbacks_of_a_halted_rollout_are_batched_too() {
    let (d, mut o) = rollout_fleet(5, Share::Count(2));
    for h in ["h0", "h1", "h2", "h3"] {
        upgraded(&d, &mut o, h);
    }
    failed_on(&mut o, "h4");
    let p = plan(&d, &o);
    assert_eq!(
        p.rollouts[0].batches,
        vec![vec!["h0", "h1"], vec!["h2", "h3"]]
    );
    assert_eq!(web_after(action(&p, "h2")), vec!["h0", "h1"]);
}

#[test]
fn a_stopped_instance_of_a_halted_rollout_is_restarted_on_its_old_version() {
    let (d, mut o) = rollout_fleet(3, Share::Count(1));
    failed_on(&mut o, "h0");
    stopped(&mut o, "h2");
    let p = plan(&d, &o);
    assert_eq!(action(&p, "h2").kind, ActionKind::Restart);
    assert_eq!(action(&p, "h2").reasons, vec![DriftReason::Stopped]);
    assert!(p.actions.iter().all(|a| a.host == "h2"));
}

#[test]
fn a_new_host_in_the_placement_gets_its_instance_at_once() {
    let (mut d, mut o) = rollout_fleet(3, Share::Count(1));
    for h in ["h0", "h1", "h2"] {
        upgraded(&d, &mut o, h);
    }
    d.hosts.insert("h3".into(), host("h3"));
    if let Some(s) = d.services.get_mut("web") {
        s.hosts.push("h3".into());
    }
    let mut fresh = converged(&Desired {
        hosts: [("h3".to_string(), host("h3"))].into(),
        services: BTreeMap::new(),
    });
    o.append(&mut fresh);
    let p = plan(&d, &o);
    assert_eq!(kinds(&p), vec![(ActionKind::Start, "web")]);
    assert_eq!(p.actions[0].host, "h3");
}

#[test]
fn a_host_that_left_the_placement_has_its_instance_pruned() {
    let (mut d, mut o) = rollout_fleet(3, Share::Count(1));
    for h in ["h0", "h1", "h2"] {
        upgraded(&d, &mut o, h);
    }
    if let Some(s) = d.services.get_mut("web") {
        s.hosts.retain(|h| h != "h1");
    }
    let p = plan(&d, &o);
    assert_eq!(kinds(&p), vec![(ActionKind::Prune, "web")]);
    assert_eq!(p.actions[0].host, "h1");
}

#[test]
fn a_dependent_of_a_replicated_service_needs_only_its_available_share() {
    let (mut d, mut o) = rollout_fleet(4, Share::Count(1));
    for h in ["h0", "h1", "h2", "h3"] {
        upgraded(&d, &mut o, h);
    }
    let mut api = svc("api", "h0");
    api.depends_on = vec!["web".into()];
    d.services.insert("api".into(), api);
    let p = plan(&d, &o);
    let a = p.actions.iter().find(|a| a.service == "api").unwrap();
    assert_eq!(a.after.len(), 4);
    assert_eq!(
        a.needs,
        vec![Need {
            service: "web".into(),
            at_least: 3
        }]
    );
}

#[test]
fn progress_reads_as_instances_and_batches() {
    use super::rollout::progress;
    assert_eq!(progress(5, 0, 2, false), "0/5 current, batch 1 of 3");
    assert_eq!(progress(5, 3, 1, false), "3/5 current, batch 4 of 5");
    assert_eq!(progress(5, 5, 2, false), "5/5 current");
    assert_eq!(progress(4, 1, 2, true), "1/4 current, batch 1 of 2, halted");
}

// ------------------------------------------------------------- property

/// One instance as a rollout may find it.
#[derive(Debug, Clone, Copy)]
enum Inst {
    Old,
    OldStopped,
    New,
    NewStopped,
    NewUnhealthy,
    FailedBack,
    Missing,
    Unreachable,
}

fn arb_inst() -> impl Strategy<Value = Inst> {
    prop_oneof![
        4 => Just(Inst::Old),
        1 => Just(Inst::OldStopped),
        3 => Just(Inst::New),
        1 => Just(Inst::NewStopped),
        1 => Just(Inst::NewUnhealthy),
        1 => Just(Inst::FailedBack),
        1 => Just(Inst::Missing),
        1 => Just(Inst::Unreachable),
    ]
}

fn arb_share() -> impl Strategy<Value = Share> {
    prop_oneof![
        (1u32..4).prop_map(Share::Count),
        prop::sample::select(vec![10u32, 25, 50, 100]).prop_map(Share::Percent),
    ]
}

fn arb_case() -> impl Strategy<Value = (Vec<Inst>, Share, bool)> {
    (
        prop::collection::vec(arb_inst(), 2..9),
        arb_share(),
        any::<bool>(),
    )
}

fn build(insts: &[Inst], mu: Share, pause: bool) -> (Desired, BTreeMap<String, Observation>) {
    let (mut d, mut o) = rollout_fleet(insts.len(), mu);
    if let Some(s) = d.services.get_mut("web") {
        s.rollout.failure_action = if pause {
            FailureAction::Pause
        } else {
            FailureAction::Rollback
        };
    }
    for (i, inst) in insts.iter().enumerate() {
        let h = format!("h{i}");
        match inst {
            Inst::Old => {}
            Inst::OldStopped => stopped(&mut o, &h),
            Inst::New => upgraded(&d, &mut o, &h),
            Inst::NewStopped => {
                upgraded(&d, &mut o, &h);
                stopped(&mut o, &h);
            }
            Inst::NewUnhealthy => {
                upgraded(&d, &mut o, &h);
                if let Some(s) = state(&mut o, &h).services.get_mut("web") {
                    s.healthy = Some(false);
                }
            }
            Inst::FailedBack => failed_on(&mut o, &h),
            Inst::Missing => {
                state(&mut o, &h).services.clear();
            }
            Inst::Unreachable => {
                o.insert(h, Observation::unreachable("timeout", "timed out"));
            }
        }
    }
    (d, o)
}

/// Web actions each transitively comes after (`after` edges, this service).
fn before_sets(p: &Plan) -> BTreeMap<InstanceId, BTreeSet<InstanceId>> {
    let direct: BTreeMap<InstanceId, Vec<InstanceId>> = p
        .actions
        .iter()
        .filter(|a| a.service == "web")
        .map(|a| (a.id(), a.after.clone()))
        .collect();
    let mut out = BTreeMap::new();
    for id in direct.keys() {
        let mut seen = BTreeSet::new();
        let mut stack = vec![id.clone()];
        while let Some(x) = stack.pop() {
            for y in direct.get(&x).into_iter().flatten() {
                if seen.insert(y.clone()) {
                    stack.push(y.clone());
                }
            }
        }
        out.insert(id.clone(), seen);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever state a rollout is caught in, no action that takes a
    /// serving instance down can run while more than `maxUnavailable`
    /// instances are down: count, for each such action, the instances down
    /// before the plan whose repair is not ordered before it, plus every
    /// other disruptive action not ordered with it (those may run at once).
    #[test]
    fn max_unavailable_is_never_exceeded_whatever_the_rollout_state(
        (insts, share, pause) in arb_case()
    ) {
        let (d, o) = build(&insts, share, pause);
        let p = plan(&d, &o);
        let n = insts.len();
        let mu = share.of(n);
        let down: BTreeSet<String> = insts
            .iter()
            .enumerate()
            .filter(|(_, i)| !matches!(i, Inst::Old | Inst::New | Inst::FailedBack))
            .map(|(k, _)| format!("h{k}"))
            .collect();
        let before = before_sets(&p);
        let web: Vec<&Action> = p.actions.iter().filter(|a| a.service == "web").collect();
        let disruptive: Vec<&&Action> = web.iter().filter(|a| !down.contains(&a.host)).collect();
        for a in &disruptive {
            prop_assert!(a.kind != ActionKind::Start, "a start on a serving instance: {a:?}");
            let ba = &before[&a.id()];
            let still_down = down
                .iter()
                .filter(|h| !ba.contains(&InstanceId::new("web", h.as_str())))
                .count();
            let alongside = disruptive
                .iter()
                .filter(|b| b.id() != a.id())
                .filter(|b| !ba.contains(&b.id()) && !before[&b.id()].contains(&a.id()))
                .count();
            prop_assert!(
                still_down + 1 + alongside <= mu,
                "{} down, {} alongside {a:?}, maxUnavailable {mu}: {:#?}",
                still_down, alongside, p.actions
            );
        }
        // A version that failed anywhere reaches no instance it is not on.
        if insts.iter().any(|i| matches!(i, Inst::FailedBack)) {
            let on_new = |h: &str| insts[h[1..].parse::<usize>().unwrap_or(0)];
            for a in &web {
                if matches!(a.kind, ActionKind::Start | ActionKind::Upgrade) {
                    prop_assert!(
                        matches!(on_new(&a.host), Inst::NewStopped | Inst::NewUnhealthy),
                        "{a:?} in {insts:?}"
                    );
                }
            }
            prop_assert!(p.rollouts[0].halted.is_some());
        }
        // Every instance in the placement is accounted for.
        prop_assert_eq!(p.rollouts[0].instances, n);
    }
}
