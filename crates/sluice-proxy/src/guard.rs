//! The statement guard: every statement a client sends is analysed with the
//! real PostgreSQL parser and judged by policy before the upstream sees it.
//!
//! A refused statement is not answered by Sluice directly. It is replaced by
//! a marker the server is certain to reject (a one-word syntax error naming
//! the refusal), and the server's error for it is swapped for Sluice's on the
//! way back. So the server itself does what PostgreSQL does after any error:
//! it aborts the transaction or the implicit transaction of the pipeline,
//! skips to the next Sync and reports the right transaction status, and every
//! response before it arrives in order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use rand::Rng;
use sluice_identity::Principal;
use sluice_policy::{Decision, PolicyEngine, Request, TargetRef};
use sluice_sql::RowsEffect;
use sluice_wire::frame;
use sluice_wire::messages::{ErrorResponse, Severity};
use sluice_wire::tags::frontend;

use crate::audit::StatementInfo;
use crate::Metrics;

/// A session's map keyed by statement text. foldhash, seeded per map,
/// instead of SipHash, which took about 3 % of a policy miss; a client that
/// forced collisions would only slow its own session's bounded cache.
type TextMap<K, V> = HashMap<K, V, foldhash::quality::RandomState>;

/// SQLSTATE for a statement that needs approval (Sluice's own class).
pub const APPROVAL_REQUIRED: &str = "SL001";

/// Cached verdicts per session, by statement text.
const CACHE_LIMIT: usize = 2048;
/// Texts (and templates) the process-wide analysis cache holds at most …
const SHARED_ENTRIES: usize = 8192;
/// … and bytes of text; it starts over beyond either.
const SHARED_BYTES: usize = 8 << 20;
/// Longer texts are analysed in each session, not shared.
const SHARED_TEXT_MAX: usize = 16 << 10;

/// What analysis found in a text: the same for every session, whoever
/// sends it (the analysis depends on the text alone).
struct Described {
    analysis: Option<sluice_sql::Analysis>,
    info: Arc<StatementInfo>,
    /// Whether a verdict judged from it holds for the text's whole template.
    reusable: bool,
}

/// Analyses shared by every session of the process, so that only the first
/// session to send a statement pays for parsing it: a new connection of a
/// pool, or of a client that connects per request, finds its statements
/// here by text, or by template when the verdict cannot depend on the
/// literals (the rule of the session's own template cache). Each session
/// still judges what it finds by its own principal and policy. Bounded by
/// [`SHARED_ENTRIES`] and [`SHARED_BYTES`].
#[derive(Default)]
pub struct SharedAnalyses {
    inner: Mutex<SharedInner>,
}

#[derive(Default)]
struct SharedInner {
    // SipHash here: one process-wide map that every client's texts reach.
    by_text: HashMap<Bytes, Arc<Described>>,
    by_template: HashMap<String, Arc<Described>>,
    bytes: usize,
}

impl SharedAnalyses {
    fn get(&self, text: &[u8], template: Option<&str>) -> Option<Arc<Described>> {
        let inner = self.inner.lock().ok()?;
        if let Some(d) = inner.by_text.get(text) {
            return Some(d.clone());
        }
        template.and_then(|t| inner.by_template.get(t).cloned())
    }

    fn put(&self, text: &[u8], template: Option<&str>, described: &Arc<Described>) {
        if text.len() > SHARED_TEXT_MAX {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let template = template.filter(|_| described.reusable);
        let adds = text.len() + template.map_or(0, str::len);
        if inner.by_text.len() + inner.by_template.len() >= SHARED_ENTRIES
            || inner.bytes + adds > SHARED_BYTES
        {
            *inner = SharedInner::default();
        }
        inner.bytes += adds;
        inner
            .by_text
            .insert(Bytes::copy_from_slice(text), described.clone());
        if let Some(t) = template {
            inner.by_template.insert(t.to_owned(), described.clone());
        }
    }
}

/// Refusals waiting for the server's marker error, shared by the two loops.
#[derive(Clone, Default)]
pub struct Refusals {
    pending: Arc<Mutex<HashMap<u64, Bytes>>>,
}

impl Refusals {
    fn put(&self, id: u64, error: Bytes) {
        if let Ok(mut p) = self.pending.lock() {
            p.insert(id, error);
        }
    }

