//! `sluice audit verify|search|export` and `sluice usage [lineage]`:
//! argument parsing and output; the work is in `sluice-audit`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use sluice_audit::export::{export, Format};
use sluice_audit::store::{self, Store};
use sluice_audit::util::{now_ms, parse_time};
use sluice_audit::{Decision, Query, StoreLocation, UsageQuery};

/// Where the audit trail is.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// Sluice's data directory (the SQLite store, the key file, the spool).
    /// Default `./sluice-data`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The store instead: `postgres://user@host:port/db` or `sqlite:PATH`.
    #[arg(long)]
    store: Option<String>,
    /// Environment variable with the PostgreSQL store's password.
    #[arg(long, conflicts_with = "password_file")]
    password_env: Option<String>,
    /// File with the PostgreSQL store's password.
    #[arg(long)]
    password_file: Option<PathBuf>,
}

impl StoreArgs {
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("./sluice-data"))
    }

    /// The `[audit]` settings these arguments stand for (store and password).
    pub(crate) fn audit_config(&self) -> sluice_audit::AuditConfig {
        sluice_audit::AuditConfig {
            store: self.store.clone(),
            password_env: self.password_env.clone(),
            password_file: self.password_file.clone(),
            ..Default::default()
        }
    }

    /// Where the store is, for reports (a password in a URL is hidden).
    pub(crate) fn describe(&self) -> String {
        match &self.store {
            None => format!(
                "sqlite:{}",
                sluice_audit::audit_dir(&self.data_dir())
                    .join("audit.db")
                    .display()
            ),
            Some(s) => redact_url(s),
        }
    }

    pub(crate) fn open(&self) -> Result<Box<dyn Store>, String> {
        let location = match &self.store {
            None => {
                StoreLocation::Sqlite(sluice_audit::audit_dir(&self.data_dir()).join("audit.db"))
            }
            Some(s) => sluice_audit::AuditConfig {
                store: Some(s.clone()),
                ..Default::default()
            }
            .location(&self.data_dir()),
        };
        match &location {
            // Never create an empty store for a mistyped path.
            StoreLocation::Sqlite(p) => sluice_audit::SqliteStore::open_existing(p)
                .map(|s| Box::new(s) as Box<dyn Store>)
                .map_err(|e| e.to_string()),
            StoreLocation::Postgres(_) => {
                let pw = sluice_audit::config::resolve_password(
                    self.password_env.as_deref(),
                    self.password_file.as_deref(),
                )
                .map_err(|e| e.to_string())?;
                store::open(&location, pw.as_deref()).map_err(|e| e.to_string())
            }
        }
    }
}

/// Output format.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub enum Fmt {
    /// Aligned text.
    Text,
    /// JSON.
    Json,
}

/// Export format.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub enum ExportFmt {
    /// JSON Lines.
    Jsonl,
    /// CSV.
    Csv,
}

/// Search filters.
#[derive(Args, Debug, Clone, Default)]
pub struct Filters {
    /// Principal (or user name of an auth failure).
    #[arg(long)]
    principal: Option<String>,
    /// Target.
    #[arg(long)]
    target: Option<String>,
    /// Environment.
    #[arg(long)]
    environment: Option<String>,
    /// Table read or written.
    #[arg(long)]
    table: Option<String>,
    /// Column read or written (`email` or `users.email`).
    #[arg(long)]
    column: Option<String>,
    /// Decision: allow, deny or approval.
    #[arg(long)]
    decision: Option<String>,
    /// Kind: statement, session, auth, admin, or an event code.
    #[arg(long)]
    kind: Option<String>,
    /// Session id.
    #[arg(long)]
    session: Option<String>,
    /// From: RFC 3339, a date, or an age like 30d.
    #[arg(long)]
    since: Option<String>,
    /// Until: RFC 3339, a date, or an age like 1h.
    #[arg(long)]
    until: Option<String>,
    /// Words that must all appear (names, tables, statement text).
    #[arg(long)]
    text: Option<String>,
}

