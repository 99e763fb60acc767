//! Who is calling: `Authorization: Bearer <token>`, either a static admin
//! token (`[admin] tokens`, compared by SHA-256 in constant time) or an
//! OIDC token from a configured `[[oidc]]` issuer, whose groups give roles
//! (`[admin] admin_groups`, `auditor_groups`, `approver_groups`).
//!
//! Tokens are never logged and never repeated in an answer.

use std::sync::Arc;
use std::time::SystemTime;

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};
use sluice_config::{AdminRole, Config};
use sluice_identity::oidc::{HttpFetch, KeyCache, TokenError, Validator};
use subtle::ConstantTimeEq;

use super::error::ApiError;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Principal name (the token's `name` for a static token).
    pub name: String,
    /// `human`, `service` or `agent` (static tokens are services).
    pub kind: String,
    /// For an agent or service acting for a person: that person.
    pub on_behalf_of: Option<String>,
    /// Groups (an approver must be in a request's approver group).
    pub groups: Vec<String>,
    /// Roles, from groups or the static token.
    pub roles: Vec<AdminRole>,
    /// `static-token`, `oidc` or `chat`.
    pub via: &'static str,
}

impl Caller {
    /// The caller as an audit actor.
    pub fn actor(&self) -> sluice_audit::Actor {
        sluice_audit::Actor {
            name: self.name.clone(),
            kind: self.kind.clone(),
            on_behalf_of: self.on_behalf_of.clone(),
        }
    }

    /// Whether the caller has one of `roles`.
    pub fn has_any(&self, roles: &[AdminRole]) -> bool {
        self.roles.iter().any(|r| roles.contains(r))
    }
}

const HOW: &str = "send Authorization: Bearer <token> with an OIDC token from a configured issuer or a static admin token";

/// The bearer token of a request, or a 401.
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthenticated(format!("authentication required: {HOW}"), false)
    })?;
    let value = value.to_str().map_err(|_| {
        ApiError::unauthenticated(
            format!("the Authorization header is not readable; {HOW}"),
            true,
        )
    })?;
    let (scheme, token) = value.trim().split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::unauthenticated(
            format!("only Bearer authentication is accepted; {HOW}"),
            false,
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(ApiError::unauthenticated(
            format!("the bearer token is empty; {HOW}"),
            true,
        ));
    }
    if token.len() > sluice_identity::jwt::MAX_TOKEN_LEN {
        return Err(ApiError::unauthenticated(
            "the bearer token is too long",
            true,
        ));
    }
    Ok(token)
}

/// The static token `token` is, if any. Every configured hash is compared
/// in constant time, so the time taken does not tell how much matched.
fn static_token<'a>(config: &'a Config, token: &str) -> Option<&'a sluice_config::AdminToken> {
    let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let mut found = None;
    for t in &config.admin.tokens {
        if bool::from(t.token_sha256.ct_eq(&hash)) {
            found = Some(t);
        }
    }
    found
}

/// Authenticate a request against `config`.
pub async fn authenticate(config: Arc<Config>, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let token = bearer(headers)?;
    if let Some(t) = static_token(&config, token) {
        return Ok(Caller {
            name: t.name.clone(),
            kind: "service".into(),
            on_behalf_of: None,
            groups: t.groups.clone(),
            roles: vec![t.role],
            via: "static-token",
        });
    }
    let invalid = || {
        ApiError::unauthenticated(
            "the bearer token is neither a static admin token nor a valid OIDC token",
            true,
        )
    };
    if config.oidc.is_empty() || token.split('.').count() != 3 {
        return Err(invalid());
    }
    let token = token.to_owned();
    let checked = config.clone();
    // Validation may fetch the issuer's keys: blocking HTTP.
    let validated = tokio::task::spawn_blocking(move || {
        Validator::new(&checked.oidc, &HttpFetch, KeyCache::global())
            .validate(&token, SystemTime::now())
    })
    .await
    .map_err(|e| ApiError::internal(format!("token validation failed: {e}")))?;
    match validated {
        Ok(v) => {
            let p = v.principal;
            Ok(Caller {
                roles: config.admin.roles_for(&p.groups),
                name: p.name,
                groups: p.groups,
                kind: p.kind.as_str().to_owned(),
                on_behalf_of: p.on_behalf_of,
                via: "oidc",
            })
        }
        Err(TokenError::IssuerUnavailable(e)) => {
            tracing::warn!(error = %e, "admin API: cannot reach the identity provider to check a token");
            Err(ApiError::unavailable(
                "idp_unavailable",
                "the identity provider could not be reached to check the token",
            ))
        }
        Err(TokenError::Malformed(_)) => Err(invalid()),
        Err(e) => Err(ApiError::unauthenticated(
            format!("the bearer token is not accepted: {e}"),
            true,
        )),
    }
}

/// A 403 unless the caller has one of `roles`.
pub fn require(caller: &Caller, roles: &[AdminRole], what: &str) -> Result<(), ApiError> {
    if caller.has_any(roles) {
        return Ok(());
    }
    let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    Err(ApiError::forbidden(format!(
        "{} may not {what}: this needs the {} role",
        caller.name,
        names.join(" or ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_header_shapes() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h).unwrap_err().status.as_u16(), 401);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert!(bearer(&h).is_err());
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  tok "),
        );
        assert_eq!(bearer(&h).unwrap(), "tok");
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer"));
        assert!(bearer(&h).is_err());
    }
}
