//! The event model. Each variant of [`EventBody`] has a stable code (its
//! `code` field in JSON); see the crate README for the reference.
//!
//! Bodies are serialized with serde in field declaration order and contain
//! no maps, so the same event always gives the same bytes.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Code of a session start.
pub const SESSION_START: &str = "session.start";
/// Code of a session end.
pub const SESSION_END: &str = "session.end";
/// Code of a failed authentication.
pub const AUTH_FAILURE: &str = "auth.failure";
/// Code of a statement.
pub const STATEMENT: &str = "db.statement";
/// Code of an administrative or approval action.
pub const ADMIN: &str = "admin.action";

/// Every code, in reference order.
pub const CODES: &[&str] = &[SESSION_START, SESSION_END, AUTH_FAILURE, STATEMENT, ADMIN];

/// Who did something.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// Principal name (`alice`, `billing-etl`, `support-agent`).
    pub name: String,
    /// `human`, `service` or `agent`.
    pub kind: String,
    /// For an agent or service acting for a person: that person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
}

/// TLS of the client connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsInfo {
    /// `TLSv1.3`, `TLSv1.2`, or `none` for a plaintext connection.
    pub version: String,
    /// Cipher suite (`TLS13_AES_256_GCM_SHA384`), or `none`.
    pub cipher: String,
}

impl TlsInfo {
    /// A plaintext connection.
    pub fn none() -> TlsInfo {
        TlsInfo {
            version: "none".into(),
            cipher: "none".into(),
        }
    }
}

/// `session.start`: a client authenticated and was connected to a target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStart {
    /// Session id (unique per replica; the proxy chooses it).
    pub session: String,
    /// Who connected.
    pub principal: Actor,
    /// Groups of the principal.
    pub groups: Vec<String>,
    /// How they authenticated (`scram-sha-256`, `oidc`, …).
    pub method: String,
    /// Client address `ip:port`.
    pub source: String,
    /// `application_name` the client sent (may be empty).
    pub application_name: String,
    /// TLS of the client connection.
    pub tls: TlsInfo,
    /// Target name (the database name the client asked for).
    pub target: String,
    /// The target's environment.
    pub environment: String,
}

/// `session.end`: a session ended; totals over its life.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEnd {
    /// Session id.
    pub session: String,
    /// Who it was.
    pub principal: Actor,
    /// Target name.
    pub target: String,
    /// The target's environment.
    pub environment: String,
    /// Why it ended (`client closed`, `upstream lost`, `shutdown`, …).
    pub reason: String,
    /// Session length in milliseconds.
    pub duration_ms: u64,
    /// Statements seen.
    pub statements: u64,
    /// Statements refused (denied or waiting for approval).
    pub refused: u64,
    /// Rows returned to the client.
    pub rows: u64,
    /// Bytes sent to the client.
    pub bytes_to_client: u64,
    /// Bytes received from the client.
    pub bytes_from_client: u64,
}

/// `auth.failure`: an authentication that did not succeed. Never carries
/// the password or token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthFailure {
    /// The user name as the client gave it.
    pub user: String,
    /// Method tried (`scram-sha-256`, `oidc`, `mtls`).
    pub method: String,
    /// Client address `ip:port`.
    pub source: String,
    /// Reason category: `bad_credentials`, `unknown_user`,
    /// `channel_binding`, `protocol`, `tls_required`, `token_invalid`,
    /// `token_expired`, `idp_unavailable`, `policy` (signed in, refused by
    /// the `connect` policy), `other`.
    pub reason: String,
    /// What Sluice told the client (never the password or token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The database (target) name the client asked for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The target's environment, when the target is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

/// What policy decided about a statement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Allowed (possibly with masking).
    #[default]
    Allow,
    /// Denied.
    Deny,
    /// Held for approval (refused until approved, or run under an approval).
    Approval,
}

impl Decision {
    /// `allow`, `deny` or `approval`.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::Approval => "approval",
        }
    }

    /// Parse `allow`, `deny` or `approval`.
    pub fn parse(s: &str) -> Option<Decision> {
        match s {
            "allow" => Some(Decision::Allow),
            "deny" => Some(Decision::Deny),
            "approval" => Some(Decision::Approval),
            _ => None,
        }
    }
}

/// A column whose values were masked on the way to the client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MaskedColumn {
    /// `table.column` (schema-qualified when the proxy knows the schema).
    pub column: String,
    /// What caused it (`column-name:email`, `value:luhn`, `policy:pii`).
    pub detector: String,
}

