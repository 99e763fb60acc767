//! Approval requests in chat (`[approvals.webhook]`): each new request, and
//! each break-glass run, is posted as a Slack-compatible message. Its
//! approve and deny buttons carry signed, expiring links (HMAC-SHA256 over
//! request id, action and expiry) which open the request's page, and the
//! same signed token as the button value, which the chat sends back with the
//! clicking user in its interactive callback (`POST /api/approvals/callback`).
//!
//! A link alone never decides anything: the decision needs an identity,
//! either the chat user of a signed callback (mapped to a principal by
//! `chat_users`) or a bearer token at the REST API. The chat message shows
//! the normalized statement (literals as `$n`); the full text is only on the
//! signed link's page and in the API.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use sluice_audit::approvals::Request;
use sluice_config::Webhook;

/// What a signed link or button asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkAction {
    /// Approve the request.
    Approve,
    /// Deny it.
    Deny,
}

impl LinkAction {
    fn code(self) -> &'static str {
        match self {
            LinkAction::Approve => "a",
            LinkAction::Deny => "d",
        }
    }

    /// `approve` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkAction::Approve => "approve",
            LinkAction::Deny => "deny",
        }
    }
}

/// Why a link or button token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Not a token at all.
    #[error("the link is not valid")]
    Malformed,
    /// The signature does not match (tampered, or another key).
    #[error("the link's signature does not match")]
    BadSignature,
    /// Past its expiry.
    #[error("the link has expired")]
    Expired,
}

/// A verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The approval request.
    pub id: String,
    /// What the button asks for.
    pub action: LinkAction,
    /// Expiry (seconds since the epoch).
    pub expires_secs: i64,
}

fn mac(key: &[u8], id: &str, action: LinkAction, expires_secs: i64) -> Hmac<Sha256> {
    // Any key length is accepted by HMAC.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(
        format!(
            "sluice-approval-link:v1:{id}:{}:{expires_secs}",
            action.code()
        )
        .as_bytes(),
    );
    m
}

use sluice_audit::util::{hex, unhex};

/// The signed token for `action` on request `id`, valid until `expires_secs`.
pub fn sign(key: &[u8], id: &str, action: LinkAction, expires_secs: i64) -> String {
    let sig = mac(key, id, action, expires_secs).finalize().into_bytes();
    format!("{id}.{}.{expires_secs}.{}", action.code(), hex(&sig))
}

/// Check a token's signature (in constant time) and expiry.
pub fn verify(key: &[u8], token: &str, now_secs: i64) -> Result<Link, LinkError> {
    let mut parts = token.split('.');
    let (Some(id), Some(action), Some(expires), Some(sig), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(LinkError::Malformed);
    };
    let valid_id = (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric());
    let action = match action {
        "a" => LinkAction::Approve,
        "d" => LinkAction::Deny,
        _ => return Err(LinkError::Malformed),
    };
    let expires_secs: i64 = expires.parse().map_err(|_| LinkError::Malformed)?;
    let sig = unhex(sig).ok_or(LinkError::Malformed)?;
    if !valid_id {
        return Err(LinkError::Malformed);
    }
    mac(key, id, action, expires_secs)
        .verify_slice(&sig)
        .map_err(|_| LinkError::BadSignature)?;
    if now_secs >= expires_secs {
        return Err(LinkError::Expired);
    }
    Ok(Link {
        id: id.to_owned(),
        action,
        expires_secs,
    })
}

/// The page a token opens.
pub fn link_url(public_url: &str, token: &str) -> String {
    format!(
        "{}/api/approvals/link?t={token}",
        public_url.trim_end_matches('/')
    )
}

/// Verify a chat callback's signature: Slack's scheme, `v0=` + hex
/// HMAC-SHA256 of `v0:<timestamp>:<body>` with the signing secret, and a
/// timestamp within five minutes of now (no replays of old callbacks).
pub fn verify_chat_signature(
    secret: &[u8],
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now_secs: i64,
) -> bool {
    let Ok(ts) = timestamp.trim().parse::<i64>() else {
        return false;
    };
    if (now_secs - ts).abs() > 300 {
        return false;
    }
    let Some(sig) = signature.trim().strip_prefix("v0=").and_then(unhex) else {
        return false;
    };
    let Ok(mut m) = <Hmac<Sha256> as Mac>::new_from_slice(secret) else {
        return false;
    };
    m.update(format!("v0:{ts}:").as_bytes());
    m.update(body);
    m.verify_slice(&sig).is_ok()
}

