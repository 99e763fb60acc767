//! Policy: who may run what, where.
//!
//! Decisions are made by [Cedar](https://cedarpolicy.com): the principal is
//! the caller, the action is the kind of statement, the resource is the
//! target, and the context carries what analysis found (risks, tables,
//! functions, environment). The built-in guardrails (`guardrails.cedar`)
//! are active with zero configuration; a deployment adds its own policies
//! and may switch built-ins off by id.
#![warn(missing_docs)]

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use std::str::FromStr;
use std::sync::Mutex;

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityUid, Policy, PolicyId,
    PolicySet, Request as CedarRequest, RestrictedExpression, Schema, ValidationMode, Validator,
};
use sluice_identity::{Principal, PrincipalKind};
use sluice_sql::{Analysis, Kind};

pub mod connect;
mod unmask;

pub use unmask::{ColumnUnmask, Unmask};

/// The schema, as Cedar text.
pub const SCHEMA: &str = include_str!("sluice.cedarschema");
/// The built-in guardrails, as Cedar text.
pub const GUARDRAILS: &str = include_str!("guardrails.cedar");

/// A policy set that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A file could not be read.
    #[error("{file}: {reason}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        reason: String,
    },
    /// Cedar could not parse a file.
    #[error("{file}: {reason}")]
    Parse {
        /// The file.
        file: String,
        /// Cedar's message, with line and column.
        reason: String,
    },
    /// A policy does not fit the schema.
    #[error("{file}: policy {id}: {reason}")]
    Invalid {
        /// The file.
        file: String,
        /// The policy's @id (or Cedar's id).
        id: String,
        /// Why.
        reason: String,
    },
}

/// The outcome for one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Run it. `flags` name the risks a non-production environment let through.
    Allow {
        /// Risky capabilities noticed but allowed.
        flags: Vec<String>,
    },
    /// Refuse it.
    Deny {
        /// The rule (@id) that refused it.
        rule: String,
        /// Why, for the person.
        reason: String,
        /// What to do instead.
        hint: Option<String>,
    },
    /// Run it only with approval from `approvers`.
    Approval {
        /// The rule (@id).
        rule: String,
        /// Why approval is needed.
        reason: String,
        /// The group whose approval is needed.
        approvers: String,
        /// `@approval_mode("hold" | "refuse")`: overrides `[approvals] mode`.
        mode: Option<String>,
        /// `@approvals("2")`: distinct approvers needed (else the config's).
        required: Option<u32>,
    },
}

impl Decision {
    /// `allow`, `deny` or `approval`.
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Allow { .. } => "allow",
            Decision::Deny { .. } => "deny",
            Decision::Approval { .. } => "approval",
        }
    }

    /// The rule that decided, if a guardrail or policy refused.
    pub fn rule(&self) -> Option<&str> {
        match self {
            Decision::Allow { .. } => None,
            Decision::Deny { rule, .. } | Decision::Approval { rule, .. } => Some(rule),
        }
    }
}

/// The target a statement is for.
#[derive(Debug, Clone)]
pub struct TargetRef<'a> {
    /// Target name.
    pub name: &'a str,
    /// Its environment.
    pub environment: &'a str,
}

/// Everything a decision looks at.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// Who.
    pub principal: &'a Principal,
    /// Where.
    pub target: TargetRef<'a>,
    /// What (`None`: the statement could not be parsed).
    pub analysis: Option<&'a Analysis>,
    /// The client's application_name.
    pub application_name: &'a str,
    /// Hour of the day, UTC.
    pub hour_utc: u8,
    /// The client's IP address (empty when unknown).
    pub client_address: &'a str,
    /// Every schema an unqualified table name could resolve to in this
    /// session (its search_path, `$user` expanded, `pg_catalog` first).
    pub search_path: &'a [String],
}

/// Schemas an unqualified name resolves through by default.
pub fn default_schemas() -> Vec<String> {
    vec!["pg_catalog".to_owned(), "public".to_owned()]
}

