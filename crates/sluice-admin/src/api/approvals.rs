//! Approval requests over HTTP: list and read them, approve or deny them as
//! an authenticated approver, the page a signed chat link opens, and the
//! chat's interactive callback.
//!
//! Every decision, and every refused attempt, is an `admin.action` event
//! (`approval.approve` / `approval.deny`) in the audit trail. The store
//! applies the rules (single use, expiry, no self-approval, N of M from the
//! approver group, justification); this module only maps its answers to
//! HTTP.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use sluice_audit::approvals::{Approver, DecideError, ListFilter, Request, Status};
use sluice_audit::util::{format_time, now_ms};
use sluice_config::AdminRole;
use sluice_proxy::webhook::{self, LinkAction};

use crate::html_escape;

use super::auth::Caller;
use super::error::ApiError;
use super::params::{self, shown, MAX_NAME};
use super::{ok, path_error, Api, Peer, EVERYONE};

/// Who may decide (the store also checks the request's approver group).
const DECIDERS: &[AdminRole] = &[AdminRole::Approver, AdminRole::Admin];
/// Longest justification, in characters.
pub const MAX_JUSTIFICATION: usize = 1000;
/// Largest callback body.
pub const MAX_CALLBACK_BYTES: usize = 64 * 1024;

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn checked_id(id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) = id.map_err(path_error)?;
    if !valid_id(&id) {
        return Err(ApiError::bad_request(format!(
            "id: {} is not an approval request id",
            shown(&id)
        )));
    }
    Ok(id)
}

/// `GET /api/approvals`.
pub(super) async fn list(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    api.caller(&headers, EVERYONE, "list approval requests")
        .await?;
    let p = params::parse(
        uri.query(),
        &[
            "status",
            "principal",
            "target",
            "environment",
            "approver_group",
            "limit",
            "before",
        ],
    )?;
    let status = p
        .choice(
            "status",
            &[
                "pending",
                "approved",
                "denied",
                "expired",
                "used",
                "break_glass",
            ],
        )?
        .and_then(|s| s.parse::<Status>().ok());
    let limit = usize::try_from(p.int("limit", 1, 1000)?.unwrap_or(100)).unwrap_or(100);
    let filter = ListFilter {
        status,
        principal: p.text("principal", MAX_NAME)?,
        target: p.text("target", MAX_NAME)?,
        environment: p.text("environment", MAX_NAME)?,
        approver_group: p.text("approver_group", MAX_NAME)?,
        before: p.ulid("before")?,
        limit,
        now_ms: None,
    };
    let rows = api
        .proxy
        .approvals()
        .list(&filter)
        .await
        .map_err(store_error)?;
    let next = (rows.len() == limit)
        .then(|| rows.last().map(|r| r.id.clone()))
        .flatten();
    Ok(ok(&json!({ "approvals": rows, "next_before": next })))
}

fn store_error(e: sluice_audit::AuditError) -> ApiError {
    tracing::warn!(error = %e, "admin API: the approval store cannot be reached");
    ApiError::unavailable(
        "store_unavailable",
        format!("the approval store cannot be reached: {e}"),
    )
}

/// `GET /api/approvals/{id}`.
pub(super) async fn get(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    uri: Uri,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    api.caller(&headers, EVERYONE, "read approval requests")
        .await?;
    let id = checked_id(id)?;
    params::parse(uri.query(), &[])?;
    match api.proxy.approvals().get(&id).await.map_err(store_error)? {
        Some(r) => Ok(ok(&r)),
        None => Err(ApiError::not_found(format!(
            "no approval request has id {id}"
        ))),
    }
}

/// The optional body of approve and deny.
fn justification(body: &Bytes) -> Result<Option<String>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    let Some(obj) = v.as_object() else {
        return Err(ApiError::bad_request(
            "the body must be a JSON object like {\"justification\": \"...\"}",
        ));
    };
    if let Some(k) = obj.keys().find(|k| k.as_str() != "justification") {
        return Err(ApiError::bad_request(format!(
            "unknown field {}; accepted: justification",
            shown(k)
        )));
    }
    match obj.get("justification") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            params::check_text("justification", s, MAX_JUSTIFICATION)?;
            Ok((!s.trim().is_empty()).then(|| s.trim().to_owned()))
        }
        Some(_) => Err(ApiError::bad_request("justification: expected a string")),
    }
}