/// The signature a chat would send for `body` at `timestamp` (for tests
/// and for tools relaying decisions).
pub fn chat_signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    m.update(format!("v0:{timestamp}:").as_bytes());
    m.update(body);
    format!("v0={}", hex(&m.finalize().into_bytes()))
}

/// Slack limits a text block to 3000 characters.
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Keep chat markup from being injected through names or statements.
fn plain(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace("```", "'''")
}

fn who(req: &Request) -> String {
    let mut w = format!("{} ({})", plain(&req.binding.principal), req.principal_kind);
    if let Some(p) = &req.on_behalf_of {
        w.push_str(&format!(" for {}", plain(p)));
    }
    w
}

/// The message for a new request, with signed approve and deny buttons.
pub fn request_message(webhook: &Webhook, key: &[u8], req: &Request) -> Value {
    let ttl_end = webhook
        .link_ttl_secs
        .map_or(i64::MAX, |t| req.created_ms / 1000 + t as i64);
    let expires = (req.expires_at_ms / 1000).min(ttl_end);
    let approve = sign(key, &req.id, LinkAction::Approve, expires);
    let deny = sign(key, &req.id, LinkAction::Deny, expires);
    let approve_url = link_url(&webhook.public_url, &approve);
    let deny_url = link_url(&webhook.public_url, &deny);
    let text = format!(
        "Approval needed: {} wants to run a {} on {} ({}): {} (request {})",
        who(req),
        req.facts["kind"].as_str().unwrap_or("statement"),
        plain(&req.binding.target),
        plain(&req.environment),
        plain(&req.reason),
        req.id
    );
    json!({
        "text": text,
        "blocks": [
            { "type": "header", "text": { "type": "plain_text",
                "text": clip(&format!("Approval needed on {} ({})", req.binding.target, req.environment), 150) } },
            { "type": "section", "fields": [
                { "type": "mrkdwn", "text": format!("*Who*\n{}", who(req)) },
                { "type": "mrkdwn", "text": format!("*Target*\n{} ({})", plain(&req.binding.target), plain(&req.environment)) },
                { "type": "mrkdwn", "text": clip(&format!("*Rule*\n{}: {}", plain(&req.rule), plain(&req.reason)), 2000) },
                { "type": "mrkdwn", "text": format!("*Needs*\n{} of group {}", req.required_approvals, plain(&req.approver_group)) }
            ] },
            { "type": "section", "text": { "type": "mrkdwn",
                "text": clip(&format!("```{}```", plain(&req.normalized)), 2900) } },
            { "type": "context", "elements": [ { "type": "mrkdwn",
                "text": format!("Request {} · mode {} · open the link for the full statement", req.id, req.mode) } ] },
            { "type": "actions", "block_id": "sluice_approval", "elements": [
                { "type": "button", "action_id": "sluice_approve", "style": "primary",
                  "text": { "type": "plain_text", "text": "Approve" }, "url": approve_url, "value": approve },
                { "type": "button", "action_id": "sluice_deny", "style": "danger",
                  "text": { "type": "plain_text", "text": "Deny" }, "url": deny_url, "value": deny }
            ] }
        ],
        "sluice": {
            "event": "approval.request",
            "request": req.id,
            "principal": req.binding.principal,
            "target": req.binding.target,
            "environment": req.environment,
            "rule": req.rule,
            "approve_url": approve_url,
            "deny_url": deny_url,
            "expires_at_ms": expires * 1000,
        }
    })
}

