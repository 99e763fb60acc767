//! Statements that need approval: each becomes an approval request in the
//! shared store (so every replica and the admin API see it), bound to the
//! principal, the target, the statement's fingerprint and a hash of its
//! full text, single-use and expiring.
//!
//! - **hold**: the statement waits in the session; the client gets a
//!   NoticeResponse with the request id and where to approve it, and the
//!   statement runs as soon as it is approved (or fails when denied or when
//!   the request expires). Nothing the client sent after it runs before it.
//! - **refuse**: the statement is refused at once (SQLSTATE SL001, with the
//!   request id); the same statement sent again after approval runs once.
//! - **break-glass**: a member of `[approvals] break_glass_groups` who puts
//!   `/* sluice:break-glass <why> */` in the statement runs it at once; the
//!   request is recorded as break-glass and flagged in the audit trail.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use sluice_audit::approvals::{ApprovalStore, Binding, NewRequest, Status};
use sluice_audit::util::{hex, now_ms};
use sluice_config::{ApprovalMode, Approvals};
use sluice_identity::Principal;
use sluice_wire::messages::{ErrorResponse, Severity};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::guard::PreparedChange;
use crate::rows_guard::GuardError;
use crate::statements::{ApprovalStep, Statements};
use crate::stream::WriteHalf;

/// SQLSTATE: an approver denied the statement.
pub const APPROVAL_DENIED: &str = "SL002";
/// SQLSTATE: the request expired before it was approved.
pub const APPROVAL_EXPIRED: &str = "SL003";
/// SQLSTATE: the approval store could not be reached (fail closed).
pub const APPROVAL_UNAVAILABLE: &str = "SL004";
/// SQLSTATE: a statement that needs approval was prepared with bind
/// parameters, whose values an approval could not be bound to.
pub const APPROVAL_NEEDS_VALUES: &str = "SL005";

/// Whether `text` has bind parameters (`$1`). An approval is bound to the
/// values it approves; a prepared statement would run once approved with
/// any values, so such statements are refused (fail closed, also when the
/// text cannot be scanned).
pub fn has_parameters(text: &str) -> bool {
    match sluice_sql::scan(text) {
        Some(tokens) => tokens
            .iter()
            .any(|t| t.token == pg_query::protobuf::Token::Param as i32),
        None => true,
    }
}

/// What the runner needs from the session.
pub struct ApprovalContext<'a> {
    /// The shared store.
    pub store: ApprovalStore,
    /// `[approvals]`.
    pub config: &'a Approvals,
    /// Who runs the statement.
    pub principal: &'a Principal,
    /// Target name.
    pub target: &'a str,
    /// Its environment.
    pub environment: &'a str,
    /// Notices for the client (written by the upstream loop between messages).
    pub notices: mpsc::Sender<Bytes>,
    /// Process metrics.
    pub metrics: std::sync::Arc<crate::Metrics>,
}

/// Post a chat message about `req`, if `[approvals.webhook]` has a URL.
fn notify(cx: &ApprovalContext<'_>, req: &sluice_audit::approvals::Request) {
    let Some(w) = &cx.config.webhook else { return };
    let (Some(url), Some(key)) = (&w.url, &w.link_secret) else {
        return;
    };
    let message = if req.break_glass.is_some() {
        crate::webhook::break_glass_message(req)
    } else {
        crate::webhook::request_message(w, key.expose().as_bytes(), req)
    };
    crate::webhook::post(url.clone(), message, cx.metrics.clone());
}

/// The justification of a break-glass comment (`/* sluice:break-glass why */`
/// or `-- sluice:break-glass why`), if the text has one.
pub fn break_glass_justification(text: &str) -> Option<String> {
    let at = text.find("sluice:break-glass")?;
    let rest = &text[at + "sluice:break-glass".len()..];
    let end = rest
        .find("*/")
        .or_else(|| rest.find('\n'))
        .unwrap_or(rest.len());
    let why = rest[..end].trim();
    (!why.is_empty()).then(|| why.to_owned())
}

fn where_to_approve(config: &Approvals, id: &str) -> String {
    match &config.url {
        Some(url) => format!("{}/{id}", url.trim_end_matches('/')),
        None => format!("`sluice approvals approve {id}`"),
    }
}

async fn send(w: &mut WriteHalf, msg: &[u8]) -> std::io::Result<()> {
    w.write_all(msg).await?;
    w.flush().await
}

fn error(code: &str, message: String, hint: String) -> Bytes {
    ErrorResponse::new(Severity::Error, code, message)
        .hint(hint)
        .encode()
}