/// A refused decision as HTTP.
fn decide_error(e: DecideError) -> ApiError {
    let message = e.to_string();
    match e {
        DecideError::NotFound => ApiError::not_found(message),
        DecideError::NotPending(_) => {
            ApiError::with_status(StatusCode::CONFLICT, "not_pending", message)
        }
        DecideError::Expired => ApiError::with_status(StatusCode::CONFLICT, "expired", message),
        DecideError::AlreadyVoted => {
            ApiError::with_status(StatusCode::CONFLICT, "already_voted", message)
        }
        DecideError::SelfApproval => {
            ApiError::with_status(StatusCode::FORBIDDEN, "self_approval", message)
        }
        DecideError::NotInGroup(_) => {
            ApiError::with_status(StatusCode::FORBIDDEN, "not_in_group", message)
        }
        DecideError::JustificationRequired => {
            ApiError::unprocessable("justification_required", message)
        }
        DecideError::Store(e) => store_error(e),
    }
}

/// What a decision left the request as, in words.
pub fn outcome_text(r: &Request, approve: bool) -> String {
    match r.status {
        Status::Approved => format!(
            "request {} is approved ({}/{}); the statement may run once",
            r.id,
            r.approvals(),
            r.required_approvals
        ),
        Status::Denied => format!("request {} is denied; the statement will not run", r.id),
        Status::Pending if approve => format!(
            "approval recorded on request {}: {} of {} so far",
            r.id,
            r.approvals(),
            r.required_approvals
        ),
        s => format!("request {} is {s}", r.id),
    }
}

/// Decide as `approver`, and record it.
async fn decide_as(
    api: &Api,
    caller: &Caller,
    peer: &Peer,
    id: &str,
    approver: Approver,
    approve: bool,
    justification: Option<String>,
) -> Result<Request, ApiError> {
    let action = if approve {
        "approval.approve"
    } else {
        "approval.deny"
    };
    let object = format!("approval:{id}");
    let result = api
        .proxy
        .approvals()
        .decide(id, &approver, approve, justification.as_deref(), now_ms())
        .await;
    match result {
        Ok(r) => {
            api.record(
                caller,
                peer,
                action,
                &object,
                r.status.as_str(),
                Some(format!(
                    "principal {} on target {}; {}{}",
                    r.binding.principal,
                    r.binding.target,
                    outcome_text(&r, approve),
                    justification
                        .map(|j| format!("; justification: {j}"))
                        .unwrap_or_default()
                )),
                Some(r.environment.clone()),
            );
            Ok(r)
        }
        Err(e) => {
            let e = decide_error(e);
            api.record(
                caller,
                peer,
                action,
                &object,
                e.code,
                Some(e.message.clone()),
                None,
            );
            Err(e)
        }
    }
}

async fn decide(
    api: Arc<Api>,
    headers: HeaderMap,
    uri: Uri,
    peer: Peer,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
    approve: bool,
) -> Result<Response, ApiError> {
    let (action, what) = if approve {
        ("approval.approve", "approve requests")
    } else {
        ("approval.deny", "deny requests")
    };
    let object = match &id {
        Ok(Path(i)) if valid_id(i) => format!("approval:{i}"),
        _ => "approval:?".into(),
    };
    let caller = api
        .actor_with(&headers, &peer, action, &object, what, DECIDERS)
        .await?;
    let id = checked_id(id)?;
    params::parse(uri.query(), &[])?;
    let body = body
        .map_err(|e| ApiError::bad_request(format!("cannot read the body: {}", e.body_text())))?;
    let justification = justification(&body)?;
    let approver = Approver {
        name: caller.name.clone(),
        groups: caller.groups.clone(),
    };
    let r = decide_as(&api, &caller, &peer, &id, approver, approve, justification).await?;
    Ok(ok(&r))
}

/// `POST /api/approvals/{id}/approve`.
pub(super) async fn approve(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    uri: Uri,
    peer: Peer,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    decide(api, headers, uri, peer, id, body, true).await
}

/// `POST /api/approvals/{id}/deny`.
pub(super) async fn deny(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    uri: Uri,
    peer: Peer,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    decide(api, headers, uri, peer, id, body, false).await
}

// ---- signed links and chat callbacks ----------------------------------

fn html(status: StatusCode, title: &str, body: &str) -> Response {
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t} · Sluice</title>\
         <meta name=\"referrer\" content=\"no-referrer\">\
         <style>body{{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem}}\
         pre{{background:#f4f4f4;padding:1rem;white-space:pre-wrap}}th{{text-align:left;padding-right:1rem}}</style>\
         </head><body><h1>{t}</h1>{body}</body></html>",
        t = html_escape(title)
    );
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
            ),
        ],
        page,
    )
        .into_response()
}

fn link_key(api: &Api) -> Option<Vec<u8>> {
    let config = api.proxy.runtime().config.clone();
    let w = config.approvals.webhook.as_ref()?;
    Some(w.link_secret.as_ref()?.expose().as_bytes().to_vec())
}