/// Data flow of one statement (filled by the proxy from the analysis).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    /// `insert_select`, `create_table_as`, `update_from`, `copy_out`,
    /// `select_into`, or another label.
    pub kind: String,
    /// Tables the data came from.
    pub sources: Vec<String>,
    /// Table it went to, or `client:<principal>` for COPY out.
    pub destination: String,
}

/// `db.statement`: one statement judged (and, when allowed, run).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    /// Session id.
    pub session: Arc<str>,
    /// Who ran it.
    pub principal: Arc<Actor>,
    /// Target name.
    pub target: Arc<str>,
    /// The target's environment.
    pub environment: Arc<str>,
    /// Statement fingerprint (equal for statements differing only in constants).
    pub fingerprint: Arc<str>,
    /// Normalized text (literals replaced by `$n`).
    pub normalized: Arc<str>,
    /// Full text with literals; kept only when `audit.log_literals` is on
    /// (the sink removes it otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Statement kind (`select`, `insert`, `ddl`, …).
    pub kind: Arc<str>,
    /// Policy decision.
    pub decision: Decision,
    /// Rule that decided (policy id), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Approval this statement ran under or is waiting for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// Tables read.
    pub tables_read: Arc<[String]>,
    /// Tables written.
    pub tables_written: Arc<[String]>,
    /// Columns read, `table.column`.
    pub columns_read: Arc<[String]>,
    /// Columns written, `table.column`.
    pub columns_written: Arc<[String]>,
    /// Columns masked in the result, with the detector that fired.
    pub masked: Vec<MaskedColumn>,
    /// Rows returned to the client.
    pub rows_returned: u64,
    /// Rows inserted, updated, deleted or copied (from CommandComplete).
    pub rows_affected: u64,
    /// Bytes sent to the client for this statement.
    pub bytes_to_client: u64,
    /// Time from the statement reaching Sluice to its completion, in µs.
    pub duration_us: u64,
    /// SQLSTATE of the error, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
    /// Data flow, when the statement copies data somewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<Lineage>,
}

/// `admin.action`: something done to Sluice rather than through it
/// (approvals, policy reloads, retention, dropped-event notices).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminAction {
    /// Who did it (`sluice` for Sluice itself).
    pub actor: Actor,
    /// What (`approval.grant`, `approval.deny`, `config.reload`,
    /// `audit.retention`, `audit.dropped`, …).
    pub action: String,
    /// What it was done to (an approval id, a file, an environment).
    pub object: String,
    /// `ok`, `denied`, `failed`, or a short result.
    pub outcome: String,
    /// Free-form detail (never a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Environment the action concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

/// An event as the proxy records it. The `code` tag in JSON is stable.
// Statement is the big one and the common one; the queue boxes events anyway.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code")]
pub enum EventBody {
    /// `session.start`.
    #[serde(rename = "session.start")]
    SessionStart(SessionStart),
    /// `session.end`.
    #[serde(rename = "session.end")]
    SessionEnd(SessionEnd),
    /// `auth.failure`.
    #[serde(rename = "auth.failure")]
    AuthFailure(AuthFailure),
    /// `db.statement`.
    #[serde(rename = "db.statement")]
    Statement(Statement),
    /// `admin.action`.
    #[serde(rename = "admin.action")]
    Admin(AdminAction),
}