impl Filters {
    fn query(&self) -> Result<Query, String> {
        let now = now_ms();
        let time = |s: &Option<String>, flag: &str| {
            s.as_deref()
                .map(|v| parse_time(v, now).map_err(|e| format!("--{flag}: {e}")))
                .transpose()
        };
        let decision = self
            .decision
            .as_deref()
            .map(|d| {
                Decision::parse(d)
                    .ok_or_else(|| format!("--decision: {d:?}: expected allow, deny or approval"))
            })
            .transpose()?;
        Ok(Query {
            principal: self.principal.clone(),
            target: self.target.clone(),
            environment: self.environment.clone(),
            table: self.table.clone(),
            column: self.column.clone(),
            decision,
            kind: self.kind.clone(),
            session: self.session.clone(),
            chain: None,
            since: time(&self.since, "since")?,
            until: time(&self.until, "until")?,
            text: self.text.clone(),
            limit: 0,
            cursor: None,
            parsed_only: false,
        })
    }
}

/// `sluice audit …`.
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check the hash chains and signed checkpoints; exit 0 when intact,
    /// 1 naming the first bad record (chain, seq, ulid, what), 2 on error.
    Verify {
        #[command(flatten)]
        source: StoreArgs,
        /// Key file (`<chain> <initial key> <public key>` per line);
        /// default DATA_DIR/audit/initial.key.
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Fmt::Text)]
        format: Fmt,
    },
    /// Search events, newest first.
    Search {
        #[command(flatten)]
        source: StoreArgs,
        #[command(flatten)]
        filters: Filters,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Fmt::Text)]
        format: Fmt,
        /// Page size.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Continue after a previous page (its `next_cursor`).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Export events as JSON Lines or CSV.
    Export {
        #[command(flatten)]
        source: StoreArgs,
        #[command(flatten)]
        filters: Filters,
        /// Format.
        #[arg(long, value_enum)]
        format: ExportFmt,
        /// Write here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Write the chains as stored (signed checkpoints, then records with
    /// digest, MAC and exact body) as JSON Lines, for a verifier other
    /// than Sluice's: `tools/verify_trail.py` checks them with the key file.
    Dump {
        #[command(flatten)]
        source: StoreArgs,
        /// Only this chain (default: every chain in the store).
        #[arg(long)]
        chain: Option<String>,
        /// Write here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

/// `sluice usage …`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct UsageArgs {
    #[command(subcommand)]
    command: Option<UsageCommand>,
    #[command(flatten)]
    source: StoreArgs,
    /// Principal.
    #[arg(long)]
    principal: Option<String>,
    /// Target.
    #[arg(long)]
    target: Option<String>,
    /// Environment.
    #[arg(long)]
    environment: Option<String>,
    /// Table.
    #[arg(long)]
    table: Option<String>,
    /// Column (`email` or `users.email`); without it, per-table totals.
    #[arg(long)]
    column: Option<String>,
    /// From: an age like 30d, a date or RFC 3339 (whole UTC days).
    #[arg(long)]
    since: Option<String>,
    /// Until (whole UTC days).
    #[arg(long)]
    until: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Fmt::Text)]
    format: Fmt,
}

/// `sluice usage lineage`.
#[derive(Subcommand, Debug)]
pub enum UsageCommand {
    /// Where a table's data came from, and who moved it.
    Lineage {
        /// The table (`training_set` or `schema.training_set`).
        table: String,
        /// Steps back through sources.
        #[arg(long, default_value_t = 5)]
        depth: usize,
        #[command(flatten)]
        source: StoreArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Fmt::Text)]
        format: Fmt,
    },
}

fn error(cmd: &str, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("sluice {cmd}: {e}");
    ExitCode::from(2)
}

/// Run `sluice audit …`.
pub fn audit(cmd: AuditCommand) -> ExitCode {
    match cmd {
        AuditCommand::Verify {
            source,
            key_file,
            format,
        } => verify(&source, key_file.as_deref(), format),
        AuditCommand::Search {
            source,
            filters,
            format,
            limit,
            cursor,
        } => search(&source, &filters, format, limit, cursor),
        AuditCommand::Export {
            source,
            filters,
            format,
            output,
        } => export_cmd(&source, &filters, format, output.as_deref()),
        AuditCommand::Dump {
            source,
            chain,
            output,
        } => dump_cmd(&source, chain.as_deref(), output.as_deref()),
    }
}