/// A session's principal and target as Cedar entities.
pub struct SessionEntities {
    principal: EntityUid,
    resource: EntityUid,
    entities: Entities,
    /// Everything about the session a policy can observe (principal,
    /// groups, attributes, target): the first part of a decision's memo key.
    identity: String,
}

/// Decisions remembered per engine (it starts over beyond).
const DECISION_MEMO: usize = 4096;

/// Loaded, validated policies.
pub struct PolicyEngine {
    policies: PolicySet,
    /// Position of each policy id in load order.
    order: HashMap<String, usize>,
    schema: Schema,
    authorizer: Authorizer,
    /// Some policy names a Table resource: tables are judged one by one.
    table_policies: bool,
    /// Some policy names a Column resource.
    column_policies: bool,
    /// The context attributes some policy reads (`None`: the policies use
    /// the context in a way this cannot follow, so nothing is memoised).
    context_read: Option<BTreeSet<String>>,
    /// Decisions by everything the policies can observe of a request
    /// (see [`PolicyEngine::memo_key`]): Cedar runs once per distinct set of
    /// facts, not once per new statement text.
    memo: Mutex<HashMap<String, Decision>>,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("policies", &self.policies.policies().count())
            .finish()
    }
}

impl PolicyEngine {
    /// The built-in guardrails only.
    pub fn builtin() -> Result<Self, PolicyError> {
        Self::load(None, &[])
    }