    /// The error to send instead of the server's marker error, if this is one.
    pub fn take(&self, marker_prefix: &str, server_message: &str) -> Option<Bytes> {
        let at = server_message.find(marker_prefix)?;
        let digits: String = server_message[at + marker_prefix.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let id: u64 = digits.parse().ok()?;
        self.pending.lock().ok()?.remove(&id)
    }
}

/// What the guard decided for one query string.
#[derive(Clone)]
pub enum Verdict {
    /// It may run.
    Allow(Arc<Allowed>),
    /// It may not.
    Refuse {
        /// Sluice's error for the client.
        error: Bytes,
        /// Refused only until approved.
        held: bool,
        /// The rule that refused it.
        rule: String,
        /// What the statement is, for the audit trail.
        info: Arc<StatementInfo>,
        /// For a statement that needs approval: what approval it needs.
        approval: Option<Arc<ApprovalNeed>>,
    },
}

/// The approval a statement needs before it may run.
#[derive(Debug)]
pub struct ApprovalNeed {
    /// The policy (@id) that asks for it.
    pub rule: String,
    /// Why.
    pub reason: String,
    /// The group whose members may approve.
    pub group: String,
    /// `@approval_mode` of the policy, if any (`hold` or `refuse`).
    pub mode: Option<String>,
    /// `@approvals("N")` of the policy, if any.
    pub required: Option<u32>,
    /// How the statement runs once approved.
    pub allowed: Arc<Allowed>,
}

/// What one statement does to the session's prepared statements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreparedChange {
    /// `PREPARE name AS …`, with the rows effect of what it prepares.
    Define(String, RowsEffect),
    /// `DEALLOCATE name`.
    Remove(String),
    /// `DEALLOCATE ALL` / `DISCARD ALL`.
    RemoveAll,
}

/// What the session must know about an allowed string.
#[derive(Debug, Default)]
pub struct Allowed {
    /// What the statement is, for the audit trail.
    pub info: Arc<StatementInfo>,
    /// Whether its UPDATEs and DELETEs can be counted.
    pub rows: RowsEffect,
    /// It has more than one statement and controls transactions.
    pub controls_transactions: bool,
    /// What its statements do to prepared statements: (statement index, change).
    pub prepared: Vec<(usize, PreparedChange)>,
    /// `EXECUTE name`: the prepared statements run.
    pub executes: Vec<String>,
    /// It creates, alters or drops schema objects (cached column names may change).
    pub changes_schema: bool,
    /// Its `COPY … TO STDOUT` statements.
    pub copy_out: Vec<sluice_sql::CopyOut>,
}

impl Allowed {
    fn of(analysis: Option<&sluice_sql::Analysis>, info: Arc<StatementInfo>) -> Self {
        let Some(a) = analysis else {
            return Allowed {
                info,
                ..Allowed::default()
            };
        };
        Allowed {
            info,
            rows: a.rows_effect(),
            controls_transactions: a.statements.len() > 1 && a.controls_transactions(),
            prepared: a
                .statements
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    let change = if let Some(name) = &s.prepares {
                        PreparedChange::Define(name.clone(), s.prepared_rows_effect())
                    } else if let Some(name) = &s.deallocates {
                        PreparedChange::Remove(name.clone())
                    } else if s.deallocates_all {
                        PreparedChange::RemoveAll
                    } else {
                        return None;
                    };
                    Some((i, change))
                })
                .collect(),
            executes: a
                .statements
                .iter()
                .filter_map(|s| s.executes.clone())
                .collect(),
            copy_out: a
                .statements
                .iter()
                .filter_map(|s| s.copy_out.clone())
                .collect(),
            changes_schema: a
                .actions()
                .iter()
                .any(|k| matches!(k, sluice_sql::Kind::Ddl | sluice_sql::Kind::Drop)),
        }
    }
}

