//! Plan, then approve: per instance a mode (`observe`, `approve`, `auto`)
//! from tend.yaml. In `approve`, actions wait, published under an id that
//! digests the revision, the actions and what was observed of their
//! instances; they run only once that very id is approved. Pure: the
//! controller keeps the state.

use crate::instance::InstanceId;
use crate::plan::{Action, Plan};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Drift is reported, never acted on.
    Observe,
    /// Actions wait for `tend approve ID`.
    Approve,
    #[default]
    Auto,
}

/// `mode:` in tend.yaml. The most specific entry wins: service, then host,
/// then `default`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Modes {
    pub default: Mode,
    pub hosts: BTreeMap<String, Mode>,
    pub services: BTreeMap<String, Mode>,
}

impl Modes {
    pub fn of(&self, service: &str, host: &str) -> Mode {
        self.services
            .get(service)
            .or_else(|| self.hosts.get(host))
            .copied()
            .unwrap_or(self.default)
    }

    pub fn all_auto(&self) -> bool {
        self.default == Mode::Auto
            && self.hosts.values().all(|m| *m == Mode::Auto)
            && self.services.values().all(|m| *m == Mode::Auto)
    }
}

/// The actions waiting for approval, under their id.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pending {
    pub id: String,
    pub revision: String,
    pub actions: Vec<Action>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Held {
    /// Waiting for approval (None: nothing in approve mode to do).
    pub pending: Option<Pending>,
    /// The approved id these actions run under (left in the plan).
    pub applying: Option<String>,
}

/// The id of approve-mode `actions`: what would be done, at which revision,
/// from which observed state of those instances.
pub fn plan_id(revision: &str, actions: &[Action], p: &Plan) -> String {
    let ids: BTreeSet<InstanceId> = actions.iter().map(Action::id).collect();
    let seen: Vec<_> = p
        .services
        .iter()
        .filter(|s| ids.contains(&s.id()))
        .map(|s| {
            (
                &s.service,
                &s.host,
                s.status,
                &s.reasons,
                &s.observed_version,
                &s.desired_version,
            )
        })
        .collect();
    let what: Vec<_> = actions
        .iter()
        .map(|a| (a.kind, &a.service, &a.host, &a.reasons))
        .collect();
    let text = serde_json::to_string(&(revision, what, seen)).unwrap_or_default();
    hex::encode(&Sha256::digest(text.as_bytes())[..6])
}

/// Take observe- and approve-mode actions (and those waiting on them) out
/// of `p`, unless `approved` is the id of the approve-mode ones.
pub fn hold(p: &mut Plan, modes: &Modes, revision: &str, approved: Option<&str>) -> Held {
    let mut out = Held::default();
    let mut held: BTreeMap<InstanceId, Mode> = BTreeMap::new();
    for a in &p.actions {
        match modes.of(&a.service, &a.host) {
            Mode::Auto => {
                if let Some(m) = a.after.iter().find_map(|d| held.get(d)) {
                    held.insert(a.id(), *m);
                }
            }
            m => {
                held.insert(a.id(), m);
            }
        }
    }
    let waiting: Vec<Action> = p
        .actions
        .iter()
        .filter(|a| held.get(&a.id()) == Some(&Mode::Approve))
        .cloned()
        .collect();
    let id = (!waiting.is_empty()).then(|| plan_id(revision, &waiting, p));
    let approved_now = id.is_some() && id.as_deref() == approved;
    if approved_now {
        held.retain(|_, m| *m != Mode::Approve);
        out.applying = id;
    } else if let Some(id) = id {
        out.pending = Some(Pending {
            id,
            revision: revision.into(),
            actions: waiting,
        });
    }
    p.actions.retain(|a| !held.contains_key(&a.id()));
    for sp in &mut p.services {
        let why = match held.get(&sp.id()) {
            Some(Mode::Observe) => "observe mode: reported, not acted on".to_string(),
            Some(Mode::Approve) => match &out.pending {
                Some(pd) => format!(
                    "awaiting approval of plan {} (tend approve {})",
                    pd.id, pd.id
                ),
                None => continue,
            },
            _ => continue,
        };
        sp.blocked = Some(match sp.blocked.take() {
            Some(other) => format!("{why}; {other}"),
            None => why,
        });
    }
    out
}

#[cfg(test)]
mod tests;