    /// Built-in guardrails (less `disabled` ids) plus every `*.cedar` file in `dir`.
    pub fn load(dir: Option<&Path>, disabled: &[String]) -> Result<Self, PolicyError> {
        let schema_err = |reason: String| PolicyError::Parse {
            file: "sluice.cedarschema".into(),
            reason,
        };
        let (schema, _warnings) =
            Schema::from_cedarschema_str(SCHEMA).map_err(|e| schema_err(e.to_string()))?;
        let mut sources: Vec<(String, String)> =
            vec![("built-in guardrails".into(), GUARDRAILS.into())];
        if let Some(dir) = dir {
            let read_err = |reason: String| PolicyError::Read {
                file: dir.display().to_string(),
                reason,
            };
            let mut files: Vec<_> = std::fs::read_dir(dir)
                .map_err(|e| read_err(e.to_string()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "cedar"))
                .collect();
            files.sort();
            for f in files {
                let text = std::fs::read_to_string(&f).map_err(|e| PolicyError::Read {
                    file: f.display().to_string(),
                    reason: e.to_string(),
                })?;
                sources.push((f.display().to_string(), text));
            }
        }
        let mut policies = PolicySet::new();
        let mut seen_ids: HashSet<String> = HashSet::new();
        let mut seen_order: Vec<String> = Vec::new();
        for (file, text) in &sources {
            let set = PolicySet::from_str(text).map_err(|e| PolicyError::Parse {
                file: file.clone(),
                reason: e.to_string(),
            })?;
            for (n, p) in set.policies().enumerate() {
                let name = p
                    .annotation("id")
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("{file}#{n}"));
                if disabled.contains(&name) {
                    continue;
                }
                seen_order.push(name.clone());
                if !seen_ids.insert(name.clone()) {
                    return Err(PolicyError::Invalid {
                        file: file.clone(),
                        id: name,
                        reason: "duplicate @id".into(),
                    });
                }
                let policy =
                    Policy::parse(Some(PolicyId::new(&name)), p.to_string()).map_err(|e| {
                        PolicyError::Parse {
                            file: file.clone(),
                            reason: e.to_string(),
                        }
                    })?;
                policies.add(policy).map_err(|e| PolicyError::Invalid {
                    file: file.clone(),
                    id: name.clone(),
                    reason: e.to_string(),
                })?;
            }
            let validation =
                Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
            let first = validation
                .validation_errors()
                .next()
                .map(|e| (e.policy_id().to_string(), e.to_string()));
            if let Some((id, reason)) = first {
                return Err(PolicyError::Invalid {
                    file: file.clone(),
                    id,
                    reason,
                });
            }
        }
        // A typo in `disable` would silently keep a guardrail on: name it.
        if let Some(unknown) = disabled.iter().find(|d| !builtin_ids().contains(d)) {
            return Err(PolicyError::Invalid {
                file: "[policy].disable".into(),
                id: unknown.clone(),
                reason: format!(
                    "no built-in guardrail has this id; the ids are: {}",
                    builtin_ids().join(", ")
                ),
            });
        }
        let order = seen_order
            .into_iter()
            .enumerate()
            .map(|(i, id)| (id, i))
            .collect();
        // Policies about statements (not only `unmask`, which is judged per
        // column of a result, see unmask.rs): a Table or Column there makes
        // every statement's tables and columns resources.
        let text: String = policies
            .policies()
            .filter(|p| !unmask::only_unmask(p))
            .map(|p| p.to_string())
            .collect();
        // A Column policy is also about its Table (columns are in tables).
        let column_policies = text.contains("Sluice::Column");
        let table_policies = column_policies || text.contains("Sluice::Table");
        let context_read = context_attributes_read(&policies);
        Ok(PolicyEngine {
            policies,
            order,
            schema,
            authorizer: Authorizer::new(),
            table_policies,
            column_policies,
            context_read,
            memo: Mutex::new(HashMap::new()),
        })
    }

    /// Decide one statement. Every action the statement performs is checked;
    /// a denial wins over an approval, which wins over an allow. Fails closed:
    /// an evaluation error is a denial.
    pub fn decide(&self, req: &Request<'_>) -> Decision {
        match self.session(req.principal, &req.target) {
            Ok(session) => self.decide_in(&session, req),
            Err(reason) => evaluation_failed(reason),
        }
    }

    /// What stays the same for every statement of a session (the principal,
    /// its groups, the target), built once.
    pub fn session(
        &self,
        principal: &Principal,
        target: &TargetRef<'_>,
    ) -> Result<SessionEntities, String> {
        let principal_uid = principal_uid(principal);
        let resource = uid("Target", target.name);
        let entities = self.entities(principal, target, &principal_uid, &resource)?;
        let mut identity = format!(
            "{principal_uid}\u{1f}{}\u{1f}{}",
            target.name, target.environment
        );
        let groups: BTreeSet<&String> = principal.groups.iter().collect();
        for g in groups {
            let _ = write!(identity, "\u{1f}g:{g}");
        }
        let attributes: BTreeSet<(&String, &String)> = principal.attributes.iter().collect();
        for (k, v) in attributes {
            let _ = write!(identity, "\u{1f}a:{k}={v}");
        }
        Ok(SessionEntities {
            principal: principal_uid,
            resource,
            entities,
            identity,
        })
    }

    /// [`decide`](Self::decide) with the session's entities already built.
    ///
    /// Remembers decisions by everything the policies can observe: a new
    /// statement with the same actions, risks and (where policies read
    /// them) tables, columns and other context as one decided before, for
    /// the same session identity, gets that decision without running Cedar.
    pub fn decide_in(&self, session: &SessionEntities, req: &Request<'_>) -> Decision {
        let Some(key) = self.memo_key(session, req) else {
            return self.evaluate(session, req);
        };
        let remembered = self
            .memo
            .lock()
            .ok()
            .and_then(|memo| memo.get(&key).cloned());
        let decision = match remembered {
            Some(d) => d,
            None => {
                let d = self.evaluate(session, req);
                if let Ok(mut memo) = self.memo.lock() {
                    if memo.len() >= DECISION_MEMO {
                        memo.clear();
                    }
                    memo.insert(key, d.clone());
                }
                d
            }
        };
        match decision {
            // what is flagged is this statement's own
            Decision::Allow { .. } => Decision::Allow {
                flags: flags(req.analysis),
            },
            other => other,
        }
    }

    /// The memo key of a request: the session identity, the actions, the
    /// risks, and every context attribute a policy reads; with table or
    /// column policies, also the tables and columns and the search path.
    /// `None` when the policies read the context in a way this cannot follow.
    fn memo_key(&self, session: &SessionEntities, req: &Request<'_>) -> Option<String> {
        let read = self.context_read.as_ref()?;
        let mut key = String::with_capacity(256);
        key.push_str(&session.identity);
        let join = |key: &mut String, items: &mut dyn Iterator<Item = String>| {
            key.push('[');
            for item in items {
                key.push_str(&item);
                key.push('\u{1e}');
            }
            key.push(']');
        };
        let a = req.analysis;
        key.push_str("\u{1d}actions");
        match a {
            Some(a) if !a.statements.is_empty() => join(
                &mut key,
                &mut a.actions().iter().map(|k| k.as_str().to_owned()),
            ),
            _ => key.push_str("[other]"),
        }
        key.push_str("\u{1d}risks");
        match a {
            Some(a) => join(
                &mut key,
                &mut a.risks().iter().map(|r| r.as_str().to_owned()),
            ),
            None => key.push_str("unparseable"),
        }
        let sets = |name: &str| -> Option<BTreeSet<String>> {
            let a = a?;
            Some(match name {
                "tables_read" => a.tables_read(),
                "tables_written" => a.tables_written(),
                "relations_read" => qualified(&a.tables_read(), req.search_path),
                "relations_written" => qualified(&a.tables_written(), req.search_path),
                "columns_read" => a.columns_read(),
                "columns_written" => a.columns_written(),
                "functions" => a.functions(),
                _ => return None,
            })
        };
        for name in read {
            key.push('\u{1d}');
            key.push_str(name);
            match name.as_str() {
                "environment" => key.push_str(req.target.environment),
                "client_address" => key.push_str(req.client_address),
                "application_name" => key.push_str(req.application_name),
                "hour_utc" => {
                    let _ = write!(key, "{}", req.hour_utc);
                }
                "statement_count" => {
                    let _ = write!(key, "{}", a.map_or(0, |a| a.statements.len()));
                }
                // in the risks part already
                "unparseable" | "risks" => {}
                other => join(&mut key, &mut sets(other).unwrap_or_default().into_iter()),
            }
        }
        if (self.table_policies || self.column_policies) && a.is_some() {
            for name in [
                "tables_read",
                "tables_written",
                "columns_read",
                "columns_written",
            ] {
                key.push('\u{1d}');
                join(&mut key, &mut sets(name).unwrap_or_default().into_iter());
            }
            join(&mut key, &mut req.search_path.iter().cloned());
        }
        Some(key)
    }

    /// [`decide_in`](Self::decide_in) without the memo: what a decision
    /// costs for facts not decided before (the policy benchmark shows it).
    pub fn decide_uncached(&self, session: &SessionEntities, req: &Request<'_>) -> Decision {
        self.evaluate(session, req)
    }

    /// Run Cedar for every action of the statement.
    fn evaluate(&self, session: &SessionEntities, req: &Request<'_>) -> Decision {
        let actions: BTreeSet<Kind> = match req.analysis {
            Some(a) if !a.statements.is_empty() => a.actions(),
            _ => BTreeSet::from([Kind::Other]),
        };
        let principal = &session.principal;
        let resource = &session.resource;
        let entities = &session.entities;
        let context = match self.context(req) {
            Ok(c) => c,
            Err(reason) => return evaluation_failed(reason),
        };
        let mut requests: Vec<(Kind, EntityUid)> =
            actions.iter().map(|a| (*a, resource.clone())).collect();
        // Table and column resources, only when some policy names them.
        let extended;
        let entities = if (self.table_policies || self.column_policies) && req.analysis.is_some() {
            let (extra, more) = match self.resource_requests(req, &actions, resource) {
                Ok(r) => r,
                Err(reason) => return evaluation_failed(reason),
            };
            requests.extend(more);
            extended = match entities.clone().add_entities(extra, Some(&self.schema)) {
                Ok(e) => e,
                Err(e) => return evaluation_failed(e.to_string()),
            };
            &extended
        } else {
            entities
        };
        let mut approval: Option<Decision> = None;
        for (action, resource) in requests {
            let action_uid = uid("Action", action.as_str());
            // Requests are built here from typed facts, and the policies were
            // validated against the schema at load: no per-request validation.
            let request = match CedarRequest::new(
                principal.clone(),
                action_uid,
                resource,
                context.clone(),
                None,
            ) {
                Ok(r) => r,
                Err(e) => return evaluation_failed(e.to_string()),
            };
            let response = self
                .authorizer
                .is_authorized(&request, &self.policies, entities);
            if let Some(e) = response.diagnostics().errors().next() {
                return evaluation_failed(e.to_string());
            }
            if response.decision() == CedarDecision::Allow {
                continue;
            }
            // Denied: by hard forbids, or only by forbids that ask for approval.
            let mut hard = None;
            let mut soft = None;
            // Cedar reports the deciding policies unordered; take them in file
            // order so the rule named is always the same.
            let mut reasons: Vec<&PolicyId> = response.diagnostics().reason().collect();
            reasons.sort_by_key(|id| {
                self.order
                    .get(id.to_string().as_str())
                    .copied()
                    .unwrap_or(usize::MAX)
            });
            for id in reasons {
                let Some(p) = self.policies.policy(id) else {
                    continue;
                };
                let reason = p
                    .annotation("reason")
                    .unwrap_or("a policy forbids it")
                    .to_owned();
                match p.annotation("approval") {
                    Some(group) => {
                        soft = soft.or(Some((
                            id.to_string(),
                            reason,
                            group.to_owned(),
                            p.annotation("approval_mode").map(str::to_owned),
                            p.annotation("approvals").and_then(|n| n.parse().ok()),
                        )))
                    }
                    None => {
                        hard = hard.or(Some((
                            id.to_string(),
                            reason,
                            p.annotation("hint").map(str::to_owned),
                        )))
                    }
                }
            }
            match (hard, soft) {
                (Some((rule, reason, hint)), _) => return Decision::Deny { rule, reason, hint },
                (None, Some((rule, reason, approvers, mode, required))) => {
                    approval = approval.or(Some(Decision::Approval {
                        rule,
                        reason,
                        approvers,
                        mode,
                        required,
                    }))
                }
                (None, None) => {
                    return Decision::Deny {
                        rule: "default-deny".into(),
                        reason: format!("no policy permits {action} here"),
                        hint: Some("ask your administrator for access".into()),
                    }
                }
            }
        }
        approval.unwrap_or_else(|| Decision::Allow {
            flags: flags(req.analysis),
        })
    }

    /// Table and column entities for a statement, and the requests on them:
    /// `select` on every table and column it reads, its write actions on
    /// every table and column it writes. Unqualified names are tried in
    /// every schema of the search path.
    #[allow(clippy::type_complexity)]
    fn resource_requests(
        &self,
        req: &Request<'_>,
        actions: &BTreeSet<Kind>,
        target: &EntityUid,
    ) -> Result<(Vec<Entity>, Vec<(Kind, EntityUid)>), String> {
        let Some(a) = req.analysis else {
            return Ok((Vec::new(), Vec::new()));
        };
        let writes: Vec<Kind> = actions
            .iter()
            .copied()
            .filter(|k| !matches!(k, Kind::Select | Kind::Other | Kind::CopyOut))
            .collect();
        let reads = if actions.contains(&Kind::CopyOut) {
            vec![Kind::Select, Kind::CopyOut]
        } else {
            vec![Kind::Select]
        };
        let mut entities: HashMap<EntityUid, Entity> = HashMap::new();
        let mut requests = Vec::new();
        let env = req.target.environment;
        let table =
            |name: &str, entities: &mut HashMap<EntityUid, Entity>| -> Result<EntityUid, String> {
                let id = uid("Table", name);
                if !entities.contains_key(&id) {
                    let (schema, table) = name.rsplit_once('.').unwrap_or(("", name));
                    entities.insert(id.clone(), table_entity(schema, table, env, target)?);
                }
                Ok(id)
            };
        if self.table_policies {
            for t in qualified(&a.tables_read(), req.search_path) {
                let id = table(&t, &mut entities)?;
                requests.extend(reads.iter().map(|k| (*k, id.clone())));
            }
            for t in qualified(&a.tables_written(), req.search_path) {
                let id = table(&t, &mut entities)?;
                requests.extend(writes.iter().map(|k| (*k, id.clone())));
            }
        }
        if self.column_policies {
            let column = |name: &str,
                          entities: &mut HashMap<EntityUid, Entity>|
             -> Result<EntityUid, String> {
                let (tbl, col) = name.rsplit_once('.').unwrap_or(("", name));
                let parent = table(tbl, entities)?;
                let id = uid("Column", name);
                if !entities.contains_key(&id) {
                    entities.insert(id.clone(), column_entity(name, col, env, parent)?);
                }
                Ok(id)
            };
            for c in qualified_columns(&a.columns_read(), req.search_path) {
                let id = column(&c, &mut entities)?;
                requests.extend(reads.iter().map(|k| (*k, id.clone())));
            }
            for c in qualified_columns(&a.columns_written(), req.search_path) {
                let id = column(&c, &mut entities)?;
                requests.extend(writes.iter().map(|k| (*k, id.clone())));
            }
        }
        Ok((entities.into_values().collect(), requests))
    }

    fn entities(
        &self,
        who: &Principal,
        target: &TargetRef<'_>,
        principal: &EntityUid,
        resource: &EntityUid,
    ) -> Result<Entities, String> {
        let list = entity_list(who, target, principal, resource)?;
        Entities::from_entities(list, Some(&self.schema)).map_err(|e| e.to_string())
    }

    fn context(&self, req: &Request<'_>) -> Result<Context, String> {
        let set = |items: BTreeSet<String>| {
            RestrictedExpression::new_set(items.into_iter().map(RestrictedExpression::new_string))
        };
        let (risks, read, written, functions, count) = match req.analysis {
            Some(a) => (
                a.risks().iter().map(|r| r.as_str().to_owned()).collect(),
                a.tables_read(),
                a.tables_written(),
                a.functions(),
                a.statements.len() as i64,
            ),
            None => (
                BTreeSet::new(),
                BTreeSet::new(),
                BTreeSet::new(),
                BTreeSet::new(),
                0,
            ),
        };
        let (columns_read, columns_written) = match req.analysis {
            Some(a) => (a.columns_read(), a.columns_written()),
            None => (BTreeSet::new(), BTreeSet::new()),
        };
        let relations_read = qualified(&read, req.search_path);
        let relations_written = qualified(&written, req.search_path);
        Context::from_pairs([
            (
                "environment".to_owned(),
                RestrictedExpression::new_string(req.target.environment.to_owned()),
            ),
            ("risks".to_owned(), set(risks)),
            ("tables_read".to_owned(), set(read)),
            ("tables_written".to_owned(), set(written)),
            ("relations_read".to_owned(), set(relations_read)),
            ("relations_written".to_owned(), set(relations_written)),
            ("columns_read".to_owned(), set(columns_read)),
            ("columns_written".to_owned(), set(columns_written)),
            (
                "client_address".to_owned(),
                RestrictedExpression::new_string(req.client_address.to_owned()),
            ),
            ("functions".to_owned(), set(functions)),
            (
                "unparseable".to_owned(),
                RestrictedExpression::new_bool(req.analysis.is_none()),
            ),
            (
                "statement_count".to_owned(),
                RestrictedExpression::new_long(count),
            ),
            (
                "application_name".to_owned(),
                RestrictedExpression::new_string(req.application_name.to_owned()),
            ),
            (
                "hour_utc".to_owned(),
                RestrictedExpression::new_long(req.hour_utc.into()),
            ),
        ])
        .map_err(|e| e.to_string())
    }
}