/// Per-session guard state; lives in the client-to-upstream loop.
pub struct Guard<'a> {
    /// `[policy] enabled`: when false everything is allowed unexamined.
    pub enabled: bool,
    /// `limits.max_statement_size`: longer texts are not parsed.
    pub max_statement_size: usize,
    /// The verdict for everything when the guard is off.
    unjudged: Arc<Allowed>,
    engine: &'a PolicyEngine,
    /// The principal and target as policy entities, built once per session.
    entities: Result<sluice_policy::SessionEntities, String>,
    principal: &'a Principal,
    target_name: &'a str,
    environment: &'a str,
    application_name: &'a str,
    metrics: &'a Metrics,
    cache: TextMap<Bytes, Verdict>,
    /// Verdicts that hold for every statement with the same template.
    templates: TextMap<String, Verdict>,
    /// The process's analyses, shared with other sessions (`None`: this
    /// session analyses everything itself).
    pub shared: Option<Arc<SharedAnalyses>>,
    /// The client's IP address, for policy.
    pub client_address: String,
    /// Sluice's login on the upstream (what `$user` means in a search_path).
    pub upstream_user: String,
    /// Every schema an unqualified table name may resolve to in this
    /// session: `pg_catalog`, then each schema the session's search_path
    /// named (not `$user`), never shrinking.
    search_path: Vec<String>,
    /// `sluice_denied_<random>_`: the marker prefix of this session.
    pub marker_prefix: String,
    next_id: u64,
    /// Shared with the upstream loop.
    pub refusals: Refusals,
}

impl<'a> Guard<'a> {
    /// A guard for one session.
    pub fn new(
        engine: &'a PolicyEngine,
        principal: &'a Principal,
        target: &'a sluice_config::Target,
        application_name: &'a str,
        metrics: &'a Metrics,
    ) -> Self {
        let salt: u64 = rand::thread_rng().gen();
        let entities = engine.session(
            principal,
            &TargetRef {
                name: &target.name,
                environment: &target.environment,
            },
        );
        Guard {
            enabled: true,
            max_statement_size: usize::MAX,
            unjudged: Arc::new(Allowed::default()),
            engine,
            entities,
            principal,
            target_name: &target.name,
            environment: &target.environment,
            application_name,
            metrics,
            cache: TextMap::default(),
            templates: TextMap::default(),
            shared: None,
            marker_prefix: format!("sluice_denied_{salt:016x}_"),
            client_address: String::new(),
            upstream_user: String::new(),
            search_path: Vec::new(),
            next_id: 0,
            refusals: Refusals::default(),
        }
    }

    /// The verdict for a fast-path FunctionCall: it names a function by
    /// OID, so there is nothing to analyse; it is judged as unparseable
    /// (refused in production).
    pub fn judge_function_call(&mut self) -> Verdict {
        if !self.enabled {
            return Verdict::Allow(self.unjudged.clone());
        }
        self.judge(None, None).0
    }

    /// The verdict for a query string (of a Query or a Parse).
    pub fn judge_text(&mut self, text: &[u8]) -> Verdict {
        let started = std::time::Instant::now();
        let verdict = self.judge_text_untimed(text);
        self.metrics.policy_seconds.observe(started.elapsed());
        verdict
    }

    fn judge_text_untimed(&mut self, text: &[u8]) -> Verdict {
        if !self.enabled {
            // Still read a COPY, whose data masking must plan for.
            let copy = text
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .and_then(|at| text.get(at..at + 4))
                .is_some_and(|w| w.eq_ignore_ascii_case(b"copy"));
            if copy {
                if let Some(a) = std::str::from_utf8(text).ok().and_then(|t| self.analyze(t)) {
                    return Verdict::Allow(Arc::new(Allowed::of(
                        Some(&a),
                        self.unjudged.info.clone(),
                    )));
                }
            }
            return Verdict::Allow(self.unjudged.clone());
        }
        self.cached_or_judge(text)
    }

    /// Count and log a refusal and give the marker that stands for it: a
    /// statement the server will reject, whose error the upstream loop swaps
    /// for `error`.
    pub fn refuse(&mut self, error: Bytes, held: bool, rule: &str) -> String {
        self.note_refusal(rule, held);
        let id = self.next_id;
        self.next_id += 1;
        self.refusals.put(id, error);
        format!("{}{id}", self.marker_prefix)
    }