impl EventBody {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            EventBody::SessionStart(_) => SESSION_START,
            EventBody::SessionEnd(_) => SESSION_END,
            EventBody::AuthFailure(_) => AUTH_FAILURE,
            EventBody::Statement(_) => STATEMENT,
            EventBody::Admin(_) => ADMIN,
        }
    }

    /// Environment the event belongs to (`""` when none, e.g. an
    /// authentication failure before a target was chosen). Retention is
    /// applied per environment.
    pub fn environment(&self) -> &str {
        match self {
            EventBody::SessionStart(e) => &e.environment,
            EventBody::SessionEnd(e) => &e.environment,
            EventBody::AuthFailure(e) => e.environment.as_deref().unwrap_or(""),
            EventBody::Statement(e) => &e.environment,
            EventBody::Admin(e) => e.environment.as_deref().unwrap_or(""),
        }
    }

    /// The searchable columns of the event.
    pub fn index(&self) -> IndexFields {
        let r = self.index_ref();
        IndexFields {
            code: self.code().to_owned(),
            environment: self.environment().to_owned(),
            principal: r.principal.to_owned(),
            target: r.target.to_owned(),
            session: r.session.to_owned(),
            decision: r.decision.to_owned(),
            fingerprint: r.fingerprint.to_owned(),
        }
    }

    /// [`index`](Self::index) without copies (the code and environment are
    /// [`code`](Self::code) and [`environment`](Self::environment)).
    pub(crate) fn index_ref(&self) -> IndexRef<'_> {
        match self {
            EventBody::SessionStart(e) => IndexRef {
                principal: &e.principal.name,
                target: &e.target,
                session: &e.session,
                ..IndexRef::default()
            },
            EventBody::SessionEnd(e) => IndexRef {
                principal: &e.principal.name,
                target: &e.target,
                session: &e.session,
                ..IndexRef::default()
            },
            EventBody::AuthFailure(e) => IndexRef {
                principal: &e.user,
                target: e.target.as_deref().unwrap_or(""),
                ..IndexRef::default()
            },
            EventBody::Statement(e) => IndexRef {
                principal: &e.principal.name,
                target: &e.target,
                session: &e.session,
                decision: e.decision.as_str(),
                fingerprint: &e.fingerprint,
            },
            EventBody::Admin(e) => IndexRef {
                principal: &e.actor.name,
                ..IndexRef::default()
            },
        }
    }

    /// Lower-case `(table, column)` pairs the event touched (`column` is
    /// `""` for a table), for the table/column filters.
    pub fn objects(&self) -> Vec<(String, String)> {
        self.objects_ref()
            .into_iter()
            .map(|(t, c)| (t.into_owned(), c.into_owned()))
            .collect()
    }

    /// [`objects`](Self::objects), borrowing what is already lower case.
    pub(crate) fn objects_ref(&self) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
        let EventBody::Statement(s) = self else {
            return Vec::new();
        };
        let tables = s
            .tables_read
            .iter()
            .chain(s.tables_written.iter())
            .map(|t| (lower(t), Cow::Borrowed("")));
        let columns = s
            .columns_read
            .iter()
            .chain(s.columns_written.iter())
            .chain(s.masked.iter().map(|m| &m.column))
            .map(|c| {
                let (t, col) = split_lower(c);
                (t.unwrap_or(Cow::Borrowed("")), col)
            });
        let mut v: Vec<(Cow<'_, str>, Cow<'_, str>)> = tables.chain(columns).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Text indexed for full-text search: names, tables, statement text.
    pub fn search_text(&self) -> String {
        let mut text = String::new();
        self.search_parts(&mut |p| {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(p);
        });
        text
    }

    /// The non-empty parts of [`search_text`](Self::search_text), in order.
    pub(crate) fn search_parts(&self, f: &mut dyn FnMut(&str)) {
        let mut part = |p: &str| {
            if !p.is_empty() {
                f(p);
            }
        };
        part(self.code());
        match self {
            EventBody::Statement(s) => {
                for p in [
                    s.principal.name.as_str(),
                    s.principal.on_behalf_of.as_deref().unwrap_or(""),
                    &s.target,
                    &*s.normalized,
                    s.text.as_deref().unwrap_or(""),
                    s.rule.as_deref().unwrap_or(""),
                ] {
                    part(p);
                }
                s.tables_read
                    .iter()
                    .chain(s.tables_written.iter())
                    .for_each(|t| part(t));
            }
            EventBody::SessionStart(s) => {
                for p in [
                    s.principal.name.as_str(),
                    s.principal.on_behalf_of.as_deref().unwrap_or(""),
                    s.target.as_str(),
                    s.application_name.as_str(),
                    s.source.as_str(),
                ] {
                    part(p);
                }
            }
            EventBody::SessionEnd(s) => {
                for p in [
                    s.principal.name.as_str(),
                    s.target.as_str(),
                    s.reason.as_str(),
                ] {
                    part(p);
                }
            }
            EventBody::AuthFailure(s) => {
                for p in [
                    s.user.as_str(),
                    s.source.as_str(),
                    s.reason.as_str(),
                    s.target.as_deref().unwrap_or(""),
                    s.detail.as_deref().unwrap_or(""),
                ] {
                    part(p);
                }
            }
            EventBody::Admin(s) => {
                for p in [
                    s.actor.name.as_str(),
                    s.action.as_str(),
                    s.object.as_str(),
                    s.outcome.as_str(),
                    s.detail.as_deref().unwrap_or(""),
                ] {
                    part(p);
                }
            }
        }
    }

    /// A one-line summary for tables.
    pub fn summary(&self) -> String {
        match self {
            EventBody::Statement(s) => s.normalized.to_string(),
            EventBody::SessionStart(s) => format!(
                "{} from {} ({}, tls {})",
                s.method, s.source, s.application_name, s.tls.version
            ),
            EventBody::SessionEnd(s) => format!(
                "{}; {} statements, {} rows, {} ms",
                s.reason, s.statements, s.rows, s.duration_ms
            ),
            EventBody::AuthFailure(s) => format!("{} {} from {}", s.method, s.reason, s.source),
            EventBody::Admin(s) => format!("{} {} -> {}", s.action, s.object, s.outcome),
        }
    }
}