fn dump_cmd(source: &StoreArgs, chain: Option<&str>, output: Option<&Path>) -> ExitCode {
    let mut store = match source.open() {
        Ok(s) => s,
        Err(e) => return error("audit dump", e),
    };
    let on = std::io::stderr().is_terminal();
    // The chains' heads: their record counts unless retention cut them.
    let total = if on {
        store
            .chains()
            .unwrap_or_default()
            .iter()
            .filter(|c| chain.is_none_or(|only| only == c.chain))
            .filter_map(|c| store.head(&c.chain).ok().flatten())
            .map(|(seq, _)| seq)
            .sum()
    } else {
        0
    };
    let progress = Progress { total, on };
    let mut out = match output_to(output) {
        Ok(out) => out,
        Err(e) => return error("audit dump", e),
    };
    let r = sluice_audit::export::dump_chains(store.as_mut(), chain, &mut out, &mut |n| {
        progress.draw(n)
    });
    progress.done();
    match r {
        Ok(d) if d.chains == 0 => error(
            "audit dump",
            match chain {
                Some(c) => format!("the store has no chain {c}"),
                None => "the store has no chain".to_owned(),
            },
        ),
        Ok(d) => {
            if output.is_some() {
                eprintln!(
                    "dumped {} records and {} checkpoints of {} chain(s)",
                    d.records, d.checkpoints, d.chains
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => error("audit dump", e),
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
fn redact_url(s: &str) -> String {
    let Some(scheme_end) = s.find("://") else {
        return s.to_owned();
    };
    let rest = &s[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &s[..scheme_end + 3],
            &authority[..colon],
            &rest[at..]
        ),
        _ => s.to_owned(),
    }
}

/// Check the chains the way `sluice audit verify` does: `Err` when the
/// check could not be made (no store, no key file), `Ok(Err)` naming the
/// first bad record.
pub(crate) fn verify_chains(
    source: &StoreArgs,
    key_file: Option<&Path>,
) -> Result<Result<sluice_audit::Report, sluice_audit::Failure>, String> {
    let key_path = match key_file {
        Some(k) => k.to_owned(),
        None if source.store.is_some() && source.data_dir.is_none() => {
            return Err(
                "--key-file is needed with --store (the auditor's copy of the key files)".into(),
            )
        }
        None => sluice_audit::audit_dir(&source.data_dir()).join("initial.key"),
    };
    let keys = sluice_audit::chain::read_key_file(&key_path).map_err(|e| e.to_string())?;
    let mut store = source.open()?;
    // The writer's spool and state are used when its data dir is at hand.
    let local = if source.store.is_none() || source.data_dir.is_some() {
        Some(
            sluice_audit::verify::local_from_data_dir(&source.data_dir())
                .map_err(|e| e.to_string())?,
        )
    } else {
        None
    };
    Ok(sluice_audit::verify(store.as_mut(), &keys, local.as_ref()))
}

fn verify(source: &StoreArgs, key_file: Option<&Path>, format: Fmt) -> ExitCode {
    let result = match verify_chains(source, key_file) {
        Ok(r) => r,
        Err(e) => return error("audit verify", e),
    };
    match (result, format) {
        (Ok(report), Fmt::Json) => {
            let out = serde_json::json!({ "intact": true, "chains": report.chains });
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            ExitCode::SUCCESS
        }
        (Ok(report), Fmt::Text) => {
            println!("audit trail intact: {} chain(s)", report.chains.len());
            for c in &report.chains {
                let mut extra = Vec::new();
                if c.removed_bodies > 0 {
                    extra.push(format!("{} bodies removed by retention", c.removed_bodies));
                }
                if c.cut_seq > 0 {
                    extra.push(format!("records up to {} deleted by retention", c.cut_seq));
                }
                if c.from_spool > 0 {
                    extra.push(format!(
                        "{} only in the local spool, not yet in the store",
                        c.from_spool
                    ));
                }
                let checkpoints = match c.checkpoints {
                    0 => "no signed checkpoint yet".to_owned(),
                    1 => format!("1 signed checkpoint (at seq {})", c.last_checkpoint_seq),
                    n => format!(
                        "{n} signed checkpoints (last at seq {})",
                        c.last_checkpoint_seq
                    ),
                };
                println!(
                    "  chain {}: seq {}..{}, {} records, {checkpoints}{}",
                    c.chain,
                    c.first_seq,
                    c.head_seq,
                    c.records,
                    if extra.is_empty() {
                        String::new()
                    } else {
                        format!("; {}", extra.join("; "))
                    }
                );
            }
            ExitCode::SUCCESS
        }
        (Err(f), Fmt::Json) => {
            let out = serde_json::json!({ "intact": false, "failure": f });
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            eprintln!("sluice audit verify: FAILED: {f}");
            ExitCode::from(1)
        }
        (Err(f), Fmt::Text) => {
            eprintln!("sluice audit verify: FAILED: {f}");
            ExitCode::from(1)
        }
    }
}

/// Print rows as an aligned table; the last column is not padded.
fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let n = cells.len();
        let mut s = String::new();
        for (i, (c, w)) in cells.into_iter().zip(&widths).enumerate() {
            if i + 1 == n {
                s.push_str(&c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

fn clip(s: &str, n: usize) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= n {
        one_line
    } else {
        format!("{}…", one_line.chars().take(n - 1).collect::<String>())
    }
}

fn search(
    source: &StoreArgs,
    filters: &Filters,
    format: Fmt,
    limit: usize,
    cursor: Option<String>,
) -> ExitCode {
    let mut q = match filters.query() {
        Ok(q) => q,
        Err(e) => return error("audit search", e),
    };
    q.limit = limit.max(1);
    q.cursor = cursor;
    let mut store = match source.open() {
        Ok(s) => s,
        Err(e) => return error("audit search", e),
    };
    let page = match store.search(&q) {
        Ok(p) => p,
        Err(e) => return error("audit search", e),
    };
    match format {
        Fmt::Json => println!(
            "{}",
            serde_json::to_string_pretty(&page).unwrap_or_default()
        ),
        Fmt::Text => {
            let rows: Vec<Vec<String>> = page
                .rows
                .iter()
                .map(|r| {
                    vec![
                        r.time.clone(),
                        r.principal.clone(),
                        r.target.clone(),
                        r.environment.clone(),
                        r.code.clone(),
                        r.decision.clone(),
                        clip(&r.summary, 80),
                    ]
                })
                .collect();
            table(
                &[
                    "TIME",
                    "PRINCIPAL",
                    "TARGET",
                    "ENVIRONMENT",
                    "CODE",
                    "DECISION",
                    "SUMMARY",
                ],
                &rows,
            );
            if let Some(c) = &page.next_cursor {
                eprintln!("more: --cursor {c}");
            }
        }
    }
    ExitCode::SUCCESS
}

/// A progress bar on stderr, drawn only when stderr is a terminal.
/// A buffered writer to `output`, or to standard output.
fn output_to(output: Option<&Path>) -> Result<Box<dyn Write>, String> {
    Ok(match output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    })
}

struct Progress {
    total: u64,
    on: bool,
}

impl Progress {
    fn draw(&self, n: u64) {
        if !self.on {
            return;
        }
        let width = 30u64;
        let filled = (n * width)
            .checked_div(self.total)
            .unwrap_or(width)
            .min(width);
        eprint!(
            "\r[{}{}] {n}/{} events",
            "#".repeat(filled as usize),
            "-".repeat((width - filled) as usize),
            self.total
        );
        let _ = std::io::stderr().flush();
    }

    fn done(&self) {
        if self.on {
            eprintln!();
        }
    }
}

fn export_cmd(
    source: &StoreArgs,
    filters: &Filters,
    format: ExportFmt,
    output: Option<&Path>,
) -> ExitCode {
    let q = match filters.query() {
        Ok(q) => q,
        Err(e) => return error("audit export", e),
    };
    let mut store = match source.open() {
        Ok(s) => s,
        Err(e) => return error("audit export", e),
    };
    let on = std::io::stderr().is_terminal();
    let total = if on { store.count(&q).unwrap_or(0) } else { 0 };
    let progress = Progress { total, on };
    let mut out = match output_to(output) {
        Ok(out) => out,
        Err(e) => return error("audit export", e),
    };
    let fmt = match format {
        ExportFmt::Jsonl => Format::JsonLines,
        ExportFmt::Csv => Format::Csv,
    };
    let r = export(store.as_mut(), &q, fmt, &mut out, &mut |n| progress.draw(n));
    progress.done();
    match r {
        Ok(n) => {
            if output.is_some() {
                eprintln!("exported {n} events");
            }
            ExitCode::SUCCESS
        }
        Err(e) => error("audit export", e),
    }
}

/// Run `sluice usage …`.
pub fn usage(args: UsageArgs) -> ExitCode {
    if let Some(UsageCommand::Lineage {
        table: t,
        depth,
        source,
        format,
    }) = args.command
    {
        return lineage(&source, &t, depth, format);
    }
    let now = now_ms();
    let time = |s: &Option<String>, flag: &str| {
        s.as_deref()
            .map(|v| parse_time(v, now).map_err(|e| format!("--{flag}: {e}")))
            .transpose()
    };
    let (since, until) = match (time(&args.since, "since"), time(&args.until, "until")) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return error("usage", e),
    };
    let q = UsageQuery {
        principal: args.principal,
        target: args.target,
        environment: args.environment,
        table: args.table,
        column: args.column,
        since,
        until,
    };
    let mut store = match args.source.open() {
        Ok(s) => s,
        Err(e) => return error("usage", e),
    };
    let rows = match store.usage(&q) {
        Ok(r) => r,
        Err(e) => return error("usage", e),
    };
    match args.format {
        Fmt::Json => println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        ),
        Fmt::Text => {
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        r.principal.clone(),
                        if r.on_behalf_of.is_empty() {
                            "-".into()
                        } else {
                            r.on_behalf_of.clone()
                        },
                        r.target.clone(),
                        r.environment.clone(),
                        r.table.clone(),
                        if r.column.is_empty() {
                            "*".into()
                        } else {
                            r.column.clone()
                        },
                        if r.masked { "yes".into() } else { "no".into() },
                        r.reads.to_string(),
                        r.writes.to_string(),
                        r.rows.to_string(),
                        // Bytes are a table's: a result is not split
                        // between the columns it reads.
                        if r.column.is_empty() {
                            r.bytes.to_string()
                        } else {
                            "-".into()
                        },
                        r.first_seen.clone(),
                        r.last_seen.clone(),
                    ]
                })
                .collect();
            table(
                &[
                    "PRINCIPAL",
                    "ON_BEHALF_OF",
                    "TARGET",
                    "ENVIRONMENT",
                    "TABLE",
                    "COLUMN",
                    "MASKED",
                    "READS",
                    "WRITES",
                    "ROWS",
                    "BYTES",
                    "FIRST_SEEN",
                    "LAST_SEEN",
                ],
                &cells,
            );
        }
    }
    ExitCode::SUCCESS
}

