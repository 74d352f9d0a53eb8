//! Gates between plan and apply: sync windows (`window::gate`), then
//! observe / approve modes (`approval::hold`). What they hold leaves the
//! plan; its services say why in `blocked`.

use super::context::now_unix;
use super::status::Awaiting;
use super::worker::{Gates, Worker};
use crate::approval::Held;
use crate::model::{Desired, Observation};
use crate::notify::{Event, EventKind};
use crate::plan::{self, Plan};
use crate::window::Gated;
use std::collections::BTreeMap;

impl Worker {
    pub(super) fn plan_gated(
        &self,
        desired: &Desired,
        observed: &BTreeMap<String, Observation>,
        gates: Gates<'_>,
    ) -> Plan {
        let mut p = plan::plan(desired, observed);
        let approved = gates
            .acting
            .then(|| self.ctx.lock().approved.clone())
            .flatten();
        let (gated, held) = self.gates(gates, approved).hold(&mut p);
        self.publish_windows(gated);
        if !self.ctx.config.mode.all_auto() {
            self.publish_approval(held);
        }
        p
    }

    /// The gates `apply` keeps in force under each host's lock.
    pub(super) fn gates(&self, g: Gates<'_>, approved: Option<String>) -> crate::gate::Gates {
        crate::gate::Gates {
            windows: self.ctx.windows.clone(),
            overriding: g.overriding,
            modes: self.ctx.config.mode.clone(),
            revision: g.revision.to_string(),
            approved,
        }
    }

    fn publish_windows(&self, gated: Gated) {
        let ctx = &self.ctx;
        if ctx.windows.is_empty() {
            return;
        }
        ctx.metrics.set_held(&gated.held);
        if !gated.overridden.is_empty() {
            tracing::warn!(overridden = ?gated.overridden, "manual override of sync windows");
            let mut s = ctx.lock();
            for o in gated.overridden {
                if !s.overrides.contains(&o) {
                    s.overrides.push(o);
                }
            }
        }
    }

    /// Keep the plan awaiting approval current; notify once per new id.
    fn publish_approval(&self, held: Held) {
        let ctx = &self.ctx;
        let mut s = ctx.lock();
        if let Some(id) = held.applying {
            tracing::info!(plan = %id, "applying the approved plan");
            s.approved = None;
            s.awaiting = None;
            s.applying = Some(id);
        } else if held.pending.is_none() {
            s.awaiting = None;
        }
        let mut fresh = None;
        if let Some(p) = held.pending {
            if s.awaiting.as_ref().map(|a| &a.pending.id) != Some(&p.id) {
                // What was approved, if anything, is no longer what would be done.
                s.approved = None;
                fresh = Some((p.id.clone(), p.revision.clone(), p.actions.len()));
                s.awaiting = Some(Awaiting {
                    pending: p,
                    since: now_unix(),
                });
            }
        }
        ctx.metrics.set_awaiting_approval(s.awaiting.is_some());
        drop(s);
        if let Some((id, revision, n)) = fresh {
            tracing::info!(plan = %id, actions = n, "plan awaiting approval");
            ctx.notify(Event {
                kind: EventKind::AwaitingApproval,
                controller: ctx.config.ident.clone(),
                reconcile: None,
                revision: Some(revision),
                summary: format!("plan {id}: {n} action(s) await approval (tend approve {id})"),
                actions: vec![],
                errors: vec![],
            });
        }
    }
}