/// Table names with their schema: a qualified name as it is, an
/// unqualified one once for every schema of the search path it could
/// resolve to (`pg_catalog` only for `pg_*` names: every relation there is
/// named so).
pub fn qualified(tables: &BTreeSet<String>, search_path: &[String]) -> BTreeSet<String> {
    let defaults;
    let path = if search_path.is_empty() {
        defaults = default_schemas();
        &defaults
    } else {
        search_path
    };
    let mut out = BTreeSet::new();
    for t in tables {
        if t.contains('.') || t.starts_with("database ") {
            out.insert(t.clone());
            continue;
        }
        for s in path {
            if s == "pg_catalog" && !t.starts_with("pg_") {
                continue;
            }
            out.insert(format!("{s}.{t}"));
        }
    }
    out
}

/// Columns (`table.column` or `schema.table.column`) with their schema.
fn qualified_columns(columns: &BTreeSet<String>, search_path: &[String]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for c in columns {
        match c.matches('.').count() {
            0 => {}
            1 => {
                let (t, col) = c.split_once('.').unwrap_or(("", c));
                for q in qualified(&BTreeSet::from([t.to_owned()]), search_path) {
                    out.insert(format!("{q}.{col}"));
                }
            }
            _ => {
                out.insert(c.clone());
            }
        }
    }
    out
}