    /// Add the schemas of a search_path the session set (or starts with);
    /// verdicts judged under fewer schemas no longer hold.
    pub fn widen_search_path(&mut self, path: &[String], upstream_user: &str) {
        if self.search_path.is_empty() {
            self.search_path.push("pg_catalog".to_owned());
        }
        let mut changed = false;
        for schema in path {
            // `$user` is Sluice's own login, whose schema normally does not
            // exist: counting it would make every allow list fail.
            if schema == "$user" {
                let _ = upstream_user;
                continue;
            }
            let schema = schema.as_str();
            if !self.search_path.iter().any(|s| s == schema) {
                self.search_path.push(schema.to_owned());
                changed = true;
            }
        }
        if changed {
            self.cache.clear();
            self.templates.clear();
        }
    }

    /// Who this session is.
    pub fn principal(&self) -> &Principal {
        self.principal
    }

    /// Count and log a refusal.
    pub fn note_refusal(&self, rule: &str, held: bool) {
        let counter = if held {
            &self.metrics.statements_held_total
        } else {
            &self.metrics.statements_denied_total
        };
        Metrics::inc(counter);
        tracing::info!(
            user = %self.principal.name, target = self.target_name, rule = %rule,
            outcome = if held { "approval required" } else { "denied" },
            "statement refused"
        );
    }

    /// Sluice's own refusal (not a policy's): `ERROR 42501 sluice: blocked by RULE: REASON`.
    pub fn refuse_with(&mut self, rule: &str, reason: &str, hint: &str) -> String {
        let e = ErrorResponse::new(
            Severity::Error,
            "42501",
            format!("sluice: blocked by {rule}: {reason}"),
        )
        .hint(hint);
        self.refuse(e.encode(), false, rule)
    }

    /// The verdict for `text`: by exact text, then by template (statements
    /// that differ only in constants), then by analysis.
    fn cached_or_judge(&mut self, text: &[u8]) -> Verdict {
        if let Some(v) = self.cache.get(text) {
            return v.clone();
        }
        let template = std::str::from_utf8(text)
            .ok()
            .and_then(sluice_sql::template);
        if let Some(v) = template.as_ref().and_then(|t| self.templates.get(t)) {
            return v.clone();
        }
        let (verdict, reusable) = self.judge(Some(text), template.as_deref());
        if self.cache.len() >= CACHE_LIMIT {
            self.cache.clear();
        }
        self.cache
            .insert(Bytes::copy_from_slice(text), verdict.clone());
        if let (Some(t), true) = (template, reusable) {
            if self.templates.len() >= CACHE_LIMIT {
                self.templates.clear();
            }
            self.templates.insert(t, verdict.clone());
        }
        verdict
    }

    /// The analysis of a text, `None` when it cannot be parsed or is too
    /// long to parse safely.
    fn analyze(&self, text: &str) -> Option<sluice_sql::Analysis> {
        if text.len() > self.max_statement_size {
            return None;
        }
        sluice_sql::analyze(text, sluice_sql::Dialect::default()).ok()
    }

    /// What `text` is: from the process's shared analyses, or analysed now
    /// (and shared).
    fn describe(&self, text: Option<&str>, template: Option<&str>) -> Arc<Described> {
        if let (Some(t), Some(shared)) = (text, &self.shared) {
            if let Some(d) = shared.get(t.as_bytes(), template) {
                return d;
            }
        }
        if text.is_some() {
            Metrics::inc(&self.metrics.statements_analysed_total);
        }
        let analysis = text.and_then(|t| self.analyze(t));
        let described = Arc::new(Described {
            info: Arc::new(StatementInfo::of(analysis.as_ref())),
            reusable: analysis.as_ref().is_some_and(|a| a.reusable_for_template()),
            analysis,
        });
        if let (Some(t), Some(shared)) = (text, &self.shared) {
            shared.put(t.as_bytes(), template, &described);
        }
        described
    }

