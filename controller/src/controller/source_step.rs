//! Source and load: poll, and on a new revision validate it; a revision
//! that does not validate is never applied (the last good one stays).

use super::context::{now_unix, Good};
use super::worker::Worker;
use crate::manifest::encrypted::AgeIdentities;
use crate::manifest::{self, Secrets};
use crate::notify::{Event, EventKind};
use crate::source::{self, Poll};
use std::sync::Arc;

impl Worker {
    /// Poll the source; on a new revision, load and validate it.
    pub(super) async fn refresh_source(&mut self, problems: &mut Vec<String>) {
        let ctx = self.ctx.clone();
        let in_force = ctx.lock().good.as_ref().map(|g| g.revision.clone());
        let polled = {
            let _t = ctx.metrics.phase_timer("source");
            self.source.poll(in_force.as_deref()).await
        };
        let snap = match polled {
            Ok(Poll::Unchanged { .. }) => {
                let mut s = ctx.lock();
                s.source.fetch_error = None;
                s.source.polled_at = Some(now_unix());
                if s.source.manifests_valid {
                    ctx.metrics.source_ok(now_unix());
                }
                return;
            }
            Ok(Poll::Changed(snap)) => snap,
            Err(e) => {
                tracing::warn!("source: {e}");
                ctx.metrics.source_error(e.source_reason());
                problems.push(format!("source: {e}"));
                let mut s = ctx.lock();
                s.source.fetch_error = Some(e.to_string());
                s.source.polled_at = Some(now_unix());
                // A refused signature is news once per revision, not every tick.
                if let crate::source::SourceError::Signature { revision, .. } = &e {
                    if s.notified_invalid.as_deref() != Some(revision.as_str()) {
                        s.notified_invalid = Some(revision.clone());
                        drop(s);
                        ctx.notify(Event {
                            kind: EventKind::Failure,
                            controller: ctx.config.ident.clone(),
                            reconcile: None,
                            revision: Some(revision.clone()),
                            summary: "revision refused: its signature does not verify".into(),
                            actions: vec![],
                            errors: vec![e.to_string()],
                        });
                    }
                }
                return;
            }
        };
        let loaded = {
            let _t = ctx.metrics.phase_timer("load");
            let age = ctx
                .config
                .secrets
                .age_identities
                .as_deref()
                .map(AgeIdentities::read);
            manifest::load_tree_with(
                &snap.files,
                &ctx.config.path,
                Secrets::Resolve,
                age.as_ref(),
            )
        };
        let mut s = ctx.lock();
        s.source.fetch_error = None;
        s.source.polled_at = Some(now_unix());
        s.source.newest = Some(snap.revision.clone());
        match loaded {
            Ok(l) => {
                tracing::info!(revision = %snap.revision, "manifests valid");
                let warnings: Vec<String> = l.warnings.iter().map(|w| w.to_string()).collect();
                s.good = Some(Good {
                    revision: snap.revision.clone(),
                    desired: Arc::new(l.desired),
                });
                s.source.revision = Some(snap.revision.clone());
                s.source.subject = Some(snap.subject);
                s.source.manifests_valid = true;
                s.source.errors.clear();
                s.source.warnings = warnings;
                ctx.metrics.manifests_valid(true);
                ctx.metrics.source_ok(now_unix());
                ctx.metrics.source(&snap.revision, self.source.branch());
            }
            Err(d) => {
                let errors: Vec<String> = d.0.iter().map(|x| x.to_string()).collect();
                tracing::warn!(revision = %snap.revision, "manifests refused: {d}");
                problems.push(format!(
                    "revision {} refused: {}",
                    source::short(&snap.revision),
                    errors.first().cloned().unwrap_or_default()
                ));
                s.source.manifests_valid = false;
                s.source.errors = errors.clone();
                ctx.metrics.manifests_valid(false);
                ctx.metrics.source_error("invalid");
                if s.notified_invalid.as_deref() != Some(snap.revision.as_str()) {
                    s.notified_invalid = Some(snap.revision.clone());
                    let kept = s
                        .good
                        .as_ref()
                        .map(|g| source::short(&g.revision).to_string());
                    drop(s);
                    ctx.notify(Event {
                        kind: EventKind::Failure,
                        controller: ctx.config.ident.clone(),
                        reconcile: None,
                        revision: Some(snap.revision.clone()),
                        summary: match kept {
                            Some(k) => format!("manifests refused; {k} stays in force"),
                            None => "manifests refused; nothing in force".into(),
                        },
                        actions: vec![],
                        errors,
                    });
                }
            }
        }
    }
}
