use super::*;
use crate::plan::{ActionKind, DriftReason, ServicePlan, Status};
use std::time::Duration;

fn action(service: &str, host: &str, after: &[(&str, &str)]) -> Action {
    Action {
        kind: ActionKind::Upgrade,
        service: service.into(),
        host: host.into(),
        after: after.iter().map(|(s, h)| InstanceId::new(*s, *h)).collect(),
        needs: vec![],
        reasons: vec![DriftReason::Version],
        pause: Duration::ZERO,
    }
}

fn service(service: &str, host: &str, observed: &str) -> ServicePlan {
    ServicePlan {
        service: service.into(),
        host: host.into(),
        status: Status::Drifted,
        reasons: vec![DriftReason::Version],
        desired_version: Some("2".into()),
        observed_version: Some(observed.into()),
        blocked: None,
        oom_kills: 0,
    }
}

fn plan() -> Plan {
    Plan {
        services: vec![
            service("db", "h1", "1"),
            service("web", "h1", "1"),
            service("cron", "h2", "1"),
        ],
        actions: vec![
            action("db", "h1", &[]),
            action("web", "h1", &[("db", "h1")]),
            action("cron", "h2", &[]),
        ],
        ..Plan::default()
    }
}

fn modes(pairs: &[(&str, Mode)]) -> Modes {
    Modes {
        services: pairs.iter().map(|(s, m)| (s.to_string(), *m)).collect(),
        ..Modes::default()
    }
}

#[test]
fn the_most_specific_mode_wins() {
    let m = Modes {
        default: Mode::Observe,
        hosts: [("h1".to_string(), Mode::Approve)].into(),
        services: [("db".to_string(), Mode::Auto)].into(),
    };
    assert_eq!(m.of("db", "h1"), Mode::Auto);
    assert_eq!(m.of("web", "h1"), Mode::Approve);
    assert_eq!(m.of("web", "h2"), Mode::Observe);
    assert!(Modes::default().all_auto());
}

#[test]
fn approve_mode_actions_wait_under_an_id_and_their_dependents_with_them() {
    let mut p = plan();
    let held = hold(&mut p, &modes(&[("db", Mode::Approve)]), "rev1", None);
    let pending = held.pending.expect("a plan awaiting approval");
    let waiting: Vec<_> = pending.actions.iter().map(|a| a.service.as_str()).collect();
    assert_eq!(waiting, ["db", "web"]);
    let left: Vec<_> = p.actions.iter().map(|a| a.service.as_str()).collect();
    assert_eq!(left, ["cron"]);
    let b = p.services[0].blocked.clone().unwrap_or_default();
    assert!(b.contains(&pending.id), "{b}");
}

#[test]
fn the_approved_id_runs_the_actions_and_a_stale_one_does_not() {
    let m = modes(&[("db", Mode::Approve)]);
    let id = hold(&mut plan(), &m, "rev1", None).pending.unwrap().id;
    let mut p = plan();
    let held = hold(&mut p, &m, "rev1", Some(&id));
    assert_eq!(held.applying.as_deref(), Some(id.as_str()));
    assert_eq!(held.pending, None);
    assert_eq!(p.actions.len(), 3);
    // The host changed since: another observation, another id.
    let mut changed = plan();
    changed.services[0].observed_version = Some("1.5".into());
    let held = hold(&mut changed, &m, "rev1", Some(&id));
    assert_eq!(held.applying, None);
    assert_ne!(held.pending.unwrap().id, id);
    assert_eq!(changed.actions.len(), 1);
    // So does a new revision.
    let held = hold(&mut plan(), &m, "rev2", Some(&id));
    assert_ne!(held.pending.unwrap().id, id);
}

#[test]
fn observe_mode_is_never_acted_on_and_publishes_nothing_to_approve() {
    let mut p = plan();
    let held = hold(&mut p, &modes(&[("cron", Mode::Observe)]), "rev1", None);
    assert_eq!(held, Held::default());
    assert_eq!(p.actions.len(), 2);
    assert_eq!(
        p.services[2].blocked.as_deref(),
        Some("observe mode: reported, not acted on")
    );
}

#[test]
fn the_same_state_gives_the_same_id() {
    let m = modes(&[("db", Mode::Approve)]);
    let a = hold(&mut plan(), &m, "rev1", None).pending.unwrap().id;
    let b = hold(&mut plan(), &m, "rev1", None).pending.unwrap().id;
    assert_eq!(a, b);
    assert_eq!(a.len(), 12);
}