    /// Analyse and decide; also says whether the verdict holds for the whole template.
    fn judge(&mut self, text: Option<&[u8]>, template: Option<&str>) -> (Verdict, bool) {
        Metrics::inc(&self.metrics.statements_checked_total);
        let text = text.and_then(|t| std::str::from_utf8(t).ok());
        if let Some(t) = text.filter(|t| t.len() > self.max_statement_size) {
            // Not parsed, so not checked: refused in every environment, or
            // padding a statement would switch off policy and the rows limit.
            let e = ErrorResponse::new(
                Severity::Error,
                "54000",
                format!(
                    "sluice: blocked by statement-too-long: the statement has {} bytes, more than the {} Sluice checks",
                    t.len(),
                    self.max_statement_size
                ),
            )
            .hint("send bulk data with COPY or as bind parameters, or ask your administrator to raise limits.max_statement_size");
            let verdict = Verdict::Refuse {
                error: e.encode(),
                held: false,
                rule: "statement-too-long".into(),
                info: Arc::new(StatementInfo::of(None)),
                approval: None,
            };
            return (verdict, false);
        }
        let described = self.describe(text, template);
        let analysis = &described.analysis;
        let info = described.info.clone();
        // A search_path set in this very string applies to its own statements.
        if let Some(a) = analysis {
            for path in a.statements.iter().filter_map(|s| s.search_path.as_ref()) {
                let user = self.upstream_user.clone();
                self.widen_search_path(path, &user);
            }
        }
        let hour_utc = ((std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            / 3600)
            % 24) as u8;
        let reusable = described.reusable;
        let request = Request {
            principal: self.principal,
            target: TargetRef {
                name: self.target_name,
                environment: self.environment,
            },
            analysis: analysis.as_ref(),
            application_name: self.application_name,
            hour_utc,
            client_address: &self.client_address,
            search_path: &self.search_path,
        };
        let decision = match &self.entities {
            Ok(entities) => self.engine.decide_in(entities, &request),
            // Fail closed: the session's entities could not be built.
            Err(_) => self.engine.decide(&request),
        };
        let verdict = match decision {
            Decision::Allow { .. } => {
                Verdict::Allow(Arc::new(Allowed::of(analysis.as_ref(), info)))
            }
            Decision::Deny { rule, reason, hint } => {
                let mut e = ErrorResponse::new(
                    Severity::Error,
                    "42501",
                    format!("sluice: blocked by {rule}: {reason}"),
                );
                e = e.hint(hint.unwrap_or_else(|| {
                    format!("this is Sluice's policy for {} targets; ask your administrator if you need an exception", self.environment)
                }));
                Verdict::Refuse {
                    error: e.encode(),
                    held: false,
                    rule,
                    info,
                    approval: None,
                }
            }
            Decision::Approval {
                rule,
                reason,
                approvers,
                mode,
                required,
            } => {
                let e = ErrorResponse::new(
                    Severity::Error,
                    APPROVAL_REQUIRED,
                    format!("sluice: approval required by {rule}: {reason}"),
                )
                .hint(format!(
                    "a member of the \"{approvers}\" group must approve this statement"
                ));
                let need = ApprovalNeed {
                    rule: rule.clone(),
                    reason,
                    group: approvers,
                    mode,
                    required,
                    allowed: Arc::new(Allowed::of(analysis.as_ref(), info.clone())),
                };
                Verdict::Refuse {
                    error: e.encode(),
                    held: true,
                    rule,
                    info,
                    approval: Some(Arc::new(need)),
                }
            }
        };
        (verdict, reusable)
    }
}

/// A Query message.
pub fn query_message(sql: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(sql.len() + 6);
    let at = frame::begin(&mut out, frontend::QUERY);
    frame::put_cstr(&mut out, sql);
    frame::finish(&mut out, at);
    out.freeze()
}

/// A Parse message with no parameter types.
pub fn parse_message(name: &str, sql: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(sql.len() + name.len() + 8);
    let at = frame::begin(&mut out, frontend::PARSE);
    frame::put_cstr(&mut out, name);
    frame::put_cstr(&mut out, sql);
    out.extend_from_slice(&0i16.to_be_bytes());
    frame::finish(&mut out, at);
    out.freeze()
}
