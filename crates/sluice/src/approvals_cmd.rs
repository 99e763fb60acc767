//! `sluice approvals list|show|approve|deny`: the approver's side of
//! approval requests, through the admin REST API (`/api/approvals` on
//! Sluice's HTTP port).
//!
//! The bearer token is `--token` / `$SLUICE_TOKEN`, else the cached
//! `sluice login` token (refreshed when about to expire). It is only ever
//! sent in the `Authorization` header: never printed, never in an error.
//!
//! Exit status: 0 done, 1 the API refused (not found, self-approval, not in
//! the approver group, no longer pending, …), 2 the API could not be asked
//! (no token, unreachable, not the admin API).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde::Deserialize;
use serde_json::Value;
use sluice_audit::util::{format_time, now_ms};

use crate::audit_cmd::Fmt;
use crate::login;

/// The admin API when neither --url nor $SLUICE_ADMIN_URL says otherwise.
const DEFAULT_URL: &str = "http://127.0.0.1:7080";
/// Timeout of one whole request.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read.
const MAX_BODY: u64 = 16 << 20;
/// Output width when standard output is not a terminal.
const DEFAULT_WIDTH: usize = 120;
/// The statement column never gets narrower than this.
const MIN_STATEMENT: usize = 24;

/// `sluice approvals …`.
#[derive(Args)]
pub struct ApprovalsArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: ApprovalsCommand,
}

/// Where the admin API is and who we are to it. No `Debug`: it holds the token.
#[derive(Args)]
struct ApiArgs {
    /// The admin API: Sluice's HTTP address (`[listen] http`).
    #[arg(long, global = true, env = "SLUICE_ADMIN_URL", default_value = DEFAULT_URL)]
    url: String,
    /// Bearer token for the admin API (an OIDC token or a static admin
    /// token); default: your cached `sluice login` token.
    #[arg(long, global = true, env = "SLUICE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Issuer of the cached token (default: the last one you logged in to).
    #[arg(long, global = true, env = "SLUICE_ISSUER")]
    issuer: Option<String>,
}

#[derive(Subcommand)]
enum ApprovalsCommand {
    /// List approval requests, newest first (pending ones unless --status or --all).
    List {
        /// Only requests with this status.
        #[arg(long, value_enum, conflicts_with = "all")]
        status: Option<StatusArg>,
        /// Requests of every status.
        #[arg(long)]
        all: bool,
        /// Only this target.
        #[arg(long)]
        target: Option<String>,
        /// Only this principal.
        #[arg(long)]
        principal: Option<String>,
        /// Only this environment.
        #[arg(long)]
        environment: Option<String>,
        /// At most this many (the API's default is 100).
        #[arg(long)]
        limit: Option<usize>,
        /// Only requests older than this id (the `next_before` of a previous page).
        #[arg(long)]
        before: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Fmt::Text)]
        format: Fmt,
    },
    /// Show everything about one request: who, where, the full statement,
    /// the rule, the facts, the votes so far and the expiry.
    Show {
        /// The request id.
        id: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Fmt::Text)]
        format: Fmt,
    },
    /// Approve a request (it is approved once enough approvers did).
    Approve(DecideArgs),
    /// Deny a request: a held statement fails, a refused one stays refused.
    Deny(DecideArgs),
}

#[derive(Args)]
struct DecideArgs {
    /// The request id.
    id: String,
    /// Why (recorded with your vote; some setups require it).
    #[arg(long, short = 'm')]
    justification: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Fmt::Text)]
    format: Fmt,
}

/// A request status, as the API names it.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StatusArg {
    Pending,
    Approved,
    Denied,
    Expired,
    Used,
    #[value(name = "break_glass", alias = "break-glass")]
    BreakGlass,
}

impl StatusArg {
    fn as_str(self) -> &'static str {
        match self {
            StatusArg::Pending => "pending",
            StatusArg::Approved => "approved",
            StatusArg::Denied => "denied",
            StatusArg::Expired => "expired",
            StatusArg::Used => "used",
            StatusArg::BreakGlass => "break_glass",
        }
    }
}

