//! `sluice evidence --from DATE [--to DATE]`: a compliance evidence report
//! for a period, built from the audit trail (events, usage, approval
//! requests, chain verification) and organised by SOC 2 and NIST 800-53
//! controls. Markdown, self-contained HTML or JSON.
//!
//! Only normalized statements (literals replaced by `$n`) are reported,
//! never statement text. Exit status: 0 report written and the trail
//! intact, 1 report written but the chain check failed, 2 no report (no
//! store, bad arguments, unreadable store).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use serde::Serialize;
use sluice_audit::approvals::{ApprovalStore, ListFilter, Request, Status};
use sluice_audit::event::EventBody;
use sluice_audit::usage::usage_deltas;
use sluice_audit::util::{format_time, now_ms, parse_time};
use sluice_audit::{Decision, Query, Store};

use crate::audit_cmd::{verify_chains, StoreArgs};

/// Version of the JSON structure; bumped on incompatible changes.
const SCHEMA_VERSION: u32 = 1;
/// Statement kinds that are privileged (schema, permissions, server).
const PRIVILEGED_KINDS: &[&str] = &["ddl", "drop", "truncate", "grant", "admin"];
/// Example statements kept per blocked group.
const EXAMPLES: usize = 5;
/// Statements are clipped to this many characters in Markdown and HTML.
const CLIP: usize = 200;

/// `sluice evidence`.
#[derive(Args, Debug)]
pub struct EvidenceArgs {
    #[command(flatten)]
    source: StoreArgs,
    /// Start of the period: RFC 3339, a date, or an age like 30d.
    #[arg(long)]
    from: String,
    /// End of the period (exclusive); default now.
    #[arg(long)]
    to: Option<String>,
    /// Key file for the chain check (as `sluice audit verify --key-file`);
    /// default DATA_DIR/audit/initial.key.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = EvidenceFormat::Markdown)]
    format: EvidenceFormat,
    /// Write here instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

/// Report format.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub enum EvidenceFormat {
    /// Markdown.
    Markdown,
    /// Self-contained HTML.
    Html,
    /// JSON (stable structure for tooling).
    Json,
}

// ---------------------------------------------------------------------------
// The report (its JSON form is the stable structure).

#[derive(Debug, Serialize)]
struct Report {
    report: &'static str,
    schema_version: u32,
    period: Period,
    store: String,
    generated_at: String,
    sluice_version: &'static str,
    controls: Vec<Control>,
    verification: Verification,
    events: EventCounts,
    access: Vec<PrincipalAccess>,
    privileged: Privileged,
    approvals: Approvals,
    blocked: Blocked,
    masking: Masking,
}

#[derive(Debug, Serialize)]
struct Period {
    from: String,
    to: String,
    from_ms: i64,
    to_ms: i64,
}

#[derive(Debug, Serialize)]
struct Control {
    framework: &'static str,
    id: &'static str,
    title: &'static str,
    sections: &'static [&'static str],
}

#[derive(Debug, Serialize)]
struct Verification {
    /// `intact`, `broken` or `error` (the check could not be made).
    status: &'static str,
    chains: Vec<sluice_audit::verify::ChainReport>,
    failure: Option<sluice_audit::Failure>,
    error: Option<String>,
}

#[derive(Debug, Default, Serialize)]
struct EventCounts {
    total: u64,
    by_code: BTreeMap<String, u64>,
    /// Events whose body retention removed (only their index is known).
    without_body: u64,
}

