//! The REST API under `/api/`: live sessions, the audit trail, usage and
//! lineage, targets, policy reload and validation, and its own OpenAPI
//! document. JSON in and out; errors are `{"error": …, "code": …}`.
//!
//! Every route needs `Authorization: Bearer <token>` ([`auth`]) and a role:
//!
//! | route | roles |
//! |---|---|
//! | `GET /api/openapi.json`, `GET /api/sessions` | admin, auditor, approver |
//! | `GET /api/audit`, `/api/usage`, `/api/usage/lineage/{table}`, `/api/targets` | admin, auditor |
//! | `DELETE /api/sessions/{id}`, `POST /api/policy/reload`, `POST /api/policy/validate` | admin |
//! | `GET /api/approvals`, `GET /api/approvals/{id}` | admin, auditor, approver |
//! | `POST /api/approvals/{id}/approve`, `…/deny` | approver, admin (and the request's approver group) |
//! | `GET /api/approvals/link?t=…`, `POST /api/approvals/callback` | a signed link / a signed chat callback |
//!
//! Every call that changes something records an `admin.action` audit event
//! (actor, action, object, outcome), also when it is refused for lack of a
//! role or fails. Under `[audit] on_spool_full = "fail_closed"` nothing is
//! changed while the audit trail cannot record (503 `audit_unavailable`).

pub mod approvals;
pub mod auth;
pub mod error;
pub mod openapi;
pub mod params;
pub mod policy;
pub mod store;
pub mod targets;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::Router;
use serde_json::json;
use sluice_audit::{AdminAction, EventBody, Query, UsageQuery};
use sluice_config::AdminRole;
use sluice_proxy::ProxyState;

use auth::{authenticate, require, Caller};
use error::{json_response, ApiError};
use params::{check_text, shown, MAX_NAME, MAX_TEXT};
use store::AuditStore;

/// Largest policy text `POST /api/policy/validate` takes.
pub const MAX_POLICY_BYTES: usize = 1 << 20;
/// Default page size of `GET /api/audit`.
pub const DEFAULT_PAGE: i64 = 50;
/// How long a search waits for events recorded just before it to reach
/// the store (read-your-writes), before searching anyway.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

const EVERYONE: &[AdminRole] = &[AdminRole::Admin, AdminRole::Auditor, AdminRole::Approver];
const READERS: &[AdminRole] = &[AdminRole::Admin, AdminRole::Auditor];
const ADMINS: &[AdminRole] = &[AdminRole::Admin];

/// State of the API.
pub struct Api {
    proxy: Arc<ProxyState>,
    store: Arc<AuditStore>,
}