/// The @id of every built-in guardrail, in file order.
pub fn builtin_ids() -> Vec<String> {
    GUARDRAILS
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("@id(\"")?
                .strip_suffix("\")")
                .map(str::to_owned)
        })
        .collect()
}

/// The context attributes the policies read, found in their JSON form
/// (`context.x` and `context has x`); `None` if some policy uses `context`
/// otherwise (as a whole), which the memo key cannot follow.
fn context_attributes_read(policies: &PolicySet) -> Option<BTreeSet<String>> {
    fn walk(v: &serde_json::Value, found: &mut BTreeSet<String>) -> bool {
        let is_context =
            |e: &serde_json::Value| e.get("Var").and_then(|v| v.as_str()) == Some("context");
        match v {
            serde_json::Value::Object(map) => {
                for (op, arg) in map {
                    if matches!(op.as_str(), "." | "has") {
                        if let (Some(left), Some(attr)) = (arg.get("left"), arg.get("attr")) {
                            if is_context(left) {
                                if let Some(attr) = attr.as_str() {
                                    found.insert(attr.to_owned());
                                    continue;
                                }
                            }
                        }
                    }
                    if op == "Var" && arg.as_str() == Some("context") {
                        return false;
                    }
                    if !walk(arg, found) {
                        return false;
                    }
                }
                true
            }
            serde_json::Value::Array(items) => items.iter().all(|i| walk(i, found)),
            _ => true,
        }
    }
    let mut found = BTreeSet::new();
    for p in policies.policies() {
        let json = p.to_json().ok()?;
        if !walk(&json, &mut found) {
            return None;
        }
    }
    Some(found)
}

