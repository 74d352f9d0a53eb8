//! HTTP: `/metrics`, `/healthz`, `/readyz`, `/status` (JSON), `/` (HTML),
//! `/reconciles/{id}`, `/ledger`, `POST /reconcile` (bearer token) and `POST /webhook`
//! (GitHub / Gitea push, HMAC-SHA256).

mod html;

use crate::controller::coalesce::Trigger;
use crate::controller::context::Context;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;

pub fn router(ctx: Arc<Context>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/reconciles/{id}", get(reconcile_by_id))
        .route("/ledger", get(ledger))
        .route("/reconcile", post(reconcile))
        .route("/plans/{id}/approve", post(approve))
        .route("/webhook", post(webhook))
        .with_state(ctx)
}

/// Serve until `shutdown` resolves.
pub async fn serve(
    ctx: Arc<Context>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(ctx))
        .with_graceful_shutdown(shutdown)
        .await
}

/// OpenMetrics for scrapers that ask for it (Prometheus does), the classic
/// text format for everyone else (curl, promtool).
async fn metrics(State(ctx): State<Arc<Context>>, headers: HeaderMap) -> Response {
    let open = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    if open {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            ctx.metrics.encode(),
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            ctx.metrics.encode_prometheus(),
        )
            .into_response()
    }
}

async fn readyz(State(ctx): State<Arc<Context>>) -> Response {
    if ctx.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "first reconcile not finished\n",
        )
            .into_response()
    }
}

async fn status(State(ctx): State<Arc<Context>>) -> Response {
    Json(ctx.status()).into_response()
}

async fn index(State(ctx): State<Arc<Context>>) -> Html<String> {
    Html(html::render(&ctx.status()))
}

async fn reconcile_by_id(State(ctx): State<Arc<Context>>, Path(id): Path<u64>) -> Response {
    match ctx.reconcile_record(id) {
        Some(r) => Json(r).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            format!("reconcile {id} is not in the history\n"),
        )
            .into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct LedgerQuery {
    limit: Option<usize>,
    /// Entries older than this `seq` (the previous page's `next_before`).
    before: Option<u64>,
    /// Only reconciles that acted on this service.
    service: Option<String>,
}

/// Most entries one page gives.
const LEDGER_PAGE_MAX: usize = 500;

/// `GET /ledger`: newest first, paged by `before`.
async fn ledger(State(ctx): State<Arc<Context>>, Query(q): Query<LedgerQuery>) -> Response {
    let limit = q.limit.unwrap_or(50).clamp(1, LEDGER_PAGE_MAX);
    let ledger = ctx.ledger.clone();
    let read =
        tokio::task::spawn_blocking(move || ledger.page(limit, q.before, q.service.as_deref()))
            .await;
    match read {
        Ok(Ok(page)) => Json(page).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct ReconcileQuery {
    /// Answer only when the queued reconcile has finished.
    #[serde(default)]
    wait: bool,
    /// Act past sync windows that allow a manual override.
    #[serde(default)]
    override_window: bool,
}

/// The optional JSON body of `POST /reconcile`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReconcileBody {
    #[serde(default)]
    override_window: bool,
}

/// Equal without leaking where the inputs differ (or their lengths: both
/// sides are hashed first).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let (ha, hb) = (Sha256::digest(a), Sha256::digest(b));
    ha.iter()
        .zip(hb.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

fn unauthorized(why: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"tend\"")],
        format!("{why}\n"),
    )
        .into_response()
}

/// The bearer token check every POST but the webhook's makes.
fn authorized(ctx: &Context, headers: &HeaderMap) -> Result<(), &'static str> {
    let Some(token) = ctx.token.as_deref() else {
        return Err("no token configured on the controller (token_file / token_env)");
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err("wrong token"),
        None => Err("missing bearer token"),
    }
}

