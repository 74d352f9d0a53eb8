//! The seam between the loop and the stages that touch hosts: `observe` and
//! `apply`. The loop only sees [`Engine::observe`] and [`Engine::apply`].

use crate::config::Config;
use crate::model::{Desired, Host, Observation};
use crate::plan::{ActionKind, Plan};
use serde::Serialize;
use std::collections::BTreeMap;

/// How one action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionResult {
    Success,
    Failure,
    RolledBack,
    Skipped,
}

impl ActionResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionResult::Success => "success",
            ActionResult::Failure => "failure",
            ActionResult::RolledBack => "rolled_back",
            ActionResult::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionOutcome {
    pub kind: ActionKind,
    pub host: String,
    pub service: String,
    pub result: ActionResult,
    /// One line for people (why it failed or was skipped).
    pub message: Option<String>,
    /// What the host printed (the caller keeps the tail).
    pub output: String,
}

/// Observes and converges hosts.
pub struct Engine {
    _config: Config,
}

impl Engine {
    pub fn new(config: &Config) -> Engine {
        Engine { _config: config.clone() }
    }

    /// One probe of one host. The caller bounds it with the host timeout.
    pub async fn observe(&self, host: &Host, desired: &Desired) -> Observation {
        // SEAM(observe): replace with tend::observe once it exists.
        let _ = (host, desired);
        Observation::Unreachable { reason: "observe is not built yet".into() }
    }

    /// Run the plan's actions; one outcome per action, in the plan's order.
    pub async fn apply(
        &self,
        plan: &Plan,
        desired: &Desired,
        observed: &BTreeMap<String, Observation>,
        revision: &str,
    ) -> Vec<ActionOutcome> {
        // SEAM(apply): replace with tend::apply once it exists.
        let _ = (desired, observed, revision);
        plan.actions
            .iter()
            .map(|a| ActionOutcome {
                kind: a.kind,
                host: a.host.clone(),
                service: a.service.clone(),
                result: ActionResult::Skipped,
                message: Some("apply is not built yet".into()),
                output: String::new(),
            })
            .collect()
    }
}