#[derive(Debug, Default, Serialize)]
struct PrincipalAccess {
    principal: String,
    kinds: BTreeSet<String>,
    on_behalf_of: BTreeSet<String>,
    targets: BTreeSet<TargetEnv>,
    sessions: u64,
    statements: u64,
    denied: u64,
    tables_read: BTreeSet<String>,
    tables_written: BTreeSet<String>,
    first_seen: String,
    last_seen: String,
    #[serde(skip)]
    first_ms: i64,
    #[serde(skip)]
    last_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
struct TargetEnv {
    target: String,
    environment: String,
}

#[derive(Debug, Default, Serialize)]
struct Privileged {
    statements: Vec<PrivilegedStatement>,
    admin_actions: Vec<AdminRow>,
}

#[derive(Debug, Serialize)]
struct PrivilegedStatement {
    time: String,
    principal: String,
    principal_kind: String,
    on_behalf_of: Option<String>,
    target: String,
    environment: String,
    kind: String,
    normalized: String,
    rule: Option<String>,
    approval_id: Option<String>,
    sqlstate: Option<String>,
}

#[derive(Debug, Serialize)]
struct AdminRow {
    time: String,
    actor: String,
    actor_kind: String,
    action: String,
    object: String,
    outcome: String,
    environment: Option<String>,
    detail: Option<String>,
    break_glass: bool,
}

#[derive(Debug, Default, Serialize)]
struct Approvals {
    requests: Vec<ApprovalRow>,
    by_status: BTreeMap<String, u64>,
    break_glass: u64,
    /// Statements refused or held pending an approval.
    statements_held: u64,
    /// Statements that ran under an approval.
    statements_run_under_approval: u64,
    /// Why the approval requests could not be read, if they could not.
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct ApprovalRow {
    id: String,
    created: String,
    status: String,
    principal: String,
    principal_kind: String,
    on_behalf_of: Option<String>,
    target: String,
    environment: String,
    rule: String,
    reason: String,
    normalized: String,
    approver_group: String,
    required_approvals: u32,
    votes: Vec<VoteRow>,
    break_glass: bool,
    break_glass_justification: Option<String>,
    decided: Option<String>,
    used: Option<String>,
}

#[derive(Debug, Serialize)]
struct VoteRow {
    approver: String,
    approve: bool,
    justification: Option<String>,
    at: String,
}

#[derive(Debug, Default, Serialize)]
struct Blocked {
    denied_total: u64,
    denied: Vec<DeniedGroup>,
    auth_failures_total: u64,
    auth_failures: Vec<AuthGroup>,
}

#[derive(Debug, Default, Serialize)]
struct DeniedGroup {
    rule: String,
    principal: String,
    count: u64,
    targets: BTreeSet<TargetEnv>,
    kinds: BTreeSet<String>,
    examples: Vec<String>,
    last_seen: String,
    #[serde(skip)]
    last_ms: i64,
}

#[derive(Debug, Default, Serialize)]
struct AuthGroup {
    user: String,
    reason: String,
    count: u64,
    methods: BTreeSet<String>,
    targets: BTreeSet<String>,
}

#[derive(Debug, Default, Serialize)]
struct Masking {
    masked_column_reads: i64,
    unmasked_column_reads: i64,
    columns: Vec<MaskingRow>,
}

#[derive(Debug, Default, Serialize)]
struct MaskingRow {
    target: String,
    environment: String,
    column: String,
    masked_reads: i64,
    unmasked_reads: i64,
    masked_rows: i64,
    unmasked_rows: i64,
    principals_masked: BTreeSet<String>,
    principals_unmasked: BTreeSet<String>,
}

const CONTROLS: &[Control] = &[
    Control {
        framework: "SOC 2",
        id: "CC6.1",
        title: "Logical access security",
        sections: &["access", "blocked"],
    },
    Control {
        framework: "SOC 2",
        id: "CC6.2/CC6.3",
        title: "Access provisioning and removal",
        sections: &["access", "privileged"],
    },
    Control {
        framework: "SOC 2",
        id: "CC6.6/CC6.7",
        title: "Data protection in transit and use",
        sections: &["masking"],
    },
    Control {
        framework: "SOC 2",
        id: "CC7.2",
        title: "Monitoring for anomalies",
        sections: &["blocked"],
    },
    Control {
        framework: "SOC 2",
        id: "CC7.3",
        title: "Incident evaluation (approvals, break-glass)",
        sections: &["approvals", "privileged"],
    },
    Control {
        framework: "NIST 800-53",
        id: "AC-2",
        title: "Account management",
        sections: &["access"],
    },
    Control {
        framework: "NIST 800-53",
        id: "AC-3",
        title: "Access enforcement",
        sections: &["blocked", "approvals"],
    },
    Control {
        framework: "NIST 800-53",
        id: "AC-6",
        title: "Least privilege",
        sections: &["privileged", "masking"],
    },
    Control {
        framework: "NIST 800-53",
        id: "AU-2/AU-3",
        title: "Event logging; content of audit records",
        sections: &["events"],
    },
    Control {
        framework: "NIST 800-53",
        id: "AU-9",
        title: "Protection of audit information",
        sections: &["verification"],
    },
    Control {
        framework: "NIST 800-53",
        id: "AU-12",
        title: "Audit record generation",
        sections: &["events"],
    },
];

// ---------------------------------------------------------------------------
// Gathering.

#[derive(Default)]
struct Acc {
    events: EventCounts,
    principals: BTreeMap<String, PrincipalAccess>,
    privileged: Privileged,
    denied: BTreeMap<(String, String), DeniedGroup>,
    auth: BTreeMap<(String, String), AuthGroup>,
    masking: BTreeMap<(String, String, String), MaskingRow>,
    held: u64,
    under_approval: u64,
}

impl Acc {
    fn principal(&mut self, name: &str, time_ms: i64) -> &mut PrincipalAccess {
        let p = self
            .principals
            .entry(name.to_owned())
            .or_insert_with(|| PrincipalAccess {
                principal: name.to_owned(),
                first_ms: time_ms,
                last_ms: time_ms,
                ..PrincipalAccess::default()
            });
        p.first_ms = p.first_ms.min(time_ms);
        p.last_ms = p.last_ms.max(time_ms);
        p
    }

