//! Who may see results unmasked: the Cedar action `Sluice::Action::"unmask"`.
//!
//! Masking is on for everyone by default. Only policies that name `unmask`
//! in their scope take part (so `permit (principal, action, resource)` and
//! statement guardrails never lift masking by accident). The resource is
//! the target (the whole session's results), a table (`schema.table`) or a
//! column (`schema.table.column`). A column's values are shown unmasked
//! when some such `permit` applies to the column, its table or the target,
//! and no such `forbid` applies to any of them; a field that is not a table
//! column (a computed one) only when the target is unmasked. Any evaluation
//! error keeps masking on.
//!
//! ```cedar
//! @id("dbas-see-staging-unmasked")
//! permit (principal in Sluice::Group::"dba", action == Sluice::Action::"unmask", resource)
//! when { resource.environment != "production" };
//!
//! @id("support-sees-phones")
//! permit (principal in Sluice::Group::"support", action == Sluice::Action::"unmask",
//!         resource == Sluice::Column::"public.customers.phone");
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision as CedarDecision, Effect, Entities, Entity,
    EntityUid, Policy, PolicySet, Request as CedarRequest, Schema,
};
use sluice_identity::Principal;

use crate::{column_entity, entity_list, table_entity, uid, PolicyEngine, Request, TargetRef};

/// What a session sees unmasked.
#[derive(Debug)]
pub enum Unmask {
    /// Nothing: every result is masked (no unmask policy applies).
    Nothing,
    /// Everything: masking is off for the session.
    Everything,
    /// Some columns (and, with [`ColumnUnmask::everything_else`], whatever
    /// is not a table column): ask per column.
    Columns(Arc<ColumnUnmask>),
}

/// Whether `p` is about `unmask` alone (it then plays no part in judging
/// statements).
pub(crate) fn only_unmask(p: &Policy) -> bool {
    matches!(p.action_constraint(), ActionConstraint::Eq(a) if a == uid("Action", "unmask"))
}

fn names_unmask(p: &Policy) -> bool {
    let unmask = uid("Action", "unmask");
    match p.action_constraint() {
        ActionConstraint::Eq(a) => a == unmask,
        ActionConstraint::In(list) => list.contains(&unmask),
        _ => false,
    }
}

/// Which policies applied to one request.
#[derive(Debug, Clone, Copy, Default)]
struct Applied {
    permit: bool,
    forbid: bool,
}

/// A session's unmask rules for the columns of its results: Cedar runs
/// once per column per session (results are remembered).
pub struct ColumnUnmask {
    policies: PolicySet,
    schema: Schema,
    authorizer: Authorizer,
    principal: EntityUid,
    target: EntityUid,
    environment: String,
    /// The principal, its groups and the target.
    base: Vec<Entity>,
    context: Context,
    /// What applied to the target itself (`None`: evaluation failed).
    on_target: Option<Applied>,
    /// Columns decided so far, by `schema.table.column`.
    decided: Mutex<HashMap<String, bool>>,
}

impl std::fmt::Debug for ColumnUnmask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColumnUnmask")
            .field("principal", &self.principal.to_string())
            .field("target", &self.target.to_string())
            .finish()
    }
}

/// Columns remembered per session (it starts over beyond).
const DECIDED_MAX: usize = 4096;

impl ColumnUnmask {
    fn judge(&self, resource: EntityUid, extra: Vec<Entity>) -> Option<Applied> {
        let mut list = self.base.clone();
        list.extend(extra);
        let entities = Entities::from_entities(list, Some(&self.schema)).ok()?;
        let request = CedarRequest::new(
            self.principal.clone(),
            uid("Action", "unmask"),
            resource,
            self.context.clone(),
            None,
        )
        .ok()?;
        let response = self
            .authorizer
            .is_authorized(&request, &self.policies, &entities);
        if response.diagnostics().errors().next().is_some() {
            return None;
        }
        Some(match response.decision() {
            CedarDecision::Allow => Applied {
                permit: true,
                forbid: false,
            },
            // Denied with reasons: forbids applied; without: no permit did.
            CedarDecision::Deny => Applied {
                permit: false,
                forbid: response.diagnostics().reason().next().is_some(),
            },
        })
    }