/// [`IndexFields`] borrowed from an event.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct IndexRef<'a> {
    pub principal: &'a str,
    pub target: &'a str,
    pub session: &'a str,
    pub decision: &'a str,
    pub fingerprint: &'a str,
}

/// `s.to_lowercase()`, borrowed when that changes nothing (the common case:
/// analysis already gives lower-case names).
pub(crate) fn lower(s: &str) -> Cow<'_, str> {
    let unchanged = if s.is_ascii() {
        !s.bytes().any(|b| b.is_ascii_uppercase())
    } else {
        s.chars().all(|c| {
            let mut l = c.to_lowercase();
            l.next() == Some(c) && l.next().is_none()
        })
    };
    if unchanged {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(s.to_lowercase())
    }
}

/// [`crate::search::split_column`] of `lower(c)`.
pub(crate) fn split_lower(c: &str) -> (Option<Cow<'_, str>>, Cow<'_, str>) {
    match lower(c) {
        Cow::Borrowed(b) => {
            let (t, col) = crate::search::split_column(b);
            (t.map(Cow::Borrowed), Cow::Borrowed(col))
        }
        Cow::Owned(o) => {
            let (t, col) = crate::search::split_column(&o);
            (
                t.map(|t| Cow::Owned(t.to_owned())),
                Cow::Owned(col.to_owned()),
            )
        }
    }
}

/// Searchable columns stored next to each event. `verify` checks that they
/// agree with the event body, so a changed column is a detected tampering.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexFields {
    /// Event code.
    pub code: String,
    /// Environment (`""` when none).
    pub environment: String,
    /// Principal (or user name given, or actor).
    pub principal: String,
    /// Target.
    pub target: String,
    /// Session id.
    pub session: String,
    /// Decision (`""` except for statements).
    pub decision: String,
    /// Fingerprint (`""` except for statements).
    pub fingerprint: String,
}

/// One event of a chain as stored: header, body and MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Chain id (the replica id of the writer).
    pub chain: String,
    /// Position in the chain, from 1.
    pub seq: u64,
    /// ULID of the event (its time is the event time).
    pub ulid: String,
    /// Event time, ms since the Unix epoch.
    pub time_ms: i64,
    /// Event code.
    pub code: String,
    /// Environment (`""` when none).
    pub environment: String,
    /// SHA-256 of `body` as stored.
    #[serde(with = "hex_bytes")]
    pub digest: Vec<u8>,
    /// The body as canonical JSON text, or `None` once removed by retention.
    pub body: Option<String>,
    /// HMAC of this record chained to the previous one.
    #[serde(with = "hex_bytes")]
    pub mac: Vec<u8>,
}

impl Record {
    /// The body, parsed.
    pub fn event(&self) -> Result<Option<EventBody>, serde_json::Error> {
        self.body.as_deref().map(serde_json::from_str).transpose()
    }
}

pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::util::hex(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        crate::util::unhex(&s).ok_or_else(|| serde::de::Error::custom("bad hex"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_borrows_only_what_is_already_lower_case() {
        for s in [
            "users",
            "app.users",
            "",
            "ünïcode",
            "Users",
            "ÜSERS",
            "ΟΔΟΣ",
            "a_B",
        ] {
            assert_eq!(lower(s), s.to_lowercase(), "{s}");
            assert_eq!(
                matches!(lower(s), Cow::Borrowed(_)),
                s == s.to_lowercase(),
                "{s}"
            );
        }
        let (t, c) = split_lower("App.Users.EMAIL");
        assert_eq!((t.as_deref(), c.as_ref()), (Some("app.users"), "email"));
        let st = EventBody::Statement(Statement {
            tables_read: vec!["Users".into()].into(),
            columns_read: vec!["users.ID".into(), "Users.id".into(), "name".into()].into(),
            ..Statement::default()
        });
        assert_eq!(
            st.objects(),
            vec![
                (String::new(), "name".to_owned()),
                ("users".to_owned(), String::new()),
                ("users".to_owned(), "id".to_owned()),
            ]
        );
    }
}
