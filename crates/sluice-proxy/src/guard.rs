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
use sluice_wire::frame::{self, Reader};
use sluice_wire::messages::{ErrorResponse, Severity};
use sluice_wire::tags::frontend;

use crate::Metrics;

/// SQLSTATE for a statement that needs approval (Sluice's own class).
pub const APPROVAL_REQUIRED: &str = "SL001";

/// Cached verdicts per session, by statement text.
const CACHE_LIMIT: usize = 2048;

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

#[derive(Clone)]
enum Verdict {
    Allow,
    Refuse {
        error: Bytes,
        held: bool,
        rule: String,
    },
}

/// Per-session guard state; lives in the client-to-upstream loop.
pub struct Guard<'a> {
    engine: &'a PolicyEngine,
    /// The principal and target as policy entities, built once per session.
    entities: Result<sluice_policy::SessionEntities, String>,
    principal: &'a Principal,
    target_name: &'a str,
    environment: &'a str,
    application_name: &'a str,
    metrics: &'a Metrics,
    cache: HashMap<Bytes, Verdict>,
    /// Verdicts that hold for every statement with the same template.
    templates: HashMap<String, Verdict>,
    /// `sluice_denied_<random>_`: the marker prefix of this session.
    pub marker_prefix: String,
    next_id: u64,
    /// Shared with the upstream loop.
    pub refusals: Refusals,
}

/// What to do with one client message.
pub enum Action {
    /// Forward it unchanged.
    Forward,
    /// Send this message upstream instead.
    Replace(Bytes),
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
            engine,
            entities,
            principal,
            target_name: &target.name,
            environment: &target.environment,
            application_name,
            metrics,
            cache: HashMap::new(),
            templates: HashMap::new(),
            marker_prefix: format!("sluice_denied_{salt:016x}_"),
            next_id: 0,
            refusals: Refusals::default(),
        }
    }

    /// Judge one complete client message (`msg` includes its header).
    pub fn inspect(&mut self, tag: u8, msg: &[u8]) -> Action {
        let body = &msg[5..];
        let (sql, statement_name) = match tag {
            frontend::QUERY => match Reader::new(body, "Query").cstr() {
                Ok(q) => (Some(q.as_bytes()), None),
                Err(_) => (None, None),
            },
            frontend::PARSE => {
                let mut r = Reader::new(body, "Parse");
                match (r.cstr(), r.cstr()) {
                    (Ok(name), Ok(q)) => (Some(q.as_bytes()), Some(name)),
                    _ => (None, None),
                }
            }
            // Fast-path calls name a function by OID: nothing to analyse, so
            // they are judged as unparseable (refused in production).
            frontend::FUNCTION_CALL => (None, None),
            _ => return Action::Forward,
        };
        let verdict = match sql {
            Some(text) => self.cached_or_judge(text),
            None => self.judge(None).0,
        };
        match verdict {
            Verdict::Allow => Action::Forward,
            Verdict::Refuse { error, held, rule } => {
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
                let id = self.next_id;
                self.next_id += 1;
                self.refusals.put(id, error);
                let marker = format!("{}{id}", self.marker_prefix);
                Action::Replace(match (tag, statement_name) {
                    (frontend::PARSE, Some(name)) => parse_message(name, &marker),
                    _ => query_message(&marker),
                })
            }
        }
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
        let (verdict, reusable) = self.judge(Some(text));
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

    /// Analyse and decide; also says whether the verdict holds for the whole template.
    fn judge(&self, text: Option<&[u8]>) -> (Verdict, bool) {
        Metrics::inc(&self.metrics.statements_checked_total);
        let analysis = text
            .and_then(|t| std::str::from_utf8(t).ok())
            .and_then(|t| sluice_sql::analyze(t, sluice_sql::Dialect::default()).ok());
        let hour_utc = ((std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            / 3600)
            % 24) as u8;
        let reusable = analysis.as_ref().is_some_and(|a| a.reusable_for_template());
        let request = Request {
            principal: self.principal,
            target: TargetRef {
                name: self.target_name,
                environment: self.environment,
            },
            analysis: analysis.as_ref(),
            application_name: self.application_name,
            hour_utc,
        };
        let decision = match &self.entities {
            Ok(entities) => self.engine.decide_in(entities, &request),
            // Fail closed: the session's entities could not be built.
            Err(_) => self.engine.decide(&request),
        };
        let verdict = match decision {
            Decision::Allow { .. } => Verdict::Allow,
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
                }
            }
            Decision::Approval {
                rule,
                reason,
                approvers,
            } => {
                let e = ErrorResponse::new(
                    Severity::Error,
                    APPROVAL_REQUIRED,
                    format!("sluice: approval required by {rule}: {reason}"),
                )
                .hint(format!(
                    "a member of the \"{approvers}\" group must approve this statement; approval requests are not available in this version of Sluice yet, so ask them to run it"
                ));
                Verdict::Refuse {
                    error: e.encode(),
                    held: true,
                    rule,
                }
            }
        };
        (verdict, reusable)
    }
}

fn query_message(sql: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(sql.len() + 6);
    let at = frame::begin(&mut out, frontend::QUERY);
    frame::put_cstr(&mut out, sql);
    frame::finish(&mut out, at);
    out.freeze()
}

fn parse_message(name: &str, sql: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(sql.len() + name.len() + 8);
    let at = frame::begin(&mut out, frontend::PARSE);
    frame::put_cstr(&mut out, name);
    frame::put_cstr(&mut out, sql);
    out.extend_from_slice(&0i16.to_be_bytes());
    frame::finish(&mut out, at);
    out.freeze()
}