// ---------------------------------------------------------------------------
// The API client
// ---------------------------------------------------------------------------

/// Why a call failed.
#[derive(Debug)]
enum Failure {
    /// The API could not be asked: no token, unreachable, not the admin API.
    Local(String),
    /// The API answered with an error.
    Api {
        /// Machine-readable code (`self_approval`, …).
        code: String,
        /// The API's message.
        message: String,
    },
}

impl Failure {
    /// The message after `sluice: cannot <what>: `.
    fn describe(&self) -> String {
        match self {
            Failure::Local(m) => m.clone(),
            Failure::Api { code, message, .. } => {
                let hint = match code.as_str() {
                    "unauthenticated" => {
                        "; run `sluice login` or pass --token (the token may have expired)"
                    }
                    "justification_required" => "; give one with --justification TEXT (-m)",
                    _ => "",
                };
                format!("{message} ({code}){hint}")
            }
        }
    }

    fn exit_code(&self) -> ExitCode {
        match self {
            Failure::Local(_) => ExitCode::from(2),
            Failure::Api { .. } => ExitCode::from(1),
        }
    }
}

/// A client for one admin API with one bearer token.
struct Client {
    base: String,
    authorization: String,
    agent: ureq::Agent,
}

impl Client {
    fn new(api: &ApiArgs) -> Result<Client, String> {
        let base = api.url.trim().trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!(
                "--url {base:?}: expected an http:// or https:// URL of Sluice's admin API"
            ));
        }
        if base.starts_with("http://") && sluice_identity::http::check_url(&base).is_err() {
            eprintln!(
                "sluice: warning: {base} is plain http:// to a host that is not loopback: your token crosses the network in clear; prefer https://"
            );
        }
        let token = bearer_token(api)?;
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .http_status_as_error(false)
            // A redirect could carry the request (not the header) elsewhere; refuse.
            .max_redirects(0)
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Ok(Client {
            base,
            authorization: format!("Bearer {token}"),
            agent,
        })
    }

    fn get(&self, path: &str) -> Result<Value, Failure> {
        let url = format!("{}{path}", self.base);
        let result = self
            .agent
            .get(&url)
            .header("authorization", &self.authorization)
            .header("accept", "application/json")
            .call();
        self.answer(result)
    }

    fn post(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        let url = format!("{}{path}", self.base);
        let result = self
            .agent
            .post(&url)
            .header("authorization", &self.authorization)
            .header("accept", "application/json")
            .content_type("application/json")
            .send(body.to_string());
        self.answer(result)
    }

    fn answer(
        &self,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value, Failure> {
        let mut response = result.map_err(|e| {
            Failure::Local(format!(
                "cannot reach the admin API at {}: {e} (is Sluice running with [listen] http there? set --url or SLUICE_ADMIN_URL)",
                self.base
            ))
        })?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(|e| Failure::Local(format!("cannot read the answer of {}: {e}", self.base)))?;
        let body: Option<Value> = serde_json::from_str(&text).ok();
        if (200..300).contains(&status) {
            return body.ok_or_else(|| {
                Failure::Local(format!(
                    "{} answered with something that is not JSON: is it Sluice's admin API?",
                    self.base
                ))
            });
        }
        let field = |k: &str| {
            body.as_ref()
                .and_then(|b| b.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        match (field("error"), field("code")) {
            (Some(message), code) => Err(Failure::Api {
                code: code.unwrap_or_else(|| format!("http_{status}")),
                message,
            }),
            // Not one of the API's errors: a proxy in between, or another server.
            _ => Err(Failure::Local(format!(
                "{} answered HTTP {status} without an API error: is it Sluice's admin API (with the approvals endpoints)?",
                self.base
            ))),
        }
    }
}

/// The token to send: --token / $SLUICE_TOKEN, else the cached login.
fn bearer_token(api: &ApiArgs) -> Result<String, String> {
    if let Some(t) = api.token.as_deref() {
        let t = t.trim();
        if t.is_empty() {
            return Err("the token is empty: run `sluice login` or pass --token".into());
        }
        if t.chars().any(|c| c.is_control()) {
            return Err(
                "the token contains control characters; check --token / SLUICE_TOKEN".into(),
            );
        }
        return Ok(t.to_owned());
    }
    let cache = login::Cache::load()?;
    if api.issuer.is_none() && cache.default_issuer.is_none() && cache.issuers.is_empty() {
        return Err(
            "no token for the admin API: run `sluice login` or pass --token (or set SLUICE_TOKEN)"
                .into(),
        );
    }
    let (_, entry) =
        login::fresh(api.issuer.as_deref()).map_err(|e| format!("{e}, or pass --token"))?;
    Ok(entry.id_token)
}

/// Percent-encoding for a path segment or query value.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// What the API sends (lenient: missing fields are defaults)
// ---------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct View {
    id: String,
    status: String,
    created_ms: i64,
    decided_ms: Option<i64>,
    used_ms: Option<i64>,
    expires_at_ms: i64,
    decisions: Vec<VoteView>,
    binding: BindingView,
    principal_kind: String,
    on_behalf_of: Option<String>,
    groups: Vec<String>,
    environment: String,
    session: String,
    normalized: String,
    statement: String,
    facts: Value,
    rule: String,
    reason: String,
    approver_group: String,
    required_approvals: u32,
    require_justification: bool,
    mode: String,
    break_glass: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct VoteView {
    approver: String,
    approve: bool,
    justification: Option<String>,
    at_ms: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct BindingView {
    principal: String,
    target: String,
    fingerprint: String,
    params_hash: String,
}

impl View {
    fn parse(v: &Value) -> Result<View, Failure> {
        let view: View = serde_json::from_value(v.clone()).map_err(|e| {
            Failure::Local(format!(
                "the API sent an approval request this CLI cannot read: {e}"
            ))
        })?;
        if view.id.is_empty() {
            return Err(Failure::Local(
                "the API sent an approval request without an id".into(),
            ));
        }
        Ok(view)
    }

    /// Distinct approvals so far (names compared without regard to ASCII case).
    fn approvals(&self) -> u32 {
        let mut names: Vec<String> = self
            .decisions
            .iter()
            .filter(|v| v.approve)
            .map(|v| v.approver.trim().to_ascii_lowercase())
            .collect();
        names.sort();
        names.dedup();
        names.len() as u32
    }

    /// Approvals needed (0 counts as 1).
    fn required(&self) -> u32 {
        self.required_approvals.max(1)
    }

    /// `alice`, or `agent-7 for alice`.
    fn who(&self) -> String {
        match &self.on_behalf_of {
            Some(p) if !p.is_empty() => format!("{} for {p}", self.binding.principal),
            _ => self.binding.principal.clone(),
        }
    }

    /// Whether it is still open (pending, or approved and not yet used).
    fn open(&self) -> bool {
        matches!(self.status.as_str(), "pending" | "approved")
    }

    /// The EXPIRES IN cell.
    fn expires_in(&self, now: i64) -> String {
        if !self.open() {
            return "-".into();
        }
        let left = self.expires_at_ms - now;
        if left <= 0 {
            "expired".into()
        } else {
            span(left)
        }
    }
}

// ---------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------

/// A duration as the largest unit: `45s`, `12m`, `3h`, `2d`.
fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// A duration in its two largest units: `45s`, `4m 58s`, `1h 5m`, `2d 3h`.
fn span(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {sec}s")
    } else {
        format!("{sec}s")
    }
}

/// A time, absolute and relative to `now`: `2024-05-01T12:00:00.000Z (3m ago)`.
fn when(ms: i64, now: i64) -> String {
    let rel = if ms <= now {
        format!("{} ago", span(now - ms))
    } else {
        format!("in {}", span(ms - now))
    };
    format!("{} ({rel})", format_time(ms))
}

/// `text` on one line (runs of whitespace become one space), at most `max`
/// characters, ending in `…` when shortened.
fn shorten(text: &str, max: usize) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    if max == 0 {
        return String::new();
    }
    let mut out: String = one_line.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// Columns of the output: the terminal's width, else `$COLUMNS`, else 120.
fn output_width() -> usize {
    if std::io::stdout().is_terminal() {
        if let Some(w) = terminal_width() {
            return w;
        }
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .filter(|&w: &usize| w > 0)
        .unwrap_or(DEFAULT_WIDTH)
}

fn terminal_width() -> Option<usize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ on standard output only writes a `winsize` into
    // the valid, exclusively borrowed `ws`; on failure it writes nothing.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_col > 0).then_some(usize::from(ws.ws_col))
}

/// The `list` table: aligned columns, the normalized statement last and
/// shortened so that each row fits in `width` characters.
fn render_table(requests: &[View], now: i64, width: usize, with_status: bool) -> String {
    let mut header = vec!["ID", "AGE"];
    if with_status {
        header.push("STATUS");
    }
    header.extend(["PRINCIPAL", "TARGET/ENV", "RULE", "APPROVALS", "EXPIRES IN"]);
    let rows: Vec<Vec<String>> = requests
        .iter()
        .map(|r| {
            let mut row = vec![r.id.clone(), age(now - r.created_ms)];
            if with_status {
                row.push(r.status.clone());
            }
            row.extend([
                r.who(),
                format!("{}/{}", r.binding.target, r.environment),
                r.rule.clone(),
                format!("{}/{}", r.approvals(), r.required()),
                r.expires_in(now),
            ]);
            row
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    const GAP: &str = "  ";
    let used: usize = widths.iter().map(|w| w + GAP.len()).sum();
    let statement_width = width.saturating_sub(used).max(MIN_STATEMENT);
    let line = |cells: &[String], last: &str| {
        let mut s = String::new();
        for (cell, w) in cells.iter().zip(&widths) {
            s.push_str(cell);
            s.push_str(&" ".repeat(w - cell.chars().count()));
            s.push_str(GAP);
        }
        s.push_str(last);
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let mut out = line(&header, "STATEMENT");
    for (row, r) in rows.iter().zip(requests) {
        out.push_str(&line(row, &shorten(&r.normalized, statement_width)));
    }
    out
}

/// A facts value as text: lists joined with `, `, nothing as `-`.
fn fact_text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// `show`: what an approver must see before deciding.
fn render_show(r: &View, now: i64) -> String {
    let mut out = String::new();
    let mut kv = |k: &str, v: &str| out.push_str(&format!("{k:<13}{v}\n"));
    kv("request", &r.id);
    let mut status = r.status.clone();
    match r.status.as_str() {
        "pending" => {
            status.push_str(&format!(
                ": {} of {} approvals",
                r.approvals(),
                r.required()
            ));
            if r.expires_at_ms <= now {
                status.push_str(", past its expiry");
            }
        }
        "approved" => status.push_str(" (not used yet)"),
        "break_glass" => status.push_str(" (ran without approval, for review)"),
        _ => {}
    }
    kv("status", &status);
    let mut who = format!("{} ({})", r.binding.principal, r.principal_kind);
    if let Some(p) = r.on_behalf_of.as_deref().filter(|p| !p.is_empty()) {
        who.push_str(&format!(", on behalf of {p}"));
    }
    kv("principal", &who);
    kv(
        "groups",
        &if r.groups.is_empty() {
            "(none)".to_owned()
        } else {
            r.groups.join(", ")
        },
    );
    kv(
        "target",
        &format!("{} (environment {})", r.binding.target, r.environment),
    );
    kv("rule", &r.rule);
    kv("reason", &r.reason);
    let mut approvers = format!(
        "group {:?}, {} approval{} needed",
        r.approver_group,
        r.required(),
        if r.required() == 1 { "" } else { "s" }
    );
    if r.require_justification {
        approvers.push_str(", justification required");
    }
    kv("approvers", &approvers);
    let mode = match r.mode.as_str() {
        "hold" => "hold (the statement waits in its session for the decision)",
        "refuse" => "refuse (once approved, the principal runs it again, once)",
        other => other,
    };
    kv("mode", mode);
    if let Some(why) = &r.break_glass {
        kv("break-glass", why);
    }
    kv("created", &when(r.created_ms, now));
    if r.open() {
        kv("expires", &when(r.expires_at_ms, now));
    }
    if let Some(d) = r.decided_ms {
        kv("decided", &when(d, now));
    }
    if let Some(u) = r.used_ms {
        kv("used", &when(u, now));
    }
    if !r.session.is_empty() {
        kv("session", &r.session);
    }
    if !r.binding.fingerprint.is_empty() {
        kv("fingerprint", &r.binding.fingerprint);
    }

    out.push_str("\nstatement:\n");
    for l in r.statement.lines() {
        out.push_str(&format!("  {l}\n"));
    }

    out.push_str("\nfacts:\n");
    match &r.facts {
        Value::Object(m) if !m.is_empty() => {
            // The usual facts first, in reading order, then any others.
            const ORDER: [&str; 5] = [
                "kind",
                "tables_read",
                "columns_read",
                "tables_written",
                "columns_written",
            ];
            let keys = ORDER
                .iter()
                .copied()
                .filter(|k| m.contains_key(*k))
                .chain(m.keys().map(String::as_str).filter(|k| !ORDER.contains(k)));
            for k in keys {
                let v = m.get(k).unwrap_or(&Value::Null);
                out.push_str(&format!("  {:<17}{}\n", k.replace('_', " "), fact_text(v)));
            }
        }
        Value::Object(_) | Value::Null => out.push_str("  (none recorded)\n"),
        other => out.push_str(&format!("  {other}\n")),
    }

    out.push_str("\nvotes:\n");
    if r.decisions.is_empty() {
        out.push_str("  (none yet)\n");
    }
    for v in &r.decisions {
        let what = if v.approve { "approved" } else { "denied" };
        let why = v
            .justification
            .as_deref()
            .filter(|j| !j.is_empty())
            .map(|j| format!(": {j}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "  {}  {} {what}{why}\n",
            format_time(v.at_ms),
            v.approver
        ));
    }
    out
}

/// The one line printed after a vote.
fn outcome(r: &View, approve: bool) -> String {
    let (n, need) = (r.approvals(), r.required());
    match (approve, r.status.as_str()) {
        (true, "approved") if r.mode == "refuse" => format!(
            "approved: request {} is approved ({n}/{need}); {} may now run the statement again, once",
            r.id,
            r.who()
        ),
        (true, "approved") => format!(
            "approved: request {} is approved ({n}/{need}); the statement will run",
            r.id
        ),
        (true, "used") => format!(
            "approved: request {} is approved ({n}/{need}); the statement has run",
            r.id
        ),
        (true, "pending") => format!(
            "recorded: {n} of {need} approvals; request {} is still pending",
            r.id
        ),
        (false, "denied") => format!(
            "denied: request {} is denied; the statement will not run",
            r.id
        ),
        (_, status) => format!("recorded: request {} is now {status}", r.id),
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

// ---------------------------------------------------------------------------
// The commands
// ---------------------------------------------------------------------------

/// Run `sluice approvals …`.
pub fn run(args: ApprovalsArgs) -> ExitCode {
    let what = match &args.command {
        ApprovalsCommand::List { .. } => "list approval requests".to_owned(),
        ApprovalsCommand::Show { id, .. } => format!("show {id}"),
        ApprovalsCommand::Approve(d) => format!("approve {}", d.id),
        ApprovalsCommand::Deny(d) => format!("deny {}", d.id),
    };
    let result = Client::new(&args.api)
        .map_err(Failure::Local)
        .and_then(|client| execute(&client, args.command));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("sluice: cannot {what}: {}", f.describe());
            f.exit_code()
        }
    }
}

fn execute(client: &Client, command: ApprovalsCommand) -> Result<(), Failure> {
    match command {
        ApprovalsCommand::List {
            status,
            all,
            target,
            principal,
            environment,
            limit,
            before,
            format,
        } => {
            let status = if all {
                None
            } else {
                Some(status.unwrap_or(StatusArg::Pending))
            };
            let mut query: Vec<(&str, String)> = Vec::new();
            if let Some(s) = status {
                query.push(("status", s.as_str().to_owned()));
            }
            for (k, v) in [
                ("principal", principal),
                ("target", target),
                ("environment", environment),
                ("before", before),
            ] {
                if let Some(v) = v {
                    query.push((k, v));
                }
            }
            if let Some(l) = limit {
                query.push(("limit", l.to_string()));
            }
            let qs = query
                .iter()
                .map(|(k, v)| format!("{k}={}", enc(v)))
                .collect::<Vec<_>>()
                .join("&");
            let path = if qs.is_empty() {
                "/api/approvals".to_owned()
            } else {
                format!("/api/approvals?{qs}")
            };
            let page = client.get(&path)?;
            if format == Fmt::Json {
                print_json(&page);
                return Ok(());
            }
            let items = page
                .get("approvals")
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    Failure::Local("the API's answer has no \"approvals\" list".into())
                })?;
            let requests = items
                .iter()
                .map(View::parse)
                .collect::<Result<Vec<_>, _>>()?;
            if requests.is_empty() {
                match status {
                    Some(s) => println!("no {} approval requests", s.as_str()),
                    None => println!("no approval requests"),
                }
            } else {
                let with_status = status != Some(StatusArg::Pending);
                print!(
                    "{}",
                    render_table(&requests, now_ms(), output_width(), with_status)
                );
            }
            if let Some(next) = page.get("next_before").and_then(Value::as_str) {
                eprintln!("(more: add --before {next})");
            }
            Ok(())
        }
        ApprovalsCommand::Show { id, format } => {
            let v = client.get(&format!("/api/approvals/{}", enc(&id)))?;
            if format == Fmt::Json {
                print_json(&v);
            } else {
                print!("{}", render_show(&View::parse(&v)?, now_ms()));
            }
            Ok(())
        }
        ApprovalsCommand::Approve(d) => decide(client, d, true),
        ApprovalsCommand::Deny(d) => decide(client, d, false),
    }
}

fn decide(client: &Client, d: DecideArgs, approve: bool) -> Result<(), Failure> {
    let verb = if approve { "approve" } else { "deny" };
    let mut body = serde_json::Map::new();
    if let Some(j) = d.justification {
        body.insert("justification".into(), Value::String(j));
    }
    let v = client.post(
        &format!("/api/approvals/{}/{verb}", enc(&d.id)),
        &Value::Object(body),
    )?;
    if d.format == Fmt::Json {
        print_json(&v);
    } else {
        println!("{}", outcome(&View::parse(&v)?, approve));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_714_564_800_000; // 2024-05-01T12:00:00Z

    fn request(id: &str, principal: &str, normalized: &str) -> View {
        View {
            id: id.into(),
            status: "pending".into(),
            created_ms: NOW - 125_000,
            expires_at_ms: NOW + 298_000,
            binding: BindingView {
                principal: principal.into(),
                target: "app-prod".into(),
                fingerprint: "abc123".into(),
                params_hash: String::new(),
            },
            principal_kind: "human".into(),
            groups: vec!["dev".into()],
            environment: "production".into(),
            normalized: normalized.into(),
            statement: normalized.into(),
            rule: "approve-schema-changes-in-production".into(),
            reason: "schema changes in production need a DBA".into(),
            approver_group: "dba".into(),
            required_approvals: 1,
            mode: "hold".into(),
            ..View::default()
        }
    }

    #[test]
    fn durations() {
        assert_eq!(age(0), "0s");
        assert_eq!(age(59_999), "59s");
        assert_eq!(age(125_000), "2m");
        assert_eq!(age(3 * 3_600_000 + 5), "3h");
        assert_eq!(age(2 * 86_400_000 + 3_600_000), "2d");
        assert_eq!(age(-5_000), "0s", "clock skew is not a negative age");
        assert_eq!(span(45_000), "45s");
        assert_eq!(span(298_000), "4m 58s");
        assert_eq!(span(3_900_000), "1h 5m");
        assert_eq!(span(2 * 86_400_000 + 3 * 3_600_000 + 59_000), "2d 3h");
        assert_eq!(
            when(NOW - 180_000, NOW),
            "2024-05-01T11:57:00.000Z (3m 0s ago)"
        );
        assert_eq!(when(NOW + 45_000, NOW), "2024-05-01T12:00:45.000Z (in 45s)");
    }

    #[test]
    fn shortening_keeps_one_line_and_marks_the_cut() {
        assert_eq!(shorten("select 1", 20), "select 1");
        assert_eq!(
            shorten("select *\n  from t\twhere id = $1", 100),
            "select * from t where id = $1"
        );
        let s = shorten("alter table customers add column note text", 20);
        assert_eq!(s, "alter table custome…");
        assert_eq!(s.chars().count(), 20);
        // Characters, not bytes: never cut inside a UTF-8 sequence.
        assert_eq!(shorten("select 'ééééé'", 10), "select 'é…");
        assert_eq!(shorten("abc", 0), "");
        assert_eq!(shorten("abcd", 1), "…");
    }

    #[test]
    fn the_table_is_aligned_and_fits_the_width() {
        let mut agent = request(
            "01HXAAAAAAAAAAAAAAAAAAAAAA",
            "agent-7",
            "delete from orders where created < $1 and status = $2 and region in ($3, $4, $5)",
        );
        agent.on_behalf_of = Some("alice".into());
        agent.principal_kind = "agent".into();
        agent.required_approvals = 2;
        agent.decisions.push(VoteView {
            approver: "dan".into(),
            approve: true,
            justification: None,
            at_ms: NOW - 1000,
        });
        let plain = request(
            "01HXBBBBBBBBBBBBBBBBBBBBBB",
            "bob",
            "alter table customers add column note text",
        );
        let out = render_table(&[agent, plain], NOW, 200, false);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("ID "), "{out}");
        for h in [
            "AGE",
            "PRINCIPAL",
            "TARGET/ENV",
            "RULE",
            "APPROVALS",
            "EXPIRES IN",
            "STATEMENT",
        ] {
            assert!(lines[0].contains(h), "{h} in {out}");
        }
        assert!(
            !lines[0].contains("STATUS"),
            "pending only: no status column"
        );
        // Every column starts at the same place on every line.
        for h in ["AGE", "PRINCIPAL", "TARGET/ENV", "RULE", "STATEMENT"] {
            let col = lines[0].find(h).unwrap();
            for l in &lines[1..] {
                let before = &l[..col];
                assert!(before.ends_with("  "), "{h} aligned:\n{out}");
                assert_ne!(&l[col..col + 1], " ", "{h} aligned:\n{out}");
            }
        }
        assert!(lines[1].contains("agent-7 for alice"), "{out}");
        assert!(lines[1].contains("app-prod/production"), "{out}");
        assert!(lines[1].contains("1/2"), "{out}");
        assert!(lines[1].contains("4m 58s"), "{out}");
        assert!(lines[1].contains("2m "), "age: {out}");
        assert!(lines[1].ends_with('…'), "long statement shortened: {out}");
        assert_eq!(lines[1].chars().count(), 200, "{out}");
        assert!(
            lines[2].ends_with("alter table customers add column note text"),
            "{out}"
        );
        assert!(lines[2].contains("0/1"), "{out}");
    }

    #[test]
    fn a_narrow_terminal_still_shows_some_statement_and_status_when_asked() {
        let mut used = request("01HXCCCCCCCCCCCCCCCCCCCCCC", "bob", "drop table t");
        used.status = "used".into();
        let mut late = request(
            "01HXDDDDDDDDDDDDDDDDDDDDDD",
            "bob",
            "truncate table audit_log_with_a_long_name",
        );
        late.expires_at_ms = NOW - 1;
        let out = render_table(&[used, late], NOW, 40, true);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].contains("STATUS"), "{out}");
        assert!(lines[1].contains("used"), "{out}");
        assert!(lines[1].ends_with("drop table t"), "{out}");
        assert!(lines[2].contains("expired"), "{out}");
        let statement_col = lines[0].find("STATEMENT").unwrap();
        assert_eq!(
            lines[2][statement_col..].chars().count(),
            MIN_STATEMENT,
            "{out}"
        );
    }

    #[test]
    fn show_has_what_an_approver_needs() {
        let mut r = request(
            "01HXEEEEEEEEEEEEEEEEEEEEEE",
            "agent-7",
            "update accounts set balance = $1 where id = $2",
        );
        r.statement = "update accounts\n   set balance = 0\n where id = 42".into();
        r.on_behalf_of = Some("alice".into());
        r.principal_kind = "agent".into();
        r.groups = vec!["agents".into(), "finance".into()];
        r.required_approvals = 2;
        r.require_justification = true;
        r.facts = serde_json::json!({
            "tables_written": ["accounts"],
            "columns_written": ["accounts.balance"],
            "tables_read": ["accounts"],
            "columns_read": ["accounts.id"],
            "kind": "update",
            "estimated_rows": 1,
        });
        r.decisions.push(VoteView {
            approver: "dan".into(),
            approve: true,
            justification: Some("ticket 42".into()),
            at_ms: NOW - 60_000,
        });
        let out = render_show(&r, NOW);
        for want in [
            "request      01HXEEEEEEEEEEEEEEEEEEEEEE",
            "status       pending: 1 of 2 approvals",
            "principal    agent-7 (agent), on behalf of alice",
            "groups       agents, finance",
            "target       app-prod (environment production)",
            "rule         approve-schema-changes-in-production",
            "reason       schema changes in production need a DBA",
            "approvers    group \"dba\", 2 approvals needed, justification required",
            "expires      2024-05-01T12:04:58.000Z (in 4m 58s)",
            "  update accounts\n     set balance = 0\n   where id = 42\n",
            "  kind             update\n  tables read      accounts\n  columns read     accounts.id\n  tables written   accounts\n  columns written  accounts.balance\n  estimated rows   1\n",
            "  2024-05-01T11:59:00.000Z  dan approved: ticket 42",
        ] {
            assert!(out.contains(want), "{want:?} in\n{out}");
        }
    }

    #[test]
    fn outcomes() {
        let mut r = request("01HXF", "bob", "drop table t");
        r.decisions.push(VoteView {
            approver: "dan".into(),
            approve: true,
            ..VoteView::default()
        });
        r.status = "approved".into();
        assert_eq!(
            outcome(&r, true),
            "approved: request 01HXF is approved (1/1); the statement will run"
        );
        r.mode = "refuse".into();
        assert!(outcome(&r, true).ends_with("bob may now run the statement again, once"));
        r.status = "pending".into();
        r.required_approvals = 2;
        assert_eq!(
            outcome(&r, true),
            "recorded: 1 of 2 approvals; request 01HXF is still pending"
        );
        r.status = "denied".into();
        assert_eq!(
            outcome(&r, false),
            "denied: request 01HXF is denied; the statement will not run"
        );
    }

    #[test]
    fn api_errors_read_well() {
        let f = Failure::Api {
            code: "self_approval".into(),
            message: "you requested it yourself".into(),
        };
        assert_eq!(f.describe(), "you requested it yourself (self_approval)");
        let f = Failure::Api {
            code: "unauthenticated".into(),
            message: "the token has expired".into(),
        };
        assert!(f.describe().contains("run `sluice login` or pass --token"));
        assert_eq!(enc("01HX/../x y&z"), "01HX%2F..%2Fx%20y%26z");
    }

    #[test]
    fn lenient_about_missing_fields_but_not_a_missing_id() {
        let v = serde_json::json!({"id": "01HXG", "status": "pending", "extra": 1});
        let r = View::parse(&v).unwrap();
        assert_eq!(r.required(), 1);
        assert!(View::parse(&serde_json::json!({"status": "pending"})).is_err());
    }
}