fn lineage(source: &StoreArgs, t: &str, depth: usize, format: Fmt) -> ExitCode {
    let mut store = match source.open() {
        Ok(s) => s,
        Err(e) => return error("usage lineage", e),
    };
    let edges = match sluice_audit::usage::trace_lineage(store.as_mut(), t, depth) {
        Ok(e) => e,
        Err(e) => return error("usage lineage", e),
    };
    match format {
        Fmt::Json => println!(
            "{}",
            serde_json::to_string_pretty(&edges).unwrap_or_default()
        ),
        Fmt::Text => {
            if edges.is_empty() {
                println!("no recorded data flow into {t}");
            }
            let cells: Vec<Vec<String>> = edges
                .iter()
                .map(|e| {
                    vec![
                        e.source.clone(),
                        e.destination.clone(),
                        e.kind.clone(),
                        format!("{} ({})", e.principal, e.principal_kind),
                        if e.on_behalf_of.is_empty() {
                            "-".into()
                        } else {
                            e.on_behalf_of.clone()
                        },
                        e.target.clone(),
                        e.time.clone(),
                        e.fingerprint.clone(),
                    ]
                })
                .collect();
            if !cells.is_empty() {
                table(
                    &[
                        "SOURCE",
                        "DESTINATION",
                        "KIND",
                        "BY",
                        "ON_BEHALF_OF",
                        "TARGET",
                        "TIME",
                        "FINGERPRINT",
                    ],
                    &cells,
                );
            }
        }
    }
    ExitCode::SUCCESS
}
