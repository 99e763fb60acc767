//! Who may see results unmasked: the Cedar action `Sluice::Action::"unmask"`.
//!
//! Masking is on for everyone by default. Only policies that name `unmask`
//! in their scope take part (so `permit (principal, action, resource)` and
//! statement guardrails never lift masking by accident), and a principal
//! sees results unmasked only when such a `permit` applies and no `forbid`
//! does:
//!
//! ```cedar
//! @id("dbas-see-staging-unmasked")
//! permit (principal in Sluice::Group::"dba", action == Sluice::Action::"unmask", resource)
//! when { resource.environment != "production" };
//! ```

use cedar_policy::{
    ActionConstraint, Decision as CedarDecision, PolicySet, Request as CedarRequest,
};
use sluice_identity::Principal;

use crate::{uid, PolicyEngine, Request, TargetRef};

impl PolicyEngine {
    /// Whether `principal` sees results from `target` unmasked. Decided once
    /// per session; any evaluation error keeps masking on.
    pub fn allows_unmask(&self, principal: &Principal, target: &TargetRef<'_>) -> bool {
        let unmask = uid("Action", "unmask");
        let mut set = PolicySet::new();
        let mut any_permit = false;
        for p in self.policies.policies() {
            let named = match p.action_constraint() {
                ActionConstraint::Eq(a) => a == unmask,
                ActionConstraint::In(list) => list.contains(&unmask),
                _ => false,
            };
            if named {
                any_permit |= p.effect() == cedar_policy::Effect::Permit;
                if set.add(p.clone()).is_err() {
                    return false;
                }
            }
        }
        if !any_permit {
            return false;
        }
        let Ok(session) = self.session(principal, target) else {
            return false;
        };
        let Ok(empty) = sluice_sql::analyze("", sluice_sql::Dialect::default()) else {
            return false;
        };
        let Ok(context) = self.context(&Request {
            principal,
            target: target.clone(),
            analysis: Some(&empty),
            application_name: "",
            hour_utc: 0,
            client_address: "",
            search_path: &[],
        }) else {
            return false;
        };
        let Ok(request) = CedarRequest::new(
            session.principal.clone(),
            unmask,
            session.resource.clone(),
            context,
            None,
        ) else {
            return false;
        };
        let response = self
            .authorizer
            .is_authorized(&request, &set, &session.entities);
        response.diagnostics().errors().next().is_none()
            && response.decision() == CedarDecision::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_identity::PrincipalKind;

    fn who(groups: &[&str]) -> Principal {
        Principal {
            name: "p".into(),
            kind: PrincipalKind::Human,
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
    fn masked_by_default_and_lifted_only_by_a_permit_naming_unmask() {
        let e = PolicyEngine::builtin().unwrap();
        assert!(!e.allows_unmask(&who(&["dba"]), &target("staging")));

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p.cedar"),
            r#"@id("dbas-unmasked-outside-production")
permit (principal in Sluice::Group::"dba", action == Sluice::Action::"unmask", resource)
when { resource.environment != "production" };"#,
        )
        .unwrap();
        let e = PolicyEngine::load(Some(dir.path()), &[]).unwrap();
        assert!(e.allows_unmask(&who(&["dba"]), &target("staging")));
        assert!(!e.allows_unmask(&who(&["dba"]), &target("production")));
        assert!(!e.allows_unmask(&who(&["dev"]), &target("staging")));
    }
}