/// `GET /api/approvals/link?t=TOKEN`: the request a signed chat link points
/// at, for the approver to read before deciding. Viewing decides nothing.
pub(super) async fn link_page(State(api): State<Arc<Api>>, uri: Uri) -> Response {
    let page = async {
        let Some(key) = link_key(&api) else {
            return Err((
                StatusCode::NOT_FOUND,
                "Links are not enabled".to_owned(),
                "This Sluice has no [approvals.webhook].".to_owned(),
            ));
        };
        let bad = |status, why: String| (status, "Link not valid".to_owned(), why);
        let p = params::parse(uri.query(), &["t"])
            .map_err(|e| bad(StatusCode::BAD_REQUEST, e.message))?;
        let token = p
            .text("t", 512)
            .map_err(|e| bad(StatusCode::BAD_REQUEST, e.message))?
            .ok_or_else(|| bad(StatusCode::BAD_REQUEST, "the link has no token".into()))?;
        let link = webhook::verify(&key, &token, now_ms() / 1000)
            .map_err(|e| bad(StatusCode::FORBIDDEN, e.to_string()))?;
        let req = api.proxy.approvals().get(&link.id).await.map_err(|e| {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "Not available".to_owned(),
                format!("the approval store cannot be reached: {e}"),
            )
        })?;
        let req = req.ok_or_else(|| bad(StatusCode::NOT_FOUND, "no such request".into()))?;
        Ok((link, req))
    }
    .await;
    match page {
        Err((status, title, why)) => html(status, &title, &format!("<p>{}</p>", html_escape(&why))),
        Ok((link, r)) => {
            let e = html_escape;
            let votes: String = r
                .decisions
                .iter()
                .map(|v| {
                    format!(
                        "<li>{} {} at {}{}</li>",
                        e(&v.approver),
                        if v.approve { "approved" } else { "denied" },
                        format_time(v.at_ms),
                        v.justification
                            .as_deref()
                            .map(|j| format!(": {}", e(j)))
                            .unwrap_or_default()
                    )
                })
                .collect();
            let verb = link.action.as_str();
            let body = format!(
                "<p>Status: <strong>{status}</strong>. This page shows the request; it decides nothing by itself.</p>\
                 <table>\
                 <tr><th>Request</th><td>{id}</td></tr>\
                 <tr><th>Who</th><td>{who} ({kind}){obo}</td></tr>\
                 <tr><th>Groups</th><td>{groups}</td></tr>\
                 <tr><th>Target</th><td>{target} ({env})</td></tr>\
                 <tr><th>Rule</th><td>{rule}: {reason}</td></tr>\
                 <tr><th>Needs</th><td>{need} approval(s) from group {group}{just}</td></tr>\
                 <tr><th>Expires</th><td>{expires}</td></tr>\
                 </table><h2>Statement</h2><pre>{stmt}</pre>\
                 <h2>Facts</h2><pre>{facts}</pre>\
                 <h2>Votes</h2><ul>{votes}</ul>\
                 <p>To {verb} it: press <em>{Verb}</em> in the chat message (you decide as your chat account's principal), \
                 or run <code>sluice approvals {verb} {id}</code>.</p>",
                status = r.status,
                id = e(&r.id),
                who = e(&r.binding.principal),
                kind = e(&r.principal_kind),
                obo = r
                    .on_behalf_of
                    .as_deref()
                    .map(|p| format!(", on behalf of {}", e(p)))
                    .unwrap_or_default(),
                groups = e(&r.groups.join(", ")),
                target = e(&r.binding.target),
                env = e(&r.environment),
                rule = e(&r.rule),
                reason = e(&r.reason),
                need = r.required_approvals,
                group = e(&r.approver_group),
                just = if r.require_justification {
                    ", with a justification"
                } else {
                    ""
                },
                expires = format_time(r.expires_at_ms),
                stmt = e(&r.statement),
                facts = e(&serde_json::to_string_pretty(&r.facts).unwrap_or_default()),
                Verb = if link.action == LinkAction::Approve {
                    "Approve"
                } else {
                    "Deny"
                },
            );
            html(StatusCode::OK, &format!("Approval request {}", r.id), &body)
        }
    }
}

/// The answer to a chat callback: a message only the clicking user sees.
fn chat_reply(text: String) -> Response {
    ok(&json!({ "response_type": "ephemeral", "replace_original": false, "text": text }))
}