/// What a reviewer should notice in an allowed statement: its risks and
/// its risky kinds (what production would refuse or hold).
fn flags(analysis: Option<&Analysis>) -> Vec<String> {
    let Some(a) = analysis else {
        return vec!["unparseable".into()];
    };
    let risky_kinds = [
        Kind::Drop,
        Kind::Truncate,
        Kind::Ddl,
        Kind::Grant,
        Kind::Admin,
    ];
    a.actions()
        .into_iter()
        .filter(|k| risky_kinds.contains(k))
        .map(|k| k.as_str().to_owned())
        .chain(a.risks().iter().map(|r| r.as_str().to_owned()))
        .collect()
}

fn evaluation_failed(reason: String) -> Decision {
    Decision::Deny {
        rule: "policy-error".into(),
        reason: format!("the policy could not be evaluated ({reason}); refusing to be safe"),
        hint: Some("ask your administrator to check Sluice's policies".into()),
    }
}

/// The principal (with its groups) and the target as Cedar entities.
fn entity_list(
    who: &Principal,
    target: &TargetRef<'_>,
    principal: &EntityUid,
    resource: &EntityUid,
) -> Result<Vec<Entity>, String> {
    let groups: HashSet<EntityUid> = who.groups.iter().map(|g| uid("Group", g)).collect();
    let mut list = vec![
        // Attributes (from config or token claims) are tags:
        // `principal.hasTag("region") && principal.getTag("region") == "eu"`.
        Entity::new_with_tags(
            principal.clone(),
            HashMap::from([(
                "name".to_owned(),
                RestrictedExpression::new_string(who.name.clone()),
            )]),
            groups.clone(),
            who.attributes
                .iter()
                .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone()))),
        )
        .map_err(|e| e.to_string())?,
        Entity::new(
            resource.clone(),
            HashMap::from([
                (
                    "name".to_owned(),
                    RestrictedExpression::new_string(target.name.to_owned()),
                ),
                (
                    "environment".to_owned(),
                    RestrictedExpression::new_string(target.environment.to_owned()),
                ),
            ]),
            HashSet::new(),
        )
        .map_err(|e| e.to_string())?,
    ];
    list.extend(
        groups
            .into_iter()
            .map(|g| Entity::new_no_attrs(g, HashSet::new())),
    );
    Ok(list)
}

