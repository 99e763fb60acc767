//! The identity that travels with a session to policy and audit.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// What kind of caller this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrincipalKind {
    /// A person.
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

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Stable subject (user name or token subject).
    pub name: String,
    /// Human, service or agent.
    pub kind: PrincipalKind,
    /// Group memberships.
    pub groups: Vec<String>,
    /// Free-form attributes seen by policy.
    pub attributes: BTreeMap<String, String>,
    /// How they proved it (`scram-sha-256`, `oidc`, …).
    pub method: &'static str,
}