/// The caller's address, when the server knows it.
struct Peer(Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

/// The `/api` routes (to be nested under `/api`).
pub fn router(proxy: Arc<ProxyState>) -> Router {
    let config = proxy.runtime().config.clone();
    let api = Arc::new(Api {
        store: Arc::new(AuditStore::new(&config.audit, proxy.data_dir())),
        proxy,
    });
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/sessions", get(list_sessions))
        .route("/sessions/{id}", delete(kill_session))
        .route("/audit", get(search_audit))
        .route("/usage", get(usage))
        .route("/usage/lineage/{table}", get(lineage))
        .route("/targets", get(list_targets))
        .route("/approvals", get(approvals::list))
        .route("/approvals/link", get(approvals::link_page))
        .route(
            "/approvals/callback",
            post(approvals::callback).layer(DefaultBodyLimit::max(approvals::MAX_CALLBACK_BYTES)),
        )
        .route("/approvals/{id}", get(approvals::get))
        .route("/approvals/{id}/approve", post(approvals::approve))
        .route("/approvals/{id}/deny", post(approvals::deny))
        .route("/policy/reload", post(reload))
        .route(
            "/policy/validate",
            post(validate_policy).layer(DefaultBodyLimit::max(MAX_POLICY_BYTES)),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(api)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such path; the routes are in /api/openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

fn ok(value: &impl serde::Serialize) -> Response {
    json_response(StatusCode::OK, value)
}

impl Api {
    /// Authenticate and check the role.
    async fn caller(
        &self,
        headers: &HeaderMap,
        roles: &[AdminRole],
        what: &str,
    ) -> Result<Caller, ApiError> {
        let caller = authenticate(self.proxy.runtime().config.clone(), headers).await?;
        require(&caller, roles, what)?;
        Ok(caller)
    }

    /// Authenticate for an admin action that changes something; a caller
    /// without the role is refused and the attempt recorded.
    async fn actor(
        &self,
        headers: &HeaderMap,
        peer: &Peer,
        action: &str,
        object: &str,
        what: &str,
    ) -> Result<Caller, ApiError> {
        self.actor_with(headers, peer, action, object, what, ADMINS)
            .await
    }

    /// [`actor`](Self::actor) for one of `roles`.
    async fn actor_with(
        &self,
        headers: &HeaderMap,
        peer: &Peer,
        action: &str,
        object: &str,
        what: &str,
        roles: &[AdminRole],
    ) -> Result<Caller, ApiError> {
        let caller = authenticate(self.proxy.runtime().config.clone(), headers).await?;
        if let Err(e) = require(&caller, roles, what) {
            self.record(&caller, peer, action, object, "denied", None, None);
            return Err(e);
        }
        // Nothing changes unrecorded: under fail_closed, wait until the
        // audit trail can record again.
        self.proxy.audit().check().map_err(|e| {
            ApiError::unavailable(
                "audit_unavailable",
                format!("the audit trail cannot record now ({e}); nothing was done"),
            )
        })?;
        Ok(caller)
    }

    /// Record an `admin.action` event and log it (never a token).
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        caller: &Caller,
        peer: &Peer,
        action: &str,
        object: &str,
        outcome: &str,
        detail: Option<String>,
        environment: Option<String>,
    ) {
        let from = match peer.0 {
            Some(a) => format!("admin API from {a} ({})", caller.via),
            None => format!("admin API ({})", caller.via),
        };
        let detail = Some(match detail {
            Some(d) => format!("{d}; {from}"),
            None => from,
        });
        tracing::info!(
            actor = %caller.name,
            action,
            object,
            outcome,
            "admin action"
        );
        let event = EventBody::Admin(AdminAction {
            actor: caller.actor(),
            action: action.to_owned(),
            object: object.to_owned(),
            outcome: outcome.to_owned(),
            detail,
            environment,
        });
        if let Err(e) = self.proxy.audit().record(event) {
            tracing::error!(error = %e, action, "cannot record an admin action in the audit trail");
        }
    }
}

/// `GET /api/openapi.json`.
async fn openapi(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    api.caller(&headers, EVERYONE, "read the API description")
        .await?;
    params::parse(uri.query(), &[])?;
    Ok(ok(&openapi::document()))
}

/// `GET /api/sessions`.
async fn list_sessions(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    api.caller(&headers, EVERYONE, "list sessions").await?;
    params::parse(uri.query(), &[])?;
    Ok(ok(&json!({ "sessions": api.proxy.sessions() })))
}

fn path_error(e: PathRejection) -> ApiError {
    ApiError::bad_request(format!("the path is not valid: {}", e.body_text()))
}

fn valid_session_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `DELETE /api/sessions/{id}`.
async fn kill_session(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    uri: Uri,
    peer: Peer,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = id.map(|Path(id)| id);
    let object = match &id {
        Ok(i) if valid_session_id(i) => i.clone(),
        Ok(i) => shown(i),
        Err(_) => "?".into(),
    };
    let caller = api
        .actor(&headers, &peer, "session.kill", &object, "end sessions")
        .await?;
    let id = id.map_err(path_error)?;
    params::parse(uri.query(), &[])?;
    if !valid_session_id(&id) {
        return Err(ApiError::bad_request(format!(
            "id: {} is not a session id (letters, digits, - and _, at most 64)",
            shown(&id)
        )));
    }
    let info = api.proxy.sessions().into_iter().find(|s| s.id == id);
    let killed = info.is_some() && api.proxy.kill_session(&id);
    match info.filter(|_| killed) {
        Some(s) => {
            api.record(
                &caller,
                &peer,
                "session.kill",
                &id,
                "ok",
                Some(format!(
                    "session of {} on target {} from {}",
                    s.principal, s.target, s.client
                )),
                Some(s.environment.clone()),
            );
            Ok(ok(&json!({
                "id": id,
                "killed": true,
                "principal": s.principal,
                "target": s.target,
            })))
        }
        None => {
            api.record(&caller, &peer, "session.kill", &id, "not_found", None, None);
            Err(ApiError::not_found(format!("no live session has id {id}")))
        }
    }
}

/// The search filters of `GET /api/audit`.
const AUDIT_PARAMS: &[&str] = &[
    "principal",
    "target",
    "environment",
    "table",
    "column",
    "decision",
    "kind",
    "session",
    "since",
    "until",
    "text",
    "limit",
    "cursor",
];

/// Kinds `kind=` accepts: groups and event codes.
const KINDS: &[&str] = &[
    "statement",
    "session",
    "auth",
    "admin",
    "db.statement",
    "session.start",
    "session.end",
    "auth.failure",
    "admin.action",
];

/// `GET /api/audit`.
async fn search_audit(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    api.caller(&headers, READERS, "search the audit trail")
        .await?;
    let p = params::parse(uri.query(), AUDIT_PARAMS)?;
    let now = sluice_audit::util::now_ms();
    let decision = p
        .choice("decision", &["allow", "deny", "approval"])?
        .and_then(|d| sluice_audit::Decision::parse(&d));
    let session = p.text("session", 64)?;
    let q = Query {
        principal: p.text("principal", MAX_NAME)?,
        target: p.text("target", MAX_NAME)?,
        environment: p.text("environment", MAX_NAME)?,
        table: p.text("table", MAX_NAME)?,
        column: p.text("column", MAX_NAME)?,
        decision,
        kind: p.choice("kind", KINDS)?,
        session,
        chain: None,
        since: p.time("since", now)?,
        until: p.time("until", now)?,
        text: p.text("text", MAX_TEXT)?,
        limit: usize::try_from(p.int("limit", 1, 1000)?.unwrap_or(DEFAULT_PAGE)).unwrap_or(50),
        cursor: p.ulid("cursor")?,
        parsed_only: false,
    };
    // Read your writes: what was recorded a moment ago is searchable.
    let _ = api.proxy.audit().flush(true, FLUSH_WAIT).await;
    let page = api.store.run(move |s| s.search(&q)).await?;
    Ok(ok(&page))
}

/// `GET /api/usage`.
async fn usage(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    api.caller(&headers, READERS, "read usage").await?;
    let p = params::parse(
        uri.query(),
        &[
            "principal",
            "target",
            "environment",
            "table",
            "column",
            "since",
            "until",
        ],
    )?;
    let now = sluice_audit::util::now_ms();
    let q = UsageQuery {
        principal: p.text("principal", MAX_NAME)?,
        target: p.text("target", MAX_NAME)?,
        environment: p.text("environment", MAX_NAME)?,
        table: p.text("table", MAX_NAME)?,
        column: p.text("column", MAX_NAME)?,
        since: p.time("since", now)?,
        until: p.time("until", now)?,
    };
    let _ = api.proxy.audit().flush(true, FLUSH_WAIT).await;
    let rows = api.store.run(move |s| s.usage(&q)).await?;
    Ok(ok(&json!({ "rows": rows })))
}

/// `GET /api/usage/lineage/{table}`.
async fn lineage(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    uri: Uri,
    table: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    api.caller(&headers, READERS, "read lineage").await?;
    let Path(table) = table.map_err(path_error)?;
    check_text("table", &table, MAX_NAME)?;
    let p = params::parse(uri.query(), &["depth"])?;
    let depth = usize::try_from(p.int("depth", 1, 20)?.unwrap_or(5)).unwrap_or(5);
    let _ = api.proxy.audit().flush(true, FLUSH_WAIT).await;
    let t = table.clone();
    let edges = api
        .store
        .run(move |s| sluice_audit::usage::trace_lineage(s, &t, depth))
        .await?;
    Ok(ok(
        &json!({ "table": table, "depth": depth, "edges": edges }),
    ))
}

/// `GET /api/targets`.
async fn list_targets(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    api.caller(&headers, READERS, "list targets").await?;
    params::parse(uri.query(), &[])?;
    let config = api.proxy.runtime().config.clone();
    Ok(ok(
        &json!({ "targets": targets::list(&config.targets).await }),
    ))
}

/// `POST /api/policy/reload`.
async fn reload(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    uri: Uri,
    peer: Peer,
) -> Result<Response, ApiError> {
    let object = api.proxy.config_path().display().to_string();
    let caller = api
        .actor(
            &headers,
            &peer,
            "config.reload",
            &object,
            "reload the configuration",
        )
        .await?;
    params::parse(uri.query(), &[])?;
    let proxy = api.proxy.clone();
    let result = tokio::task::spawn_blocking(move || proxy.reload())
        .await
        .map_err(|e| ApiError::internal(format!("the reload failed: {e}")))?;
    match result {
        Ok(()) => {
            tracing::info!(actor = %caller.name, "configuration reloaded by the admin API");
            api.record(&caller, &peer, "config.reload", &object, "ok", None, None);
            Ok(ok(&json!({ "status": "ok" })))
        }
        Err(e) => {
            tracing::error!(error = %e, "reload failed; keeping the previous configuration");
            api.record(
                &caller,
                &peer,
                "config.reload",
                &object,
                "failed",
                Some(e.clone()),
                None,
            );
            Err(ApiError::unprocessable(
                "reload_failed",
                format!("{e}; the previous configuration stays in force"),
            ))
        }
    }
}

/// `POST /api/policy/validate`.
async fn validate_policy(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    api.caller(&headers, ADMINS, "validate policies").await?;
    let p = params::parse(uri.query(), &["replaces"])?;
    let replaces = p.nonempty("replaces", 128)?;
    if let Some(r) = &replaces {
        if !policy::valid_file_name(r) {
            return Err(ApiError::bad_request(format!(
                "replaces: {} is not a policy file name like rules.cedar",
                shown(r)
            )));
        }
    }
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(format!(
                "the policy text is larger than {MAX_POLICY_BYTES} bytes"
            ))
        } else {
            ApiError::bad_request(format!("cannot read the body: {}", e.body_text()))
        }
    })?;
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the body is empty: send the Cedar policy text to check",
        ));
    }
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::bad_request("the policy text is not UTF-8"))?;
    let config = api.proxy.runtime().config.clone();
    let valid = tokio::task::spawn_blocking(move || {
        policy::validate(
            &text,
            config.policy.dir.as_deref(),
            &config.policy.disable,
            replaces.as_deref(),
        )
    })
    .await
    .map_err(|e| ApiError::internal(format!("the validation failed: {e}")))??;
    Ok(ok(&valid))
}