/// `POST /plans/{id}/approve`: run the plan awaiting approval, if it is
/// still `id`; 409 when the plan changed since (a stale id).
async fn approve(
    State(ctx): State<Arc<Context>>,
    Path(id): Path<String>,
    Query(q): Query<ReconcileQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(why) = authorized(&ctx, &headers) {
        return unauthorized(why);
    }
    if let Err(current) = ctx.approve(&id) {
        let now = match current {
            Some(c) => format!("the plan awaiting approval is {c}"),
            None => "no plan awaits approval".into(),
        };
        return (
            StatusCode::CONFLICT,
            Json(serde_json::json!({
                "error": format!("plan {id} is not the current plan: {now}"),
            })),
        )
            .into_response();
    }
    let ticket = ctx.trigger(Trigger::Api);
    let mut answer =
        serde_json::json!({ "plan": id, "id": ticket.id, "coalesced": ticket.coalesced });
    if q.wait {
        ctx.wait_for(ticket.id).await;
        answer["reconcile"] = serde_json::json!(ctx.reconcile_record(ticket.id));
        return Json(answer).into_response();
    }
    (StatusCode::ACCEPTED, Json(answer)).into_response()
}

async fn reconcile(
    State(ctx): State<Arc<Context>>,
    Query(q): Query<ReconcileQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(why) = authorized(&ctx, &headers) {
        return unauthorized(why);
    }
    let from_cli = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.starts_with("tend/"));
    let trigger = if from_cli { Trigger::Cli } else { Trigger::Api };
    let asked: ReconcileBody = if body.iter().all(u8::is_ascii_whitespace) {
        ReconcileBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return (StatusCode::BAD_REQUEST, format!("body: {e}\n")).into_response();
            }
        }
    };
    let override_window = q.override_window || asked.override_window;
    if override_window {
        tracing::warn!(
            trigger = trigger.as_str(),
            "reconcile asked to override sync windows"
        );
    }
    let ticket = ctx.trigger_with(trigger, override_window);
    if q.wait {
        ctx.wait_for(ticket.id).await;
        let record = ctx.reconcile_record(ticket.id);
        return Json(serde_json::json!({
            "id": ticket.id,
            "coalesced": ticket.coalesced,
            "trigger": trigger,
            "reconcile": record,
        }))
        .into_response();
    }
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "id": ticket.id, "coalesced": ticket.coalesced, "trigger": trigger })),
    )
        .into_response()
}

/// Check a push webhook's signature: GitHub `X-Hub-Signature-256: sha256=<hex>`,
/// Gitea `X-Gitea-Signature: <hex>`, both HMAC-SHA256 of the body.
pub fn verify_webhook(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let sig = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
        .or_else(|| {
            headers
                .get("x-gitea-signature")
                .and_then(|v| v.to_str().ok())
        });
    let Some(sig) = sig.and_then(|s| hex::decode(s.trim()).ok()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

async fn webhook(State(ctx): State<Arc<Context>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(secret) = ctx.webhook_secret.as_deref() else {
        return (
            StatusCode::FORBIDDEN,
            "webhooks are off: no webhook_secret_file configured\n",
        )
            .into_response();
    };
    if !verify_webhook(secret, &headers, &body) {
        return (StatusCode::FORBIDDEN, "bad signature\n").into_response();
    }
    let event = headers
        .get("x-github-event")
        .or_else(|| headers.get("x-gitea-event"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("push");
    if event == "ping" {
        return (StatusCode::OK, "pong\n").into_response();
    }
    let ticket = ctx.trigger(Trigger::Webhook);
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "id": ticket.id, "coalesced": ticket.coalesced, "trigger": "webhook" })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn github_and_gitea_signatures_verify_and_wrong_ones_do_not() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let mut gh = HeaderMap::new();
        gh.insert(
            "x-hub-signature-256",
            format!("sha256={}", sign("s3", body)).parse().unwrap(),
        );
        assert!(verify_webhook("s3", &gh, body));
        assert!(!verify_webhook("other", &gh, body));
        assert!(!verify_webhook("s3", &gh, b"tampered"));
        let mut gitea = HeaderMap::new();
        gitea.insert("x-gitea-signature", sign("s3", body).parse().unwrap());
        assert!(verify_webhook("s3", &gitea, body));
        assert!(!verify_webhook("s3", &HeaderMap::new(), body));
    }

    #[test]
    fn tokens_compare_by_value() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