/// Handle a statement that needs approval; `msg` is the client's message.
pub async fn run(
    w: &mut WriteHalf,
    st: &mut Statements<'_>,
    msg: Bytes,
    step: ApprovalStep,
    cx: &ApprovalContext<'_>,
) -> Result<(), GuardError> {
    let need = &step.need;
    let info = need.allowed.info.clone();
    let binding = Binding {
        principal: cx.principal.name.clone(),
        target: cx.target.to_owned(),
        fingerprint: info.fingerprint.to_string(),
        params_hash: hex(&Sha256::digest(step.text.as_bytes())),
    };
    let mode = match need.mode.as_deref() {
        Some("refuse") => ApprovalMode::Refuse,
        Some("hold") => ApprovalMode::Hold,
        _ => cx.config.mode,
    };
    let break_glass = break_glass_justification(&step.text).filter(|_| {
        cx.principal
            .groups
            .iter()
            .any(|g| cx.config.break_glass_groups.contains(g))
    });
    let new_request = |mode: &str, break_glass: Option<String>| NewRequest {
        binding: binding.clone(),
        principal_kind: cx.principal.kind.as_str().to_owned(),
        on_behalf_of: cx.principal.on_behalf_of.clone(),
        groups: cx.principal.groups.clone(),
        environment: cx.environment.to_owned(),
        session: st
            .audit
            .as_ref()
            .map(|a| a.session.to_string())
            .unwrap_or_default(),
        normalized: info.normalized.to_string(),
        // Approvers see the statement, not a password in it; the binding
        // is the hash of the exact text (params_hash).
        statement: sluice_sql::redact_secrets(&step.text),
        facts: serde_json::json!({
            "kind": info.kind,
            "tables_read": info.tables_read,
            "tables_written": info.tables_written,
            "columns_read": info.columns_read,
            "columns_written": info.columns_written,
        }),
        rule: need.rule.clone(),
        reason: need.reason.clone(),
        approver_group: need.group.clone(),
        required_approvals: need.required.unwrap_or(cx.config.required_approvals),
        require_justification: cx.config.require_justification,
        mode: mode.to_owned(),
        expires_at_ms: now_ms() + (cx.config.timeout_secs as i64) * 1000,
        break_glass,
    };
    let unavailable = |st: &mut Statements<'_>, why: String| {
        tracing::error!(error = %why, "approval store unavailable; refusing");
        st.not_approved(
            &step,
            error(
                APPROVAL_UNAVAILABLE,
                format!(
                    "sluice: approval required by {}, but approval requests cannot be recorded now",
                    need.rule
                ),
                "try again later; if it persists, ask your administrator".into(),
            ),
            None,
        )
    };
    let audit = st.audit.clone();
    let admin = |action: &str, id: &str, outcome: &str, detail: Option<String>| {
        if let Some(a) = &audit {
            a.admin(action, &format!("approval:{id}"), outcome, detail);
        }
    };

    // Break-glass: runs now, recorded loudly.
    if let Some(why) = break_glass {
        match cx
            .store
            .create(new_request(
                if mode == ApprovalMode::Refuse {
                    "refuse"
                } else {
                    "hold"
                },
                Some(why.clone()),
            ))
            .await
        {
            Ok(req) => {
                tracing::warn!(user = %cx.principal.name, target = cx.target, request = %req.id, "BREAK-GLASS: statement run without approval");
                admin("approval.break_glass", &req.id, "ran", Some(why));
                notify(cx, &req);
                st.approved(&step, &req.id);
                st.commit();
                send(w, &msg).await?;
            }
            Err(e) => {
                let refusal = unavailable(st, e.to_string());
                st.commit();
                send(w, &refusal).await?;
            }
        }
        return Ok(());
    }

    // A prepared statement with parameters (a Parse, or a SQL-level
    // PREPARE run later by EXECUTE with any values): no approval can cover
    // values not known yet. Other `$n` in a simple query (a SQL-standard
    // function body) are not bind parameters.
    let prepares = step.parse.is_some()
        || need
            .allowed
            .prepared
            .iter()
            .any(|(_, change)| matches!(change, PreparedChange::Define(..)));
    if prepares && has_parameters(&step.text) {
        let refusal = st.not_approved(
            &step,
            error(
                APPROVAL_NEEDS_VALUES,
                format!(
                    "sluice: approval required by {}: {}, but this statement has bind parameters",
                    need.rule, need.reason
                ),
                "an approval covers the exact values it was given: send the statement with its values in the text (a simple query), so approvers see what will run".into(),
            ),
            None,
        );
        st.commit();
        send(w, &refusal).await?;
        return Ok(());
    }

    // An approval already given for exactly this statement runs it once.
    match cx.store.take_approved(&binding, now_ms()).await {
        Ok(Some(req)) => {
            admin("approval.use", &req.id, "ran", None);
            st.approved(&step, &req.id);
            st.commit();
            send(w, &msg).await?;
            return Ok(());
        }
        Ok(None) => {}
        Err(e) => {
            let refusal = unavailable(st, e.to_string());
            st.commit();
            send(w, &refusal).await?;
            return Ok(());
        }
    }

    let mode_name = match mode {
        ApprovalMode::Hold => "hold",
        ApprovalMode::Refuse => "refuse",
    };
    let req = match cx.store.create(new_request(mode_name, None)).await {
        Ok(r) => r,
        Err(e) => {
            let refusal = unavailable(st, e.to_string());
            st.commit();
            send(w, &refusal).await?;
            return Ok(());
        }
    };
    cx.metrics
        .approval_requests_total
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    notify(cx, &req);
    admin(
        "approval.request",
        &req.id,
        "pending",
        Some(format!(
            "rule {} needs {} from {}",
            need.rule, req.required_approvals, need.group
        )),
    );
    let whom = format!(
        "{} member(s) of \"{}\"",
        need.required.unwrap_or(cx.config.required_approvals),
        need.group
    );
    if mode == ApprovalMode::Refuse {
        let refusal = st.not_approved(
            &step,
            error(
                crate::guard::APPROVAL_REQUIRED,
                format!(
                    "sluice: approval required by {}: {} (request {})",
                    need.rule, need.reason, req.id
                ),
                format!(
                    "ask {whom} to approve it ({}), then run the same statement again; it expires in {} s",
                    where_to_approve(cx.config, &req.id),
                    cx.config.timeout_secs
                ),
            ),
            Some(&req.id),
        );
        st.commit();
        send(w, &refusal).await?;
        return Ok(());
    }

    // Hold: tell the client, then wait.
    let notice = ErrorResponse::new(
        Severity::Notice,
        "SL001",
        format!(
            "sluice: approval required by {}: {}; waiting for {whom} to approve request {} ({}), for up to {} s",
            need.rule,
            need.reason,
            req.id,
            where_to_approve(cx.config, &req.id),
            cx.config.timeout_secs
        ),
    )
    .encode_notice();
    let _ = cx.notices.send(notice).await;
    cx.metrics
        .approvals_waiting
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let decided = cx.store.wait_decided(&req.id, req.expires_at_ms).await;
    cx.metrics
        .approvals_waiting
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    enum After {
        Run,
        Refuse(Bytes),
        Marker(Bytes),
    }
    let outcome = match decided {
        Ok(Some(r)) if r.status == Status::Approved => {
            match cx.store.consume(&r.id, now_ms()).await {
                Ok(true) => After::Run,
                Ok(false) => After::Refuse(error(
                    APPROVAL_EXPIRED,
                    format!(
                        "sluice: approval request {} was approved but can no longer be used",
                        r.id
                    ),
                    "run the statement again to ask anew".into(),
                )),
                Err(e) => After::Marker(unavailable(st, e.to_string())),
            }
        }
        Ok(Some(r)) if r.status == Status::Denied => {
            let by = r
                .decisions
                .iter()
                .find(|v| !v.approve)
                .map(|v| {
                    format!(
                        "{}{}",
                        v.approver,
                        v.justification
                            .as_deref()
                            .map(|j| format!(": {j}"))
                            .unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            After::Refuse(error(
                APPROVAL_DENIED,
                format!("sluice: approval request {} was denied by {by}", r.id),
                "the statement did not run".into(),
            ))
        }
        Ok(_) => After::Refuse(error(
            APPROVAL_EXPIRED,
            format!(
                "sluice: approval request {} was not approved within {} s",
                req.id, cx.config.timeout_secs
            ),
            "the statement did not run; send it again to ask anew".into(),
        )),
        Err(e) => After::Marker(unavailable(st, e.to_string())),
    };
    match outcome {
        After::Run => {
            admin("approval.use", &req.id, "ran", None);
            st.approved(&step, &req.id);
            st.commit();
            send(w, &msg).await?;
        }
        After::Refuse(error) => {
            let marker = st.not_approved(&step, error, Some(&req.id));
            st.commit();
            send(w, &marker).await?;
        }
        After::Marker(marker) => {
            st.commit();
            send(w, &marker).await?;
        }
    }
    Ok(())
}
