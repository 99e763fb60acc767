//! The HTTP admin surface: `/healthz`, `/readyz` and `/metrics` (no
//! authentication), and the REST API under `/api/` (bearer tokens and
//! roles; see [`api`] and this crate's README).
#![warn(missing_docs)]

pub mod api;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use sluice_proxy::ProxyState;
use tokio::net::TcpListener;

/// `s` as HTML text or attribute value (`<`, `>`, `&`, `"`, `'` escaped).
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The admin routes.
pub fn router(state: Arc<ProxyState>) -> Router {
    let api = api::router(state.clone());
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
        .nest("/api", api)
}

/// Serve the admin routes until the process ends.
pub async fn serve(listener: TcpListener, state: Arc<ProxyState>) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

/// Ready while accepting sessions; 503 once draining so a load balancer
/// stops sending new connections.
async fn readyz(State(state): State<Arc<ProxyState>>) -> impl IntoResponse {
    if state.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

async fn metrics(State(state): State<Arc<ProxyState>>) -> impl IntoResponse {
    let mut text = state.metrics.render(state.is_draining());
    if let Some(t) = &state.tracer {
        use std::sync::atomic::Ordering::Relaxed;
        for (name, help, value) in [
            (
                "sluice_otlp_spans_exported_total",
                "Spans accepted by the OTLP collector.",
                t.exported.load(Relaxed),
            ),
            (
                "sluice_otlp_spans_dropped_total",
                "Spans dropped because the export queue was full.",
                t.dropped.load(Relaxed),
            ),
            (
                "sluice_otlp_export_failures_total",
                "OTLP export requests that failed (their spans are lost).",
                t.failed.load(Relaxed),
            ),
        ] {
            text.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
            ));
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
