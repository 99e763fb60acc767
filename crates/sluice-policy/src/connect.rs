//! Connect-time authorization: may this principal open this target?
//!
//! Decided by the same Cedar engine as statements, with the action
//! `Sluice::Action::"connect"`. Only policies that name that action in
//! their scope (`action == Sluice::Action::"connect"` or `action in [...,
//! Sluice::Action::"connect"]`) take part, so the statement guardrails and
//! policies written for statements (`forbid (principal, action, resource)
//! when {...}`) never stop a connection by accident:
//!
//! - no policy names `connect`: everyone may connect;
//! - only `forbid` policies name it: a block list;
//! - some `permit` policy names it: an allow list (Cedar's default deny).
//!
//! The context is the statement context with no statement (no risks, no
//! tables, `unparseable` false), so connect policies can use
//! `context.environment`, `context.application_name` and `context.hour_utc`.

use std::str::FromStr;

use cedar_policy::{
    ActionConstraint, Decision as CedarDecision, EntityUid, Policy, PolicySet,
    Request as CedarRequest,
};
use sluice_identity::Principal;

use crate::{uid, PolicyEngine, Request, TargetRef};

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectDenied {
    /// The policy (@id) that refused, or `default-deny` for an allow list
    /// that does not permit it, or `policy-error`.
    pub rule: String,
    /// Why (the policy's @reason).
    pub reason: String,
}

fn names_connect(p: &Policy, connect: &EntityUid) -> bool {
    match p.action_constraint() {
        ActionConstraint::Eq(a) => &a == connect,
        ActionConstraint::In(list) => list.iter().any(|a| a == connect),
        _ => false,
    }
}

impl PolicyEngine {
    /// Whether `principal` may open `target`; evaluated once per session,
    /// after authentication and before the upstream login.
    pub fn authorize_connect(
        &self,
        principal: &Principal,
        target: &TargetRef<'_>,
        application_name: &str,
        hour_utc: u8,
    ) -> Result<(), ConnectDenied> {
        let failed = |reason: String| ConnectDenied {
            rule: "policy-error".into(),
            reason: format!("the policy could not be evaluated ({reason}); refusing to be safe"),
        };
        let connect = uid("Action", "connect");
        let mut set = PolicySet::new();
        let mut any_permit = false;
        for p in self.policies.policies() {
            if names_connect(p, &connect) {
                any_permit |= p.effect() == cedar_policy::Effect::Permit;
                set.add(p.clone()).map_err(|e| failed(e.to_string()))?;
            }
        }
        if set.is_empty() {
            return Ok(());
        }
        if !any_permit {
            // Only forbids name connect: everything else is allowed.
            let permit = Policy::from_str(
                r#"permit (principal, action == Sluice::Action::"connect", resource);"#,
            )
            .map_err(|e| failed(e.to_string()))?
            .new_id(cedar_policy::PolicyId::new("connect-allowed-by-default"));
            set.add(permit).map_err(|e| failed(e.to_string()))?;
        }
        let session = self.session(principal, target).map_err(failed)?;
        // No statement: an empty analysis gives empty facts, not "unparseable".
        let empty = sluice_sql::analyze("", sluice_sql::Dialect::default())
            .map_err(|e| failed(e.to_string()))?;
        let context = self
            .context(&Request {
                principal,
                target: target.clone(),
                analysis: Some(&empty),
                application_name,
                hour_utc,
                client_address: "",
                search_path: &[],
            })
            .map_err(failed)?;
        let request = CedarRequest::new(
            session.principal.clone(),
            connect,
            session.resource.clone(),
            context,
            None,
        )
        .map_err(|e| failed(e.to_string()))?;
        let response = self
            .authorizer
            .is_authorized(&request, &set, &session.entities);
        if let Some(e) = response.diagnostics().errors().next() {
            return Err(failed(e.to_string()));
        }
        if response.decision() == CedarDecision::Allow {
            return Ok(());
        }
        // Name the first deciding forbid in load order, as statements do.
        let mut reasons: Vec<String> = response
            .diagnostics()
            .reason()
            .map(|id| id.to_string())
            .collect();
        reasons.sort_by_key(|id| self.order.get(id.as_str()).copied().unwrap_or(usize::MAX));
        let denied = reasons
            .first()
            .and_then(|id| {
                let p = set.policy(&cedar_policy::PolicyId::new(id))?;
                Some(ConnectDenied {
                    rule: id.clone(),
                    reason: p
                        .annotation("reason")
                        .unwrap_or("a policy forbids it")
                        .to_owned(),
                })
            })
            .unwrap_or_else(|| ConnectDenied {
                rule: "default-deny".into(),
                reason: "no policy permits connecting to this target".into(),
            });
        Err(denied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_identity::PrincipalKind;

    fn engine(policies: &str) -> PolicyEngine {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.cedar"), policies).unwrap();
        PolicyEngine::load(Some(dir.path()), &[]).unwrap()
    }

    fn who(name: &str, kind: PrincipalKind, groups: &[&str]) -> Principal {
        Principal {
            name: name.into(),
            kind,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        }
    }

    fn target(env: &str) -> TargetRef<'_> {
        TargetRef {
            name: "orders",
            environment: env,
        }
    }

    #[test]
    fn builtin_guardrails_never_stop_a_connection() {
        let e = PolicyEngine::builtin().unwrap();
        let p = who("a", PrincipalKind::Agent, &[]);
        assert!(e
            .authorize_connect(&p, &target("production"), "psql", 3)
            .is_ok());
    }

    #[test]
    fn statement_policies_do_not_apply_to_connect() {
        let e = engine(
            r#"@id("agents-read-only")
forbid (principal is Sluice::Agent, action, resource)
unless { action == Sluice::Action::"select" };"#,
        );
        let p = who("bot", PrincipalKind::Agent, &[]);
        assert!(e
            .authorize_connect(&p, &target("production"), "x", 3)
            .is_ok());
    }

    #[test]
    fn a_forbid_on_connect_is_a_block_list() {
        let e = engine(
            r#"@id("prod-only-for-dba")
@reason("only DBAs may open production targets")
forbid (principal, action == Sluice::Action::"connect", resource)
when { resource.environment == "production" }
unless { principal in Sluice::Group::"dba" };"#,
        );
        let dev = who("d", PrincipalKind::Human, &["dev"]);
        let dba = who("a", PrincipalKind::Human, &["dba"]);
        let err = e
            .authorize_connect(&dev, &target("production"), "psql", 3)
            .unwrap_err();
        assert_eq!(err.rule, "prod-only-for-dba");
        assert_eq!(err.reason, "only DBAs may open production targets");
        assert!(e
            .authorize_connect(&dba, &target("production"), "psql", 3)
            .is_ok());
        assert!(e
            .authorize_connect(&dev, &target("staging"), "psql", 3)
            .is_ok());
    }

    #[test]
    fn a_permit_on_connect_is_an_allow_list() {
        let e = engine(
            r#"@id("services-on-staging")
permit (principal is Sluice::Service, action in [Sluice::Action::"connect"], resource)
when { context.environment == "staging" };"#,
        );
        let svc = who("s", PrincipalKind::Service, &[]);
        let person = who("p", PrincipalKind::Human, &[]);
        assert!(e
            .authorize_connect(&svc, &target("staging"), "x", 3)
            .is_ok());
        let err = e
            .authorize_connect(&person, &target("staging"), "x", 3)
            .unwrap_err();
        assert_eq!(err.rule, "default-deny");
    }
}