/// `POST /api/approvals/callback`: a chat's interactive callback (Slack
/// `block_actions`, form field `payload`, or the same JSON as the body),
/// signed with the chat's signing secret. The button's value is a signed
/// token naming the request and the action; the chat user must be one of
/// `chat_users`, and decides as that principal.
pub(super) async fn callback(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    peer: Peer,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let config = api.proxy.runtime().config.clone();
    let Some(w) = config.approvals.webhook.as_ref() else {
        return Err(ApiError::not_found(
            "chat callbacks are not enabled: there is no [approvals.webhook]",
        ));
    };
    let (Some(signing), Some(link_secret)) = (&w.signing_secret, &w.link_secret) else {
        return Err(ApiError::not_found(
            "chat callbacks are not enabled: [approvals.webhook] has no signing secret",
        ));
    };
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large("the callback is too large")
        } else {
            ApiError::bad_request(format!("cannot read the body: {}", e.body_text()))
        }
    })?;
    let header_text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let now = now_ms() / 1000;
    if !webhook::verify_chat_signature(
        signing.expose().as_bytes(),
        &header_text("x-slack-request-timestamp"),
        &header_text("x-slack-signature"),
        &body,
        now,
    ) {
        tracing::warn!(peer = ?peer.0, "approval callback with a bad or stale signature refused");
        return Err(ApiError::unauthenticated(
            "the callback's signature (X-Slack-Signature, X-Slack-Request-Timestamp) is missing, wrong or older than 5 minutes",
            true,
        ));
    }
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("the callback is not UTF-8"))?;
    let payload: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text)
    } else {
        let p = params::parse(Some(text), &["payload"])?;
        let raw = p
            .text("payload", MAX_CALLBACK_BYTES)?
            .ok_or_else(|| ApiError::bad_request("the callback has no payload field"))?;
        serde_json::from_str(&raw)
    }
    .map_err(|e| ApiError::bad_request(format!("the callback payload is not JSON: {e}")))?;
    let chat_user = payload["user"]["id"].as_str().unwrap_or_default();
    let Some(token) = payload["actions"][0]["value"].as_str() else {
        return Err(ApiError::bad_request(
            "the callback has no actions[0].value (the signed token of the button)",
        ));
    };
    let link = webhook::verify(link_secret.expose().as_bytes(), token, now)
        .map_err(|e| ApiError::forbidden(format!("the button: {e}")))?;
    let Some(user) = w.chat_users.iter().find(|u| u.chat_id == chat_user) else {
        tracing::warn!(chat_user = %shown(chat_user), request = %link.id, "approval callback from a chat user who is not in chat_users");
        let caller = Caller {
            name: format!("chat:{}", shown(chat_user).trim_matches('"')),
            kind: "human".into(),
            on_behalf_of: None,
            groups: Vec::new(),
            roles: Vec::new(),
            via: "chat",
        };
        api.record(
            &caller,
            &peer,
            &format!("approval.{}", link.action.as_str()),
            &format!("approval:{}", link.id),
            "unknown_chat_user",
            None,
            None,
        );
        return Ok(chat_reply(format!(
            "Sluice does not know your chat account ({}); ask an administrator to add it to [approvals.webhook] chat_users, or use `sluice approvals {} {}`.",
            shown(chat_user),
            link.action.as_str(),
            link.id
        )));
    };
    let caller = Caller {
        name: user.name.clone(),
        kind: "human".into(),
        on_behalf_of: None,
        groups: user.groups.clone(),
        roles: Vec::new(),
        via: "chat",
    };
    if let Err(e) = api.proxy.audit().check() {
        return Err(ApiError::unavailable(
            "audit_unavailable",
            format!("the audit trail cannot record now ({e}); nothing was done"),
        ));
    }
    let approver = Approver {
        name: user.name.clone(),
        groups: user.groups.clone(),
    };
    let approve = link.action == LinkAction::Approve;
    match decide_as(&api, &caller, &peer, &link.id, approver, approve, None).await {
        Ok(r) => Ok(chat_reply(format!(
            "{}: {}",
            user.name,
            outcome_text(&r, approve)
        ))),
        Err(e) if e.status.is_server_error() => Err(e),
        Err(e) => Ok(chat_reply(format!(
            "{} could not {} request {}: {} ({})",
            user.name,
            link.action.as_str(),
            link.id,
            e.message,
            e.code
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn justification_bodies() {
        assert_eq!(justification(&Bytes::from_static(b"")).unwrap(), None);
        assert_eq!(
            justification(&Bytes::from_static(br#"{"justification":" ticket 42 "}"#)).unwrap(),
            Some("ticket 42".into())
        );
        assert_eq!(justification(&Bytes::from_static(b"{}")).unwrap(), None);
        assert!(justification(&Bytes::from_static(b"[1]")).is_err());
        assert!(justification(&Bytes::from_static(br#"{"why":"x"}"#)).is_err());
        assert!(justification(&Bytes::from_static(br#"{"justification":1}"#)).is_err());
        assert!(justification(&Bytes::from_static(b"nope")).is_err());
    }

    #[test]
    fn escaping() {
        assert_eq!(
            html_escape("<script>\"x\"&'"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;"
        );
    }
}