    fn add(&mut self, row: sluice_audit::SearchRow) {
        self.events.total += 1;
        *self.events.by_code.entry(row.code.clone()).or_default() += 1;
        let t = row.time_ms;
        let body: Option<EventBody> = row.body;
        let Some(body) = body else {
            self.events.without_body += 1;
            // Only the index is left: still count access.
            if !row.principal.is_empty()
                && (row.code == sluice_audit::event::SESSION_START
                    || row.code == sluice_audit::event::STATEMENT)
            {
                let is_session = row.code == sluice_audit::event::SESSION_START;
                let denied = row.decision == "deny";
                let p = self.principal(&row.principal, t);
                p.targets.insert(TargetEnv {
                    target: row.target.clone(),
                    environment: row.environment.clone(),
                });
                if is_session {
                    p.sessions += 1;
                } else {
                    p.statements += 1;
                    p.denied += u64::from(denied);
                }
            }
            return;
        };
        match body {
            EventBody::SessionStart(s) => {
                let p = self.principal(&s.principal.name, t);
                p.sessions += 1;
                p.kinds.insert(s.principal.kind.clone());
                p.on_behalf_of.extend(s.principal.on_behalf_of.clone());
                p.targets.insert(TargetEnv {
                    target: s.target,
                    environment: s.environment,
                });
            }
            EventBody::SessionEnd(_) => {}
            EventBody::AuthFailure(a) => {
                let g = self
                    .auth
                    .entry((a.user.clone(), a.reason.clone()))
                    .or_insert_with(|| AuthGroup {
                        user: a.user.clone(),
                        reason: a.reason.clone(),
                        ..AuthGroup::default()
                    });
                g.count += 1;
                g.methods.insert(a.method);
                g.targets.extend(a.target);
            }
            EventBody::Admin(a) => {
                let break_glass = a.action.contains("break_glass")
                    || a.action.contains("break-glass")
                    || a.action.contains("breakglass");
                self.privileged.admin_actions.push(AdminRow {
                    time: format_time(t),
                    actor: a.actor.name,
                    actor_kind: a.actor.kind,
                    action: a.action,
                    object: a.object,
                    outcome: a.outcome,
                    environment: a.environment,
                    detail: a.detail,
                    break_glass,
                });
            }
            EventBody::Statement(s) => self.statement(s, t),
        }
    }