    /// Whether values that are not a table's column (computed fields) are
    /// shown unmasked: only when the whole target is.
    pub fn everything_else(&self) -> bool {
        matches!(self.on_target, Some(a) if a.permit && !a.forbid)
    }

    /// Whether the values of column `column` of table `schema.table` are
    /// shown unmasked.
    pub fn column(&self, schema: &str, table: &str, column: &str) -> bool {
        let name = format!("{schema}.{table}.{column}");
        let known = self.decided.lock().ok().and_then(|d| d.get(&name).copied());
        if let Some(known) = known {
            return known;
        }
        let unmasked = self.decide(schema, table, column, &name);
        if let Ok(mut d) = self.decided.lock() {
            if d.len() >= DECIDED_MAX {
                d.clear();
            }
            d.insert(name, unmasked);
        }
        unmasked
    }

    fn decide(&self, schema: &str, table: &str, column: &str, name: &str) -> bool {
        let Some(on_target) = self.on_target else {
            return false;
        };
        let Ok(table_entity) = table_entity(schema, table, &self.environment, &self.target) else {
            return false;
        };
        let table_uid = table_entity.uid();
        let Ok(column_entity) = column_entity(name, column, &self.environment, table_uid.clone())
        else {
            return false;
        };
        let column_uid = column_entity.uid();
        let Some(on_table) = self.judge(table_uid, vec![table_entity.clone()]) else {
            return false;
        };
        let Some(on_column) = self.judge(column_uid, vec![table_entity, column_entity]) else {
            return false;
        };
        let all = [on_target, on_table, on_column];
        all.iter().any(|a| a.permit) && !all.iter().any(|a| a.forbid)
    }
}

impl PolicyEngine {
    /// What `principal` sees unmasked of `target`'s results. Decided when a
    /// session starts; columns are then asked one by one.
    pub fn unmask_for(&self, principal: &Principal, target: &TargetRef<'_>) -> Unmask {
        let mut policies = PolicySet::new();
        let (mut any_permit, mut any_forbid) = (false, false);
        for p in self.policies.policies().filter(|p| names_unmask(p)) {
            any_permit |= p.effect() == Effect::Permit;
            any_forbid |= p.effect() == Effect::Forbid;
            if policies.add(p.clone()).is_err() {
                return Unmask::Nothing;
            }
        }
        if !any_permit {
            return Unmask::Nothing;
        }
        let Some(rules) = self.column_unmask(policies, principal, target) else {
            return Unmask::Nothing;
        };
        // With no forbid anywhere, a permit on the target covers every column.
        if rules.everything_else() && !any_forbid {
            return Unmask::Everything;
        }
        Unmask::Columns(Arc::new(rules))
    }

