//! The gates as one value that travels into `apply`: apply plans again under
//! each host's lock (fresh observations), and what the windows and modes
//! hold must stay held in that plan too. Pure.

use crate::approval::{self, Held, Modes};
use crate::plan::Plan;
use crate::window::{self, Gated, Windows};

#[derive(Debug, Clone, Default)]
pub struct Gates {
    pub windows: Windows,
    /// A manual trigger asked to act past windows that allow it.
    pub overriding: bool,
    pub modes: Modes,
    pub revision: String,
    /// The approved plan id these actions may run under.
    pub approved: Option<String>,
}

impl Gates {
    /// Take what is held out of `p`, as of now.
    pub fn hold(&self, p: &mut Plan) -> (Gated, Held) {
        let gated = if self.windows.is_empty() {
            Gated::default()
        } else {
            window::gate(p, &self.windows.at(chrono::Utc::now()), self.overriding)
        };
        let held = if self.modes.all_auto() {
            Held::default()
        } else {
            approval::hold(p, &self.modes, &self.revision, self.approved.as_deref())
        };
        (gated, held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approval::Mode;
    use crate::plan::{Action, ActionKind, DriftReason, ServicePlan, Status};
    use crate::window::{WindowKind, WindowSpec};
    use std::time::Duration;

    fn plan(services: &[&str]) -> Plan {
        Plan {
            services: services
                .iter()
                .map(|s| ServicePlan {
                    service: s.to_string(),
                    host: "h1".into(),
                    status: Status::Drifted,
                    reasons: vec![DriftReason::Missing],
                    desired_version: Some("1".into()),
                    observed_version: None,
                    blocked: None,
                    oom_kills: 0,
                })
                .collect(),
            actions: services
                .iter()
                .map(|s| Action {
                    kind: ActionKind::Start,
                    service: s.to_string(),
                    host: "h1".into(),
                    after: vec![],
                    needs: vec![],
                    reasons: vec![DriftReason::Missing],
                    pause: Duration::ZERO,
                })
                .collect(),
            ..Plan::default()
        }
    }

    #[test]
    fn windows_and_modes_hold_together_and_an_all_auto_gate_without_windows_holds_nothing() {
        let always = WindowSpec {
            name: "freeze".into(),
            kind: WindowKind::Deny,
            schedule: "* * * * *".into(),
            duration: Duration::from_secs(120),
            timezone: "UTC".into(),
            hosts: vec![],
            services: vec!["a".into()],
            manual_override: false,
        };
        let g = Gates {
            windows: Windows::new(&[always]).unwrap(),
            modes: Modes {
                services: [("b".to_string(), Mode::Approve)].into(),
                ..Modes::default()
            },
            revision: "r".into(),
            ..Gates::default()
        };
        let mut p = plan(&["a", "b", "c"]);
        let (gated, held) = g.hold(&mut p);
        assert_eq!(gated.held.get("freeze"), Some(&1));
        assert!(held.pending.is_some());
        let left: Vec<_> = p.actions.iter().map(|a| a.service.as_str()).collect();
        assert_eq!(left, ["c"]);
        let mut p = plan(&["a", "b"]);
        let (gated, held) = Gates::default().hold(&mut p);
        assert_eq!((gated, held), (Gated::default(), Held::default()));
        assert_eq!(p.actions.len(), 2);
    }
}