    fn statement(&mut self, s: sluice_audit::Statement, t: i64) {
        let te = TargetEnv {
            target: s.target.to_string(),
            environment: s.environment.to_string(),
        };
        {
            let p = self.principal(&s.principal.name, t);
            p.statements += 1;
            p.kinds.insert(s.principal.kind.clone());
            p.on_behalf_of.extend(s.principal.on_behalf_of.clone());
            p.targets.insert(te.clone());
            if s.decision == Decision::Deny {
                p.denied += 1;
            }
        }
        // Tables read and written, and column masking: the usage
        // aggregates' own definition (statements that ran).
        for d in usage_deltas(&s, t) {
            if d.column.is_empty() {
                let p = self.principal(&s.principal.name, t);
                if d.reads > 0 {
                    p.tables_read.insert(d.table.clone());
                }
                if d.writes > 0 {
                    p.tables_written.insert(d.table.clone());
                }
            } else if d.reads > 0 {
                let m = self
                    .masking
                    .entry((
                        d.target.clone(),
                        d.environment.clone(),
                        format!("{}.{}", d.table, d.column),
                    ))
                    .or_insert_with(|| MaskingRow {
                        target: d.target.clone(),
                        environment: d.environment.clone(),
                        column: format!("{}.{}", d.table, d.column),
                        ..MaskingRow::default()
                    });
                if d.masked {
                    m.masked_reads += d.reads;
                    m.masked_rows += d.rows;
                    m.principals_masked.insert(d.principal.clone());
                } else {
                    m.unmasked_reads += d.reads;
                    m.unmasked_rows += d.rows;
                    m.principals_unmasked.insert(d.principal.clone());
                }
            }
        }
        match s.decision {
            Decision::Deny => {
                let rule = s.rule.clone().unwrap_or_else(|| "(no rule)".into());
                let g = self
                    .denied
                    .entry((rule.clone(), s.principal.name.clone()))
                    .or_insert_with(|| DeniedGroup {
                        rule,
                        principal: s.principal.name.clone(),
                        last_ms: t,
                        ..DeniedGroup::default()
                    });
                g.count += 1;
                g.targets.insert(te);
                g.kinds.insert(s.kind.to_string());
                g.last_ms = g.last_ms.max(t);
                if g.examples.len() < EXAMPLES && !g.examples.iter().any(|e| **e == *s.normalized) {
                    g.examples.push(s.normalized.to_string());
                }
            }
            Decision::Approval => self.held += 1,
            Decision::Allow => {
                if s.approval_id.is_some() {
                    self.under_approval += 1;
                }
                if PRIVILEGED_KINDS.contains(&&*s.kind) {
                    self.privileged.statements.push(PrivilegedStatement {
                        time: format_time(t),
                        principal: s.principal.name.clone(),
                        principal_kind: s.principal.kind.clone(),
                        on_behalf_of: s.principal.on_behalf_of.clone(),
                        target: s.target.to_string(),
                        environment: s.environment.to_string(),
                        kind: s.kind.to_string(),
                        normalized: s.normalized.to_string(),
                        rule: s.rule,
                        approval_id: s.approval_id,
                        sqlstate: s.sqlstate,
                    });
                }
            }
        }
    }
}

/// Approval requests made in `[from, to)`, oldest first.
fn approval_requests(source: &StoreArgs, from: i64, to: i64) -> Result<Vec<Request>, String> {
    let store = ApprovalStore::open_existing(&source.audit_config(), &source.data_dir())
        .map_err(|e| e.to_string())?;
    let now = now_ms();
    let mut out = Vec::new();
    let mut before: Option<String> = None;
    const PAGE: usize = 1000;
    loop {
        let page = store
            .list_blocking(&ListFilter {
                before: before.clone(),
                limit: PAGE,
                now_ms: Some(now),
                ..ListFilter::default()
            })
            .map_err(|e| e.to_string())?;
        let n = page.len();
        before = page.last().map(|r| r.id.clone());
        let mut older = false;
        for r in page {
            if r.created_ms < from {
                older = true;
            } else if r.created_ms < to {
                out.push(r);
            }
        }
        if older || n < PAGE || before.is_none() {
            break;
        }
    }
    out.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
    Ok(out)
}

fn approval_row(r: Request) -> ApprovalRow {
    let break_glass = r.status == Status::BreakGlass || r.break_glass.is_some();
    ApprovalRow {
        id: r.id,
        created: format_time(r.created_ms),
        status: r.status.as_str().to_owned(),
        principal: r.binding.principal,
        principal_kind: r.principal_kind,
        on_behalf_of: r.on_behalf_of,
        target: r.binding.target,
        environment: r.environment,
        rule: r.rule,
        reason: r.reason,
        // Never `statement`: it carries literals.
        normalized: r.normalized,
        approver_group: r.approver_group,
        required_approvals: r.required_approvals,
        votes: r
            .decisions
            .into_iter()
            .map(|v| VoteRow {
                approver: v.approver,
                approve: v.approve,
                justification: v.justification,
                at: format_time(v.at_ms),
            })
            .collect(),
        break_glass,
        break_glass_justification: r.break_glass,
        decided: r.decided_ms.map(format_time),
        used: r.used_ms.map(format_time),
    }
}

fn gather(args: &EvidenceArgs, from: i64, to: i64) -> Result<Report, String> {
    // The store first: a missing one is an error, not an empty report.
    let mut store: Box<dyn Store> = args.source.open()?;
    // The chain check reads the whole trail, and so does gathering: each
    // on its own thread (and its own connection), the report takes the
    // longer of the two rather than their sum.
    let (verification, acc) = std::thread::scope(|scope| {
        let verification =
            scope.spawn(
                || match verify_chains(&args.source, args.key_file.as_deref()) {
                    Ok(Ok(r)) => Verification {
                        status: "intact",
                        chains: r.chains,
                        failure: None,
                        error: None,
                    },
                    Ok(Err(f)) => Verification {
                        status: "broken",
                        chains: Vec::new(),
                        failure: Some(f),
                        error: None,
                    },
                    Err(e) => Verification {
                        status: "error",
                        chains: Vec::new(),
                        failure: None,
                        error: Some(e),
                    },
                },
            );
        let mut acc = Acc::default();
        let mut q = Query {
            since: Some(from),
            until: Some(to),
            limit: 10_000,
            parsed_only: true,
            ..Query::default()
        };
        loop {
            let page = store.search(&q).map_err(|e| e.to_string())?;
            for row in page.rows {
                acc.add(row);
            }
            match page.next_cursor {
                Some(c) => q.cursor = Some(c),
                None => break,
            }
        }
        let verification = verification.join().unwrap_or_else(|_| Verification {
            status: "error",
            chains: Vec::new(),
            failure: None,
            error: Some("the chain check stopped unexpectedly".into()),
        });
        Ok::<_, String>((verification, acc))
    })?;

    let mut approvals = Approvals {
        statements_held: acc.held,
        statements_run_under_approval: acc.under_approval,
        ..Approvals::default()
    };
    match approval_requests(&args.source, from, to) {
        Ok(reqs) => {
            for r in reqs {
                let row = approval_row(r);
                *approvals.by_status.entry(row.status.clone()).or_default() += 1;
                approvals.break_glass += u64::from(row.break_glass);
                approvals.requests.push(row);
            }
        }
        Err(e) => approvals.error = Some(e),
    }

    let mut access: Vec<PrincipalAccess> = acc.principals.into_values().collect();
    for p in &mut access {
        p.first_seen = format_time(p.first_ms);
        p.last_seen = format_time(p.last_ms);
    }
    let mut privileged = acc.privileged;
    // Search is newest first; the report reads oldest first.
    privileged.statements.reverse();
    privileged.admin_actions.reverse();

    let mut denied: Vec<DeniedGroup> = acc.denied.into_values().collect();
    for g in &mut denied {
        g.last_seen = format_time(g.last_ms);
    }
    denied.sort_by(|a, b| b.count.cmp(&a.count).then(a.rule.cmp(&b.rule)));
    let mut auth: Vec<AuthGroup> = acc.auth.into_values().collect();
    auth.sort_by(|a, b| b.count.cmp(&a.count).then(a.user.cmp(&b.user)));
    let blocked = Blocked {
        denied_total: denied.iter().map(|g| g.count).sum(),
        denied,
        auth_failures_total: auth.iter().map(|g| g.count).sum(),
        auth_failures: auth,
    };
    let columns: Vec<MaskingRow> = acc.masking.into_values().collect();
    let masking = Masking {
        masked_column_reads: columns.iter().map(|c| c.masked_reads).sum(),
        unmasked_column_reads: columns.iter().map(|c| c.unmasked_reads).sum(),
        columns,
    };

    Ok(Report {
        report: "sluice-evidence",
        schema_version: SCHEMA_VERSION,
        period: Period {
            from: format_time(from),
            to: format_time(to),
            from_ms: from,
            to_ms: to,
        },
        store: args.source.describe(),
        generated_at: format_time(now_ms()),
        sluice_version: env!("CARGO_PKG_VERSION"),
        controls: CONTROLS
            .iter()
            .map(|c| Control {
                framework: c.framework,
                id: c.id,
                title: c.title,
                sections: c.sections,
            })
            .collect(),
        verification,
        events: acc.events,
        access,
        privileged,
        approvals,
        blocked,
        masking,
    })
}

// ---------------------------------------------------------------------------
// A document: what Markdown and HTML both render.

enum Block {
    Para(String),
    Table {
        headers: Vec<&'static str>,
        rows: Vec<Vec<String>>,
    },
}

struct Section {
    title: String,
    controls: String,
    blocks: Vec<Block>,
}

fn join<'a>(it: impl IntoIterator<Item = &'a String>) -> String {
    let v: Vec<&str> = it.into_iter().map(String::as_str).collect();
    if v.is_empty() {
        "-".into()
    } else {
        v.join(", ")
    }
}

fn opt(s: &Option<String>) -> String {
    s.clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".into())
}

fn clip(s: &str) -> String {
    let one: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one.chars().count() <= CLIP {
        one
    } else {
        format!("{}…", one.chars().take(CLIP - 1).collect::<String>())
    }
}

fn targets(t: &BTreeSet<TargetEnv>) -> String {
    if t.is_empty() {
        return "-".into();
    }
    t.iter()
        .map(|t| format!("{} ({})", t.target, t.environment))
        .collect::<Vec<_>>()
        .join(", ")
}

fn table(headers: Vec<&'static str>, rows: Vec<Vec<String>>, empty: &str) -> Block {
    if rows.is_empty() {
        Block::Para(empty.into())
    } else {
        Block::Table { headers, rows }
    }
}

fn document(r: &Report) -> (String, Vec<Section>) {
    let title = format!(
        "Sluice compliance evidence: {} to {}",
        r.period.from, r.period.to
    );
    let mut out = Vec::new();

    // 1. Period, store, verification.
    let v = &r.verification;
    let verdict = match (v.status, &v.failure, &v.error) {
        ("intact", _, _) => format!("INTACT: {} chain(s) verified.", v.chains.len()),
        (_, Some(f), _) => format!("BROKEN: first bad record: {f}."),
        (_, _, Some(e)) => format!("NOT VERIFIED: {e}."),
        _ => "NOT VERIFIED.".into(),
    };
    let mut blocks = vec![
        Block::Table {
            headers: vec!["Item", "Value"],
            rows: vec![
                vec!["Period from".into(), r.period.from.clone()],
                vec!["Period to (exclusive)".into(), r.period.to.clone()],
                vec!["Audit store".into(), r.store.clone()],
                vec!["Generated at".into(), r.generated_at.clone()],
                vec!["Sluice version".into(), r.sluice_version.into()],
                vec!["Chain verification".into(), verdict],
            ],
        },
        table(
            vec![
                "Chain",
                "Seq",
                "Records",
                "Checkpoints",
                "Last checkpoint",
                "Bodies removed",
            ],
            v.chains
                .iter()
                .map(|c| {
                    vec![
                        c.chain.clone(),
                        format!("{}..{}", c.first_seq, c.head_seq),
                        c.records.to_string(),
                        c.checkpoints.to_string(),
                        c.last_checkpoint_seq.to_string(),
                        c.removed_bodies.to_string(),
                    ]
                })
                .collect(),
            "No chain details.",
        ),
        Block::Para(format!(
            "Events recorded in the period: {} ({}).{}",
            r.events.total,
            if r.events.by_code.is_empty() {
                "none".into()
            } else {
                r.events
                    .by_code
                    .iter()
                    .map(|(k, n)| format!("{k}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            if r.events.without_body > 0 {
                format!(
                    " {} of them had their body removed by retention; only their index is counted.",
                    r.events.without_body
                )
            } else {
                String::new()
            }
        )),
        Block::Para(
            "Each event records who (principal, kind, on behalf of), what (normalized statement, \
             tables, columns, masked columns), where (target, environment, session), when, and \
             the outcome (policy decision and rule). Events are sealed in a keyed hash chain with \
             signed checkpoints."
                .into(),
        ),
        Block::Table {
            headers: vec!["Framework", "Control", "Title", "Evidence"],
            rows: r
                .controls
                .iter()
                .map(|c| {
                    vec![
                        c.framework.into(),
                        c.id.into(),
                        c.title.into(),
                        c.sections.join(", "),
                    ]
                })
                .collect(),
        },
    ];
    out.push(Section {
        title: "1. Period, store and integrity".into(),
        controls: "AU-9, AU-2/AU-3, AU-12".into(),
        blocks: std::mem::take(&mut blocks),
    });

    // 2. Access.
    out.push(Section {
        title: "2. Who had access to what".into(),
        controls: "SOC 2 CC6.1, CC6.2/CC6.3; NIST AC-2".into(),
        blocks: vec![table(
            vec![
                "Principal",
                "Kind",
                "On behalf of",
                "Targets (environment)",
                "Sessions",
                "Statements",
                "Denied",
                "Tables read",
                "Tables written",
                "First seen",
                "Last seen",
            ],
            r.access
                .iter()
                .map(|p| {
                    vec![
                        p.principal.clone(),
                        join(&p.kinds),
                        join(&p.on_behalf_of),
                        targets(&p.targets),
                        p.sessions.to_string(),
                        p.statements.to_string(),
                        p.denied.to_string(),
                        join(&p.tables_read),
                        join(&p.tables_written),
                        p.first_seen.clone(),
                        p.last_seen.clone(),
                    ]
                })
                .collect(),
            "No sessions or statements in the period.",
        )],
    });

    // 3. Privileged actions.
    out.push(Section {
        title: "3. Privileged actions".into(),
        controls: "SOC 2 CC6.2/CC6.3; NIST AC-6".into(),
        blocks: vec![
            Block::Para(format!(
                "Statements that ran with kind {} (decision allow): {}.",
                PRIVILEGED_KINDS.join(", "),
                r.privileged.statements.len()
            )),
            table(
                vec![
                    "Time",
                    "Principal",
                    "On behalf of",
                    "Target (environment)",
                    "Kind",
                    "Statement (normalized)",
                    "Approval",
                    "SQLSTATE",
                ],
                r.privileged
                    .statements
                    .iter()
                    .map(|s| {
                        vec![
                            s.time.clone(),
                            format!("{} ({})", s.principal, s.principal_kind),
                            opt(&s.on_behalf_of),
                            format!("{} ({})", s.target, s.environment),
                            s.kind.clone(),
                            clip(&s.normalized),
                            opt(&s.approval_id),
                            opt(&s.sqlstate),
                        ]
                    })
                    .collect(),
                "No privileged statements ran.",
            ),
            Block::Para(format!(
                "Administrative actions: {}.",
                r.privileged.admin_actions.len()
            )),
            table(
                vec![
                    "Time",
                    "Actor",
                    "Action",
                    "Object",
                    "Outcome",
                    "Environment",
                    "Detail",
                ],
                r.privileged
                    .admin_actions
                    .iter()
                    .map(|a| {
                        vec![
                            a.time.clone(),
                            format!("{} ({})", a.actor, a.actor_kind),
                            if a.break_glass {
                                format!("{} [BREAK-GLASS]", a.action)
                            } else {
                                a.action.clone()
                            },
                            a.object.clone(),
                            a.outcome.clone(),
                            opt(&a.environment),
                            clip(&opt(&a.detail)),
                        ]
                    })
                    .collect(),
                "No administrative actions.",
            ),
        ],
    });

    // 4. Approvals.
    let a = &r.approvals;
    let mut blocks = vec![Block::Para(format!(
        "Approval requests made in the period: {} ({}); break-glass: {}. Statements held for \
         approval: {}; statements run under an approval: {}.",
        a.requests.len(),
        if a.by_status.is_empty() {
            "none".into()
        } else {
            a.by_status
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        },
        a.break_glass,
        a.statements_held,
        a.statements_run_under_approval
    ))];
    if let Some(e) = &a.error {
        blocks.push(Block::Para(format!(
            "Approval requests could not be read: {e}."
        )));
    }
    blocks.push(table(
        vec![
            "Created",
            "Id",
            "Status",
            "Principal",
            "Target (environment)",
            "Rule",
            "Statement (normalized)",
            "Approvers",
            "Justification",
        ],
        a.requests
            .iter()
            .map(|q| {
                let votes = if q.votes.is_empty() {
                    "-".into()
                } else {
                    q.votes
                        .iter()
                        .map(|v| {
                            format!(
                                "{} {} at {}",
                                v.approver,
                                if v.approve { "approved" } else { "denied" },
                                v.at
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                let why: Vec<String> = q
                    .break_glass_justification
                    .iter()
                    .map(|j| format!("break-glass: {j}"))
                    .chain(
                        q.votes
                            .iter()
                            .filter_map(|v| v.justification.as_ref())
                            .map(|j| j.to_string()),
                    )
                    .collect();
                vec![
                    q.created.clone(),
                    q.id.clone(),
                    if q.break_glass {
                        format!("{} [BREAK-GLASS]", q.status)
                    } else {
                        q.status.clone()
                    },
                    match &q.on_behalf_of {
                        Some(b) => format!("{} ({}, for {b})", q.principal, q.principal_kind),
                        None => format!("{} ({})", q.principal, q.principal_kind),
                    },
                    format!("{} ({})", q.target, q.environment),
                    q.rule.clone(),
                    clip(&q.normalized),
                    votes,
                    if why.is_empty() {
                        "-".into()
                    } else {
                        clip(&why.join("; "))
                    },
                ]
            })
            .collect(),
        "No approval requests in the period.",
    ));
    out.push(Section {
        title: "4. Approvals and break-glass".into(),
        controls: "SOC 2 CC7.3; NIST AC-3".into(),
        blocks,
    });

    // 5. Blocked attempts.
    let b = &r.blocked;
    out.push(Section {
        title: "5. Blocked attempts".into(),
        controls: "SOC 2 CC6.1, CC7.2; NIST AC-3".into(),
        blocks: vec![
            Block::Para(format!("Statements denied by policy: {}.", b.denied_total)),
            table(
                vec![
                    "Rule",
                    "Principal",
                    "Count",
                    "Targets (environment)",
                    "Kinds",
                    "Examples (normalized)",
                    "Last seen",
                ],
                b.denied
                    .iter()
                    .map(|g| {
                        vec![
                            g.rule.clone(),
                            g.principal.clone(),
                            g.count.to_string(),
                            targets(&g.targets),
                            join(&g.kinds),
                            clip(&g.examples.join("; ")),
                            g.last_seen.clone(),
                        ]
                    })
                    .collect(),
                "No statements were denied.",
            ),
            Block::Para(format!("Failed sign-ins: {}.", b.auth_failures_total)),
            table(
                vec!["User", "Reason", "Count", "Methods", "Targets"],
                b.auth_failures
                    .iter()
                    .map(|g| {
                        vec![
                            g.user.clone(),
                            g.reason.clone(),
                            g.count.to_string(),
                            join(&g.methods),
                            join(&g.targets),
                        ]
                    })
                    .collect(),
                "No failed sign-ins.",
            ),
        ],
    });

    // 6. Masking.
    let m = &r.masking;
    out.push(Section {
        title: "6. Masking coverage".into(),
        controls: "SOC 2 CC6.6/CC6.7; NIST AC-6".into(),
        blocks: vec![
            Block::Para(format!(
                "Column reads by statements that ran: {} masked, {} not masked. A column read \
                 without masking inside the database (INSERT … SELECT) returns nothing to the client.",
                m.masked_column_reads, m.unmasked_column_reads
            )),
            table(
                vec![
                    "Target",
                    "Environment",
                    "Column",
                    "Masked reads",
                    "Unmasked reads",
                    "Rows masked",
                    "Rows unmasked",
                    "Principals (masked)",
                    "Principals (unmasked)",
                ],
                m.columns
                    .iter()
                    .map(|c| {
                        vec![
                            c.target.clone(),
                            c.environment.clone(),
                            c.column.clone(),
                            c.masked_reads.to_string(),
                            c.unmasked_reads.to_string(),
                            c.masked_rows.to_string(),
                            c.unmasked_rows.to_string(),
                            join(&c.principals_masked),
                            join(&c.principals_unmasked),
                        ]
                    })
                    .collect(),
                "No column reads in the period.",
            ),
        ],
    });
    (title, out)
}

// ---------------------------------------------------------------------------
// Rendering.

/// A Markdown table cell or paragraph: no HTML, no table breaks.
fn md(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '|' => o.push_str("\\|"),
            '\\' => o.push_str("\\\\"),
            '`' => o.push_str("\\`"),
            '*' => o.push_str("\\*"),
            '_' => o.push_str("\\_"),
            '[' => o.push_str("\\["),
            ']' => o.push_str("\\]"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            c if c.is_control() => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

fn markdown(title: &str, sections: &[Section]) -> String {
    let mut o = format!("# {}\n", md(title));
    for s in sections {
        o.push_str(&format!(
            "\n## {}\n\n_Controls: {}_\n",
            md(&s.title),
            md(&s.controls)
        ));
        for b in &s.blocks {
            match b {
                Block::Para(p) => o.push_str(&format!("\n{}\n", md(p))),
                Block::Table { headers, rows } => {
                    o.push('\n');
                    o.push_str(&format!(
                        "| {} |\n",
                        headers
                            .iter()
                            .map(|h| md(h))
                            .collect::<Vec<_>>()
                            .join(" | ")
                    ));
                    o.push_str(&format!("|{}\n", "---|".repeat(headers.len())));
                    for r in rows {
                        o.push_str(&format!(
                            "| {} |\n",
                            r.iter().map(|c| md(c)).collect::<Vec<_>>().join(" | ")
                        ));
                    }
                }
            }
        }
    }
    o
}

// HTML text or attribute value: the admin API's escaper.
use sluice_admin::html_escape as esc;

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:1em 0;font-size:13px}\
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}\
th{background:#f3f3f3}td{word-break:break-word}.controls{color:#666;font-style:italic}";

fn html(title: &str, sections: &[Section]) -> String {
    let mut o = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        esc(title),
        esc(title)
    );
    for s in sections {
        o.push_str(&format!(
            "<section>\n<h2>{}</h2>\n<p class=\"controls\">Controls: {}</p>\n",
            esc(&s.title),
            esc(&s.controls)
        ));
        for b in &s.blocks {
            match b {
                Block::Para(p) => o.push_str(&format!("<p>{}</p>\n", esc(p))),
                Block::Table { headers, rows } => {
                    o.push_str("<table>\n<tr>");
                    for h in headers {
                        o.push_str(&format!("<th>{}</th>", esc(h)));
                    }
                    o.push_str("</tr>\n");
                    for r in rows {
                        o.push_str("<tr>");
                        for c in r {
                            o.push_str(&format!("<td>{}</td>", esc(c)));
                        }
                        o.push_str("</tr>\n");
                    }
                    o.push_str("</table>\n");
                }
            }
        }
        o.push_str("</section>\n");
    }
    o.push_str("</body>\n</html>\n");
    o
}

fn error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("sluice evidence: {e}");
    ExitCode::from(2)
}

/// Run `sluice evidence`.
pub fn run(args: EvidenceArgs) -> ExitCode {
    let now = now_ms();
    let from = match parse_time(&args.from, now) {
        Ok(t) => t,
        Err(e) => return error(format!("--from: {e}")),
    };
    let to = match args.to.as_deref().map(|t| parse_time(t, now)).transpose() {
        Ok(t) => t.unwrap_or(now),
        Err(e) => return error(format!("--to: {e}")),
    };
    if from >= to {
        return error(format!(
            "--from ({}) must be before --to ({})",
            format_time(from),
            format_time(to)
        ));
    }
    let report = match gather(&args, from, to) {
        Ok(r) => r,
        Err(e) => return error(e),
    };
    let text = match args.format {
        EvidenceFormat::Json => match serde_json::to_string_pretty(&report) {
            Ok(mut s) => {
                s.push('\n');
                s
            }
            Err(e) => return error(e),
        },
        EvidenceFormat::Markdown => {
            let (title, sections) = document(&report);
            markdown(&title, &sections)
        }
        EvidenceFormat::Html => {
            let (title, sections) = document(&report);
            html(&title, &sections)
        }
    };
    let written = match &args.output {
        Some(p) => std::fs::write(p, text.as_bytes()).map_err(|e| format!("{}: {e}", p.display())),
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|e| format!("standard output: {e}"))
        }
    };
    if let Err(e) = written {
        return error(e);
    }
    if let Some(f) = &report.verification.failure {
        eprintln!("sluice evidence: audit chain verification FAILED: {f}");
        return ExitCode::from(1);
    }
    if let Some(e) = &report.verification.error {
        eprintln!("sluice evidence: audit chain not verified: {e}");
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        assert_eq!(md("a|b<i>"), "a\\|b&lt;i&gt;");
        assert_eq!(md("x\ny"), "x y");
    }
}
