//! The gate between plan and apply: actions a window holds leave the plan,
//! their services say why in `blocked`. The plan itself stays pure and
//! window-free; the controller and `tend plan` run this step after it.

use super::Snapshot;
use crate::instance::InstanceId;
use crate::plan::Plan;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gated {
    /// Instances held, by the window holding them.
    pub held: BTreeMap<String, usize>,
    /// `api@h1 past deny window `freeze``: what a manual override let through.
    pub overridden: Vec<String>,
}

/// Take held actions out of `p` (and those waiting on a held instance);
/// with `overriding`, a hold whose windows allow a manual override is passed.
pub fn gate(p: &mut Plan, snap: &Snapshot, overriding: bool) -> Gated {
    let mut out = Gated::default();
    // Instance held -> (window, reason).
    let mut held: BTreeMap<InstanceId, (String, String)> = BTreeMap::new();
    for a in &p.actions {
        let id = a.id();
        if held.contains_key(&id) {
            continue;
        }
        if let Some(h) = snap.hold(&a.service, &a.host) {
            if overriding && h.overridable {
                out.overridden.push(format!(
                    "{id} past {} window `{}`",
                    h.kind.as_str(),
                    h.window
                ));
                continue;
            }
            held.insert(id, (h.window.clone(), h.reason()));
        } else if let Some((dep, (window, why))) = a
            .after
            .iter()
            .find_map(|d| held.get(d).map(|w| (d, w.clone())))
        {
            // Actions come in dependency order: a dependent sees its dependency first.
            held.insert(id, (window, format!("waits for {dep}: {why}")));
        }
    }
    if held.is_empty() {
        return out;
    }
    p.actions.retain(|a| !held.contains_key(&a.id()));
    for sp in &mut p.services {
        if let Some((window, why)) = held.get(&sp.id()) {
            *out.held.entry(window.clone()).or_default() += 1;
            sp.blocked = Some(match sp.blocked.take() {
                Some(other) => format!("{why}; {other}"),
                None => why.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Action, ActionKind, DriftReason, ServicePlan, Status};
    use crate::window::{WindowKind, WindowSpec, Windows};
    use chrono::{TimeZone, Utc};
    use std::time::Duration;

    fn action(service: &str, host: &str, after: &[(&str, &str)]) -> Action {
        Action {
            kind: ActionKind::Start,
            service: service.into(),
            host: host.into(),
            after: after.iter().map(|(s, h)| InstanceId::new(*s, *h)).collect(),
            needs: vec![],
            reasons: vec![DriftReason::Missing],
            pause: Duration::ZERO,
        }
    }

    fn service(service: &str, host: &str) -> ServicePlan {
        ServicePlan {
            service: service.into(),
            host: host.into(),
            status: Status::Drifted,
            reasons: vec![DriftReason::Missing],
            desired_version: Some("1".into()),
            observed_version: None,
            blocked: None,
            oom_kills: 0,
        }
    }

    fn freeze(services: &[&str], manual_override: bool) -> Windows {
        Windows::new(&[WindowSpec {
            name: "freeze".into(),
            kind: WindowKind::Deny,
            schedule: "0 0 * * *".into(),
            duration: Duration::from_secs(23 * 3600),
            timezone: "UTC".into(),
            hosts: vec![],
            services: services.iter().map(|s| s.to_string()).collect(),
            manual_override,
        }])
        .unwrap()
    }

    fn plan() -> Plan {
        Plan {
            services: vec![
                service("db", "h1"),
                service("web", "h1"),
                service("cron", "h2"),
            ],
            actions: vec![
                action("db", "h1", &[]),
                action("web", "h1", &[("db", "h1")]),
                action("cron", "h2", &[]),
            ],
            ..Plan::default()
        }
    }

    #[test]
    fn a_held_action_leaves_the_plan_and_its_service_says_which_window_holds_it() {
        let ws = freeze(&["db"], false);
        let now = Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap();
        let mut p = plan();
        let g = gate(&mut p, &ws.at(now), false);
        let left: Vec<_> = p.actions.iter().map(|a| a.service.as_str()).collect();
        assert_eq!(left, vec!["cron"], "web waits on the held db");
        assert_eq!(
            p.services[0].blocked.as_deref(),
            Some("held by deny window `freeze` until 23:00 UTC")
        );
        assert!(p.services[1]
            .blocked
            .as_deref()
            .is_some_and(|b| b.starts_with("waits for db@h1: held by deny window")));
        assert_eq!(p.services[2].blocked, None);
        assert_eq!(g.held.get("freeze"), Some(&2));
    }

    #[test]
    fn an_override_passes_only_windows_that_allow_it() {
        let now = Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap();
        let mut p = plan();
        let g = gate(&mut p, &freeze(&[], false).at(now), true);
        assert!(p.actions.is_empty());
        assert!(g.overridden.is_empty());
        let mut p = plan();
        let g = gate(&mut p, &freeze(&[], true).at(now), true);
        assert_eq!(p.actions.len(), 3);
        assert_eq!(g.overridden.len(), 3);
        assert!(g.held.is_empty());
    }
}
