//! The identity that travels with a session to policy and audit.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

/// What kind of caller this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PrincipalKind {
    /// A person.
    #[default]
    Human,
    /// A service account.
    Service,
    /// An AI agent.
    Agent,
}

impl PrincipalKind {
    /// Lower-case name as used in config and policy.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::Human => "human",
            PrincipalKind::Service => "service",
            PrincipalKind::Agent => "agent",
        }
    }
}

impl fmt::Display for PrincipalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PrincipalKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "human" => Ok(PrincipalKind::Human),
            "service" => Ok(PrincipalKind::Service),
            "agent" => Ok(PrincipalKind::Agent),
            other => Err(format!(
                "unknown kind {other:?}; expected human, service or agent"
            )),
        }
    }
}

/// What happens to a session when the credential it was opened with expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OnExpiry {
    /// The next statement after expiry is refused and the session ends (the default).
    #[default]
    Disconnect,
    /// The session may go on until the client disconnects.
    Allow,
}

impl OnExpiry {
    /// Lower-case name as used in config.
    pub fn as_str(self) -> &'static str {
        match self {
            OnExpiry::Disconnect => "disconnect",
            OnExpiry::Allow => "allow",
        }
    }
}

impl FromStr for OnExpiry {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "disconnect" => Ok(OnExpiry::Disconnect),
            "allow" => Ok(OnExpiry::Allow),
            other => Err(format!(
                "unknown value {other:?}; expected disconnect or allow"
            )),
        }
    }
}

/// An authenticated caller.
///
/// Construct with a struct literal ending in `..Default::default()`, so that
/// fields added later do not break the construction sites.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Principal {
    /// The name policy and audit know them by: the local user name, the
    /// mapped token claim (e.g. the email), the client's configured name, or
    /// the certificate name.
    pub name: String,
    /// Human, service or agent.
    pub kind: PrincipalKind,
    /// Group memberships.
    pub groups: Vec<String>,
    /// Free-form attributes seen by policy and, as `sluice.attr.<key>`, by the database.
    pub attributes: BTreeMap<String, String>,
    /// How they proved it (`scram-sha-256`, `oidc`, `oidc-client`, `mtls`, …).
    pub method: &'static str,
    /// A human-readable name (the token's `name` claim), when known.
    pub display_name: Option<String>,
    /// The identity provider's stable id for them: the token's `sub` (with
    /// its issuer in `iss#sub` form) or the certificate's subject; `None`
    /// for local users.
    pub subject: Option<String>,
    /// For an agent or service acting for someone: that person's name.
    pub on_behalf_of: Option<String>,
    /// When the credential this session was opened with expires (a token's
    /// `exp`); `None` for credentials that do not expire (passwords, and
    /// certificates, which are checked at the handshake only).
    pub expires_at: Option<SystemTime>,
    /// What to do with the session once `expires_at` has passed.
    pub on_expiry: OnExpiry,
}

impl Principal {
    /// True when the session must end now: the credential has expired and
    /// the issuer's `on_expiry` is `disconnect`.
    pub fn must_end(&self, now: SystemTime) -> bool {
        self.on_expiry == OnExpiry::Disconnect && self.expires_at.is_some_and(|t| t <= now)
    }
}

/// The message for a session whose token expired (SQLSTATE `28000`), for
/// the relay to send before it closes the session.
pub const EXPIRED_MESSAGE: &str =
    "sluice: your token has expired; run `sluice login` again and reconnect";

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn must_end_only_after_expiry_and_when_configured() {
        let now = SystemTime::now();
        let mut p = Principal {
            name: "a".into(),
            expires_at: Some(now + Duration::from_secs(5)),
            ..Default::default()
        };
        assert!(!p.must_end(now));
        assert!(p.must_end(now + Duration::from_secs(5)));
        p.on_expiry = OnExpiry::Allow;
        assert!(!p.must_end(now + Duration::from_secs(60)));
        p.expires_at = None;
        p.on_expiry = OnExpiry::Disconnect;
        assert!(!p.must_end(now + Duration::from_secs(60)));
    }
}