/// The Cedar entity of table `schema.table` of `target`.
fn table_entity(
    schema: &str,
    table: &str,
    environment: &str,
    target: &EntityUid,
) -> Result<Entity, String> {
    let name = if schema.is_empty() {
        table.to_owned()
    } else {
        format!("{schema}.{table}")
    };
    Entity::new(
        uid("Table", &name),
        string_attributes([
            ("name", &name),
            ("schema", schema),
            ("table", table),
            ("environment", environment),
        ]),
        HashSet::from([target.clone()]),
    )
    .map_err(|e| e.to_string())
}

/// The Cedar entity of column `name` (`schema.table.column`), named
/// `column` in its table `parent`.
fn column_entity(
    name: &str,
    column: &str,
    environment: &str,
    parent: EntityUid,
) -> Result<Entity, String> {
    Entity::new(
        uid("Column", name),
        string_attributes([
            ("name", name),
            ("column", column),
            ("environment", environment),
        ]),
        HashSet::from([parent]),
    )
    .map_err(|e| e.to_string())
}

/// Entity attributes that are all strings.
fn string_attributes<const N: usize>(
    pairs: [(&str, &str); N],
) -> HashMap<String, RestrictedExpression> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_owned(), RestrictedExpression::new_string(v.to_owned())))
        .collect()
}

