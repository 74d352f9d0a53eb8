//! Commit status: once a revision is reconciled, its outcome goes to the
//! forge (`forge` module) — once per revision and outcome, not every tick.

use super::worker::Worker;
use crate::forge::{self, Outcome};

impl Worker {
    pub(super) fn post_commit_status(&self, revision: &str, result: &str, actions: usize) {
        let ctx = self.ctx.clone();
        let Some(cfg) = ctx.config.commit_status.clone() else {
            return;
        };
        let outcome = Outcome::of_result(result);
        {
            let mut s = ctx.lock();
            let now = (revision.to_string(), format!("{outcome:?}"));
            if s.forge_posted.as_ref() == Some(&now) {
                return;
            }
            s.forge_posted = Some(now);
        }
        let description = match outcome {
            Outcome::Success => format!("{}: converged ({actions} action(s))", ctx.config.ident),
            _ => format!("{}: {result} — see tend status", ctx.config.ident),
        };
        let req = forge::request(&cfg, revision, outcome, &description);
        tokio::spawn(async move {
            let token = match crate::config::read_secret(&cfg.token_file) {
                Ok(t) => t,
                Err(e) => return tracing::warn!("commit status: {e}"),
            };
            if let Err(e) = forge::send(&req, &token).await {
                tracing::warn!("{e}");
                // Try again on the next reconcile of this revision.
                ctx.lock().forge_posted = None;
            }
        });
    }
}