/// The message for a break-glass run: no buttons, flagged loudly.
pub fn break_glass_message(req: &Request) -> Value {
    let why = req.break_glass.as_deref().unwrap_or_default();
    json!({
        "text": format!(
            ":rotating_light: BREAK-GLASS: {} ran a {} on {} ({}) without approval: {} (request {})",
            who(req),
            req.facts["kind"].as_str().unwrap_or("statement"),
            plain(&req.binding.target),
            plain(&req.environment),
            plain(why),
            req.id
        ),
        "blocks": [
            { "type": "header", "text": { "type": "plain_text",
                "text": clip(&format!("BREAK-GLASS on {} ({})", req.binding.target, req.environment), 150) } },
            { "type": "section", "fields": [
                { "type": "mrkdwn", "text": format!("*Who*\n{}", who(req)) },
                { "type": "mrkdwn", "text": clip(&format!("*Justification*\n{}", plain(why)), 2000) },
                { "type": "mrkdwn", "text": clip(&format!("*Rule*\n{}: {}", plain(&req.rule), plain(&req.reason)), 2000) }
            ] },
            { "type": "section", "text": { "type": "mrkdwn",
                "text": clip(&format!("```{}```", plain(&req.normalized)), 2900) } }
        ],
        "sluice": {
            "event": "approval.break_glass",
            "request": req.id,
            "principal": req.binding.principal,
            "target": req.binding.target,
            "environment": req.environment,
            "rule": req.rule,
        }
    })
}

/// Post `message` in the background: three tries, 1 s and 4 s apart. A
/// failure is logged and counted, never seen by the session.
pub fn post(url: String, message: Value, metrics: std::sync::Arc<crate::Metrics>) {
    let spawned = std::thread::Builder::new()
        .name("sluice-webhook".into())
        .spawn(move || {
            let mut last = String::new();
            for (attempt, pause) in [0u64, 1, 4].into_iter().enumerate() {
                std::thread::sleep(Duration::from_secs(pause));
                match sluice_identity::http::post_json(&url, &message) {
                    Ok(_) => return,
                    Err(e) => {
                        tracing::warn!(attempt = attempt + 1, error = %e, "approval webhook failed");
                        last = e;
                    }
                }
            }
            metrics
                .webhook_failures_total
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(error = %last, "approval webhook gave up after 3 tries");
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the approval webhook");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_tokens_verify_and_refuse_tampering_and_expiry() {
        let key = b"0123456789abcdef";
        let t = sign(key, "01JABC", LinkAction::Approve, 2_000);
        let link = verify(key, &t, 1_000).unwrap();
        assert_eq!(link.id, "01JABC");
        assert_eq!(link.action, LinkAction::Approve);
        assert_eq!(verify(key, &t, 2_000), Err(LinkError::Expired));
        assert_eq!(
            verify(b"another key 1234", &t, 1_000),
            Err(LinkError::BadSignature)
        );
        // Turning an approve link into a deny link, or moving its expiry.
        let swapped = t.replacen(".a.", ".d.", 1);
        assert_eq!(verify(key, &swapped, 1_000), Err(LinkError::BadSignature));
        let later = t.replacen(".2000.", ".9000.", 1);
        assert_eq!(verify(key, &later, 1_000), Err(LinkError::BadSignature));
        for bad in ["", "x", "a.b.c.d.e", "01J.a.1.zz", "01J.q.1.00", "é.a.1.00"] {
            assert_eq!(verify(key, bad, 0), Err(LinkError::Malformed), "{bad}");
        }
    }

    #[test]
    fn chat_signatures() {
        let secret = b"8f742231b10e8888abcd99yyyzzz85a5";
        let body = b"payload=%7B%7D";
        let sig = chat_signature(secret, 1_000, body);
        assert!(verify_chat_signature(secret, "1000", &sig, body, 1_100));
        assert!(!verify_chat_signature(secret, "1000", &sig, body, 1_400));
        assert!(!verify_chat_signature(
            secret,
            "1000",
            &sig,
            b"payload=x",
            1_100
        ));
        assert!(!verify_chat_signature(secret, "999", &sig, body, 1_100));
        assert!(!verify_chat_signature(secret, "1000", "v0=zz", body, 1_100));
        assert!(!verify_chat_signature(secret, "nope", &sig, body, 1_100));
    }

    #[test]
    fn markup_cannot_break_out() {
        assert_eq!(plain("<!channel> ```x"), "&lt;!channel&gt; '''x");
        assert_eq!(clip("abcdef", 4), "abc…");
    }
}