fn uid(kind: &str, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(
        cedar_policy::EntityTypeName::from_str(&format!("Sluice::{kind}"))
            .expect("static entity type names parse"),
        cedar_policy::EntityId::new(id),
    )
}

fn principal_uid(p: &Principal) -> EntityUid {
    let kind = match p.kind {
        PrincipalKind::Human => "User",
        PrincipalKind::Service => "Service",
        PrincipalKind::Agent => "Agent",
    };
    uid(kind, &p.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(policies: &str) -> Option<BTreeSet<String>> {
        context_attributes_read(&PolicySet::from_str(policies).unwrap())
    }

    #[test]
    fn the_context_attributes_policies_read() {
        let guardrails = read(GUARDRAILS).unwrap();
        assert_eq!(
            guardrails,
            BTreeSet::from(["risks".to_owned(), "unparseable".to_owned()])
        );
        let custom = read(
            r#"forbid (principal, action, resource)
               when { context has application_name && context.hour_utc < 6 };"#,
        )
        .unwrap();
        assert_eq!(
            custom,
            BTreeSet::from(["application_name".to_owned(), "hour_utc".to_owned()])
        );
        // The whole context, compared or passed along: not followed, so
        // nothing is remembered.
        assert_eq!(
            read(r#"forbid (principal, action, resource) when { context == {} };"#),
            None
        );
    }
}
