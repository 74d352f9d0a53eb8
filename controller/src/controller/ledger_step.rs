//! Ledger: a reconcile that acted or failed becomes one ledger entry, with
//! versions before and after each action and its output tail, redacted.

use super::coalesce::Trigger;
use super::status::{self, LedgerSummary};
use super::worker::{Done, Worker};
use crate::apply::output::Redactor;
use crate::ledger::{ActionEntry, Entry};
use crate::plan::Plan;

/// Who a trigger stands for (tokens carry no names: the token is one).
pub fn who(t: Trigger) -> &'static str {
    match t {
        Trigger::Schedule => "schedule",
        Trigger::Api => "api token",
        Trigger::Cli => "api token (tend CLI)",
        Trigger::Webhook => "signed webhook",
        Trigger::Watch => "directory watch",
        Trigger::Startup => "controller start",
    }
}

fn version(p: &Plan, service: &str, host: &str) -> Option<String> {
    p.services
        .iter()
        .find(|s| s.service == service && s.host == host)
        .and_then(|s| s.observed_version.clone())
}

impl Worker {
    /// Append the reconcile to the ledger when it acted, or failed in a way
    /// not already recorded (a host down for hours is one entry, not one a tick).
    pub(super) async fn record_ledger(&self, d: Done<'_>, overrode: Vec<String>) {
        let ctx = self.ctx.clone();
        let failed = d.result != "success";
        {
            let mut s = ctx.lock();
            let same = failed && s.ledger_last_error.as_deref() == d.error;
            s.ledger_last_error = if failed {
                d.error.map(str::to_string)
            } else {
                None
            };
            if d.outcomes.is_empty() && (!failed || same) {
                return;
            }
        }
        let redactor = d.desired.map(Redactor::for_desired).unwrap_or_default();
        let actions = d
            .outcomes
            .iter()
            .map(|o| ActionEntry {
                kind: o.kind.as_str().into(),
                service: o.service.clone(),
                host: o.host.clone(),
                result: o.result.as_str().into(),
                version_before: version(d.before, &o.service, &o.host),
                version_after: version(d.after, &o.service, &o.host),
                message: o.message.as_deref().map(|m| redactor.redact(m)),
                output: redactor.redact(&status::tail(&o.output, status::OUTPUT_TAIL)),
                duration_seconds: (o.duration.as_secs_f64() * 1000.0).round() / 1000.0,
            })
            .collect();
        let entry = Entry {
            seq: 0,
            controller: ctx.config.ident.clone(),
            reconcile: d.q.id,
            at: (d.started * 1000.0).round() / 1000.0,
            duration_seconds: (d.duration * 1000.0).round() / 1000.0,
            trigger: d.q.trigger.as_str().into(),
            who: who(d.q.trigger).into(),
            revision: d.revision.map(str::to_string),
            result: d.result.into(),
            error: d.error.map(|e| redactor.redact(e)),
            overrode,
            plan: d.plan_id,
            actions,
        };
        let ledger = ctx.ledger.clone();
        let written = tokio::task::spawn_blocking(move || ledger.append(entry)).await;
        match written {
            Ok(Ok(e)) => {
                let mut s = ctx.lock();
                s.ledger_recent.push_front(LedgerSummary::of(&e));
                s.ledger_recent.truncate(super::status::LEDGER_RECENT);
            }
            Ok(Err(e)) => tracing::error!("{e}"),
            Err(e) => tracing::error!("ledger write task: {e}"),
        }
    }
}