    fn column_unmask(
        &self,
        policies: PolicySet,
        principal: &Principal,
        target: &TargetRef<'_>,
    ) -> Option<ColumnUnmask> {
        let empty = sluice_sql::analyze("", sluice_sql::Dialect::default()).ok()?;
        let context = self
            .context(&Request {
                principal,
                target: target.clone(),
                analysis: Some(&empty),
                application_name: "",
                hour_utc: 0,
                client_address: "",
                search_path: &[],
            })
            .ok()?;
        let principal_uid = crate::principal_uid(principal);
        let target_uid = uid("Target", target.name);
        let base = entity_list(principal, target, &principal_uid, &target_uid).ok()?;
        let mut rules = ColumnUnmask {
            policies,
            schema: self.schema.clone(),
            authorizer: Authorizer::new(),
            principal: principal_uid,
            target: target_uid.clone(),
            environment: target.environment.to_owned(),
            base,
            context,
            on_target: None,
            decided: Mutex::new(HashMap::new()),
        };
        rules.on_target = rules.judge(target_uid, Vec::new());
        Some(rules)
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

    fn engine(policies: &str) -> PolicyEngine {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.cedar"), policies).unwrap();
        PolicyEngine::load(Some(dir.path()), &[]).unwrap()
    }

    fn everything(e: &PolicyEngine, groups: &[&str], env: &str) -> bool {
        matches!(e.unmask_for(&who(groups), &target(env)), Unmask::Everything)
    }

    fn columns(e: &PolicyEngine, groups: &[&str], env: &str) -> Arc<ColumnUnmask> {
        match e.unmask_for(&who(groups), &target(env)) {
            Unmask::Columns(c) => c,
            other => panic!("expected per-column rules, got {other:?}"),
        }
    }

    #[test]
    fn masked_by_default_and_lifted_only_by_a_permit_naming_unmask() {
        let e = PolicyEngine::builtin().unwrap();
        assert!(matches!(
            e.unmask_for(&who(&["dba"]), &target("staging")),
            Unmask::Nothing
        ));

        let e = engine(
            r#"@id("dbas-unmasked-outside-production")
permit (principal in Sluice::Group::"dba", action == Sluice::Action::"unmask", resource)
when { resource.environment != "production" };
@id("everyone-may-do-anything")
permit (principal, action, resource);"#,
        );
        assert!(everything(&e, &["dba"], "staging"));
        // Not the target: then every column is asked, and none is unmasked.
        let prod = columns(&e, &["dba"], "production");
        assert!(!prod.everything_else());
        assert!(!prod.column("public", "customers", "email"));
        let dev = columns(&e, &["dev"], "staging");
        assert!(!dev.column("public", "customers", "email"));
    }

    #[test]
    fn a_column_or_a_table_can_be_unmasked_alone() {
        let e = engine(
            r#"@id("support-sees-phones")
permit (principal in Sluice::Group::"support", action == Sluice::Action::"unmask",
        resource == Sluice::Column::"public.customers.phone");
@id("finance-sees-invoices")
permit (principal in Sluice::Group::"finance", action == Sluice::Action::"unmask",
        resource in Sluice::Table::"billing.invoices")
when { resource.environment == "production" };"#,
        );
        let support = columns(&e, &["support"], "production");
        assert!(support.column("public", "customers", "phone"));
        assert!(!support.column("public", "customers", "email"));
        assert!(!support.column("other", "customers", "phone"));
        assert!(!support.everything_else(), "computed fields stay masked");
        // Remembered: the same answer again.
        assert!(support.column("public", "customers", "phone"));

        let finance = columns(&e, &["finance"], "production");
        assert!(finance.column("billing", "invoices", "iban"));
        assert!(!finance.column("public", "customers", "phone"));
        let finance_staging = columns(&e, &["finance"], "staging");
        assert!(!finance_staging.column("billing", "invoices", "iban"));

        // Unmask-only policies do not make statements judged per column.
        assert!(!e.column_policies && !e.table_policies);
    }

    #[test]
    fn a_forbid_on_a_column_wins_over_a_permit_on_the_target() {
        let e = engine(
            r#"@id("dbas-see-everything")
permit (principal in Sluice::Group::"dba", action == Sluice::Action::"unmask", resource);
@id("but-never-card-numbers")
forbid (principal, action == Sluice::Action::"unmask", resource)
when { resource is Sluice::Column && resource.column == "card_number" };"#,
        );
        let dba = columns(&e, &["dba"], "production");
        assert!(dba.everything_else());
        assert!(dba.column("public", "customers", "email"));
        assert!(!dba.column("public", "customers", "card_number"));
        let dev = columns(&e, &["dev"], "production");
        assert!(!dev.column("public", "customers", "email"));
    }
}
