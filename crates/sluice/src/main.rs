//! `sluice`: the command line. Parsing and wiring only; the work is in the
//! library crates.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod approvals_cmd;
mod audit_cmd;
mod evidence_cmd;
mod login;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Identity-aware governance proxy for PostgreSQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// Config file (sluice.toml).
        #[arg(long, short)]
        config: PathBuf,
        /// Where Sluice keeps its state (TLS certificate, audit trail).
        #[arg(long, default_value = "./sluice-data")]
        data_dir: PathBuf,
        /// Log format.
        #[arg(long, value_enum, default_value_t = LogFormat::Pretty, env = "SLUICE_LOG_FORMAT")]
        log_format: LogFormat,
    },
    /// Read a password on standard input and print its SCRAM-SHA-256
    /// verifier for `password_hash` in [[users]].
    Passwd,
    /// Check statements and policies without a database.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Preview masking offline: what each column of a CSV holds.
    #[command(subcommand)]
    Mask(MaskCommand),
    /// Verify, search and export the audit trail.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCommand),
    /// Who used which tables and columns; `usage lineage TABLE` for data flow.
    Usage(audit_cmd::UsageArgs),
    /// Compliance evidence report for a period (SOC 2, NIST 800-53).
    Evidence(evidence_cmd::EvidenceArgs),
    /// List, show, approve and deny approval requests (admin API).
    Approvals(approvals_cmd::ApprovalsArgs),
    /// Sign in with your identity provider (OIDC device flow) and cache the
    /// tokens for `sluice connect`.
    Login {
        /// The issuer URL (as in the proxy's [[oidc]] issuer).
        #[arg(long, env = "SLUICE_ISSUER")]
        issuer: String,
        /// The OAuth client registered for the CLI at the issuer.
        #[arg(long, default_value = "sluice-cli")]
        client_id: String,
        /// Scopes to ask for.
        #[arg(long, default_value = "openid email profile groups offline_access")]
        scope: String,
    },
    /// Show who your cached token says you are, your groups and its expiry.
    Whoami {
        /// Issuer (default: the last one you logged in to).
        #[arg(long, env = "SLUICE_ISSUER")]
        issuer: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Open psql on a target through Sluice with your token as the password
    /// (`sluice connect TARGET -- -c 'select 1'`), or print the settings
    /// for any other tool with --print.
    Connect {
        /// The target (its name is the database name).
        target: String,
        /// Sluice's PostgreSQL address.
        #[arg(long, env = "SLUICE_PROXY", default_value = "127.0.0.1:7432")]
        proxy: String,
        /// Startup user name (default: the token's email; the token decides who you are).
        #[arg(long)]
        user: Option<String>,
        /// Issuer (default: the last one you logged in to).
        #[arg(long, env = "SLUICE_ISSUER")]
        issuer: Option<String>,
        /// libpq sslmode (tokens are only accepted over TLS).
        #[arg(long, default_value = "require")]
        sslmode: String,
        /// Send the access token instead of the ID token.
        #[arg(long)]
        access_token: bool,
        /// Print a connection URI and environment variables instead of running psql.
        #[arg(long)]
        print: bool,
        /// Arguments for psql, after `--`.
        #[arg(last = true)]
        psql_args: Vec<String>,
    },
}

/// Who and where, for the offline policy tools.
#[derive(Args)]
struct PolicyWho {
    /// Environment of the target (production, staging, …).
    #[arg(long, default_value = "production")]
    environment: String,
    /// The principal's name.
    #[arg(long = "as", default_value = "someone")]
    principal: String,
    /// Kind of principal.
    #[arg(long, default_value = "human")]
    kind: String,
    /// Groups, comma-separated.
    #[arg(long, value_delimiter = ',')]
    groups: Vec<String>,
    /// Use the [policy] section of this config (built-in policies otherwise).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    format: OutputFormat,
}

impl PolicyWho {
    /// The policies and the principal; `Err` is the message for stderr.
    fn load(
        &self,
        tool: &str,
    ) -> Result<(sluice_policy::PolicyEngine, sluice_identity::Principal), String> {
        let engine = load_policies(self.config.as_deref()).map_err(|e| format!("{tool}: {e}"))?;
        let kind = self
            .kind
            .parse()
            .map_err(|e| format!("{tool}: --kind: {e}"))?;
        let who = sluice_identity::Principal {
            name: self.principal.clone(),
            kind,
            groups: self.groups.clone(),
            method: "policy-test",
            ..Default::default()
        };
        Ok((engine, who))
    }
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Show how a statement would be judged: decision, rule and facts.
    Test {
        #[command(flatten)]
        who: PolicyWho,
        /// The statement(s); `-` reads standard input.
        sql: String,
    },
    /// Show which columns a principal sees unmasked in results (the
    /// `unmask` action), by policy alone (`[masking] enabled = false` in a
    /// config would unmask everything).
    Unmask {
        #[command(flatten)]
        who: PolicyWho,
        /// Name of the target.
        #[arg(long, default_value = "policy-test")]
        target: String,
        /// Columns as `schema.table.column` (`table.column`: in `public`).
        #[arg(required = true)]
        columns: Vec<String>,
    },
    /// Load and validate the policies of a config (or the built-in ones).
    Validate {
        /// Config file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum MaskCommand {
    /// Read a CSV with a header on standard input and print, per column, the
    /// kind of sensitive data detected (or none) and a masked sample: the
    /// offline twin of masking in flight. Nothing unmasked is printed.
    Classify {
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

/// A command-line tool whose output is cut short (`sluice policy test … |
/// head`) ends quietly, as Unix tools do, instead of panicking in
/// `println!`. Not for `serve`, which must outlive a closed log pipe.
fn quiet_broken_pipe() {
    // SAFETY: called once at start-up, before any other thread exists;
    // SIG_DFL is a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    bound_heap_growth();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve { .. }) {
        quiet_broken_pipe();
    }
    match cli.command {
        Command::Passwd => passwd(),
        Command::Policy(cmd) => policy(cmd),
        Command::Mask(MaskCommand::Classify { format }) => mask_classify(format),
        Command::Audit(cmd) => audit_cmd::audit(cmd),
        Command::Usage(args) => audit_cmd::usage(args),
        Command::Evidence(args) => evidence_cmd::run(args),
        Command::Approvals(args) => approvals_cmd::run(args),
        Command::Login {
            issuer,
            client_id,
            scope,
        } => login::login(&issuer, &client_id, &scope),
        Command::Whoami { issuer, format } => {
            login::whoami(issuer.as_deref(), format == OutputFormat::Json)
        }
        Command::Connect {
            target,
            proxy,
            user,
            issuer,
            sslmode,
            access_token,
            print,
            psql_args,
        } => login::connect(login::ConnectArgs {
            target,
            proxy,
            user,
            issuer,
            sslmode,
            access_token,
            print,
            psql_args,
        }),
        Command::Serve {
            config,
            data_dir,
            log_format,
        } => {
            init_logging(log_format);
            // The main runtime accepts, serves HTTP and handles signals;
            // sessions run on per-core workers (see ProxyState::serve).
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("sluice: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match runtime.block_on(serve(config, data_dir)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sluice: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load_policies(config: Option<&std::path::Path>) -> Result<sluice_policy::PolicyEngine, String> {
    match config {
        None => sluice_policy::PolicyEngine::builtin().map_err(|e| e.to_string()),
        Some(path) => {
            let c = sluice_config::Config::load(path).map_err(|e| e.to_string())?;
            sluice_policy::PolicyEngine::load(c.policy.dir.as_deref(), &c.policy.disable)
                .map_err(|e| format!("{}: [policy]: {e}", path.display()))
        }
    }
}

fn policy(cmd: PolicyCommand) -> ExitCode {
    match cmd {
        PolicyCommand::Validate { config } => match load_policies(config.as_deref()) {
            Ok(engine) => {
                println!("policies are valid ({engine:?})");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sluice policy validate: {e}");
                ExitCode::from(2)
            }
        },
        PolicyCommand::Unmask {
            who,
            target,
            columns,
        } => {
            let (engine, principal) = match who.load("sluice policy unmask") {
                Ok(loaded) => loaded,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let (environment, format) = (who.environment, who.format);
            let mut names = Vec::with_capacity(columns.len());
            for c in &columns {
                match c.split('.').collect::<Vec<_>>().as_slice() {
                    [t, col] if !t.is_empty() && !col.is_empty() => {
                        names.push(("public".to_owned(), t.to_string(), col.to_string()))
                    }
                    [s, t, col] if !s.is_empty() && !t.is_empty() && !col.is_empty() => {
                        names.push((s.to_string(), t.to_string(), col.to_string()))
                    }
                    _ => {
                        eprintln!(
                            "sluice policy unmask: {c:?}: expected schema.table.column or table.column"
                        );
                        return ExitCode::from(2);
                    }
                }
            }
            let unmask = engine.unmask_for(
                &principal,
                &sluice_policy::TargetRef {
                    name: &target,
                    environment: &environment,
                },
            );
            let (whole, verdicts): (bool, Vec<bool>) = match &unmask {
                sluice_policy::Unmask::Nothing => (false, vec![false; names.len()]),
                sluice_policy::Unmask::Everything => (true, vec![true; names.len()]),
                sluice_policy::Unmask::Columns(c) => (
                    c.everything_else(),
                    names
                        .iter()
                        .map(|(s, t, col)| c.column(s, t, col))
                        .collect(),
                ),
            };
            let word = |u: bool| if u { "unmasked" } else { "masked" };
            if format == OutputFormat::Json {
                let out = serde_json::json!({
                    "target": { "name": target, "environment": environment, "unmasked": whole },
                    "columns": names.iter().zip(&verdicts).map(|((s, t, c), u)| serde_json::json!({
                        "column": format!("{s}.{t}.{c}"),
                        "unmasked": u,
                    })).collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            } else {
                println!("computed fields: {}", word(whole));
                for ((s, t, c), u) in names.iter().zip(&verdicts) {
                    println!("{s}.{t}.{c}: {}", word(*u));
                }
            }
            ExitCode::SUCCESS
        }
        PolicyCommand::Test { who: args, sql } => {
            let (engine, who) = match args.load("sluice policy test") {
                Ok(loaded) => loaded,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let sql = if sql == "-" {
                let mut s = String::new();
                if let Err(e) = std::io::stdin().read_to_string(&mut s) {
                    eprintln!("sluice policy test: cannot read standard input: {e}");
                    return ExitCode::from(2);
                }
                s
            } else {
                sql
            };
            let analysis = sluice_sql::analyze(&sql, sluice_sql::Dialect::default());
            let decision = engine.decide(&sluice_policy::Request {
                principal: &who,
                target: sluice_policy::TargetRef {
                    name: "policy-test",
                    environment: &args.environment,
                },
                analysis: analysis.as_ref().ok(),
                application_name: "sluice policy test",
                hour_utc: 12,
                client_address: "",
                search_path: &[],
            });
            print_decision(&decision, &analysis, args.format);
            // Exit status tells CI pipelines whether the statement may run.
            match decision {
                sluice_policy::Decision::Allow { .. } => ExitCode::SUCCESS,
                _ => ExitCode::from(1),
            }
        }
    }
}

fn print_decision(
    decision: &sluice_policy::Decision,
    analysis: &Result<sluice_sql::Analysis, sluice_sql::ParseError>,
    format: OutputFormat,
) {
    use sluice_policy::Decision;
    let (reason, hint, approvers, flags) = match decision {
        Decision::Allow { flags } => (None, None, None, flags.clone()),
        Decision::Deny { reason, hint, .. } => (Some(reason.clone()), hint.clone(), None, vec![]),
        Decision::Approval {
            reason, approvers, ..
        } => (Some(reason.clone()), None, Some(approvers.clone()), vec![]),
    };
    let facts = match analysis {
        Ok(a) => {
            let (fingerprint, normalized) = (&a.fingerprint, &a.normalized);
            serde_json::json!({
                "statements": a.statements.iter().map(|s| serde_json::json!({
                    "kind": s.kind.map(|k| k.as_str()),
                    "actions": s.actions.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
                    "tables_read": s.tables_read,
                    "tables_written": s.tables_written,
                    "functions": s.functions,
                    "risks": s.risks.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "fingerprint": fingerprint,
                "normalized": normalized,
            })
        }
        Err(e) => serde_json::json!({ "parse_error": e.to_string() }),
    };
    if format == OutputFormat::Json {
        let out = serde_json::json!({
            "decision": decision.label(),
            "rule": decision.rule(),
            "reason": reason,
            "hint": hint,
            "approvers": approvers,
            "flags": flags,
            "facts": facts,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return;
    }
    println!("decision: {}", decision.label());
    if let Some(rule) = decision.rule() {
        println!("rule:     {rule}");
    }
    if let Some(r) = reason {
        println!("reason:   {r}");
    }
    if let Some(h) = hint {
        println!("hint:     {h}");
    }
    if let Some(a) = approvers {
        println!("approvers: {a}");
    }
    if !flags.is_empty() {
        println!("flags:    {}", flags.join(", "));
    }
    println!(
        "facts:    {}",
        serde_json::to_string_pretty(&facts).unwrap_or_default()
    );
}

fn passwd() -> ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("sluice passwd: cannot read standard input: {e}");
        return ExitCode::from(1);
    }
    let password = input.strip_suffix('\n').unwrap_or(&input);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        eprintln!(
            "sluice passwd: empty password; pipe one in, e.g. `printf %s \"$PW\" | sluice passwd`"
        );
        return ExitCode::from(1);
    }
    println!("{}", sluice_identity::make_verifier(password));
    ExitCode::SUCCESS
}

async fn serve(config: PathBuf, data_dir: PathBuf) -> anyhow::Result<()> {
    let state = sluice_proxy::ProxyState::load(&config, &data_dir).map_err(anyhow::Error::msg)?;
    let listen = state.runtime().config.listen.clone();
    let pg = TcpListener::bind(listen.postgres).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {} (listen.postgres): {e}",
            listen.postgres
        )
    })?;
    if let Some(addr) = listen.http {
        let http = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (listen.http): {e}"))?;
        let admin_state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = sluice_admin::serve(http, admin_state).await {
                tracing::error!(error = %e, "admin HTTP server stopped");
            }
        });
    }
    tracing::info!(
        postgres = %listen.postgres,
        http = %listen.http.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        targets = state.runtime().config.targets.len(),
        "sluice is listening"
    );

    let mut hup = signal(SignalKind::hangup())?;
    let reload_state = state.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let result = reload_state.reload();
            match &result {
                Ok(()) => tracing::info!("configuration reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "reload failed; keeping the previous configuration")
                }
            }
            // The trail shows every change of the rules it is kept under.
            let (outcome, error) = match result {
                Ok(()) => ("ok", None),
                Err(e) => ("failed", Some(e)),
            };
            let event = sluice_audit::EventBody::Admin(sluice_audit::AdminAction {
                actor: sluice_audit::Actor {
                    name: "sluice".into(),
                    kind: "service".into(),
                    on_behalf_of: None,
                },
                action: "config.reload".into(),
                object: reload_state.config_path().display().to_string(),
                outcome: outcome.into(),
                detail: Some(match error {
                    Some(e) => format!("{e}; SIGHUP"),
                    None => "SIGHUP".into(),
                }),
                environment: None,
            });
            if let Err(e) = reload_state.audit().record(event) {
                tracing::error!(error = %e, "cannot record the reload in the audit trail");
            }
        }
    });
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining sessions"),
            _ = int.recv() => tracing::info!("SIGINT: draining sessions"),
        }
    };
    let workers = start_workers(state.runtime().config.limits.workers)?;
    state.serve(pg, &workers, shutdown).await;
    // Sessions are gone: write out and seal the audit trail.
    let closing = state.clone();
    let _ = tokio::task::spawn_blocking(move || closing.shutdown_audit()).await;
    Ok(())
}

/// One single-threaded runtime per worker thread; they live until the process exits.
fn start_workers(count: usize) -> anyhow::Result<Vec<tokio::runtime::Handle>> {
    let count = if count == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        count
    };
    let mut handles = Vec::with_capacity(count);
    for i in 0..count {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        handles.push(rt.handle().clone());
        std::thread::Builder::new()
            .name(format!("sluice-worker-{i}"))
            .spawn(move || rt.block_on(std::future::pending::<()>()))?;
    }
    Ok(handles)
}

/// glibc raises its mmap threshold each time a large block is freed, after
/// which buffers of up to 32 MiB come from the heap and fragment it: a proxy
/// that streams gigabytes with bounded buffers would still see its memory
/// creep up. Fixed thresholds keep large buffers mmapped and returned.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn bound_heap_growth() {
    // SAFETY: mallopt only changes allocator tuning parameters; it is called
    // before any other thread exists, with valid parameter numbers
    // (M_TRIM_THRESHOLD = -1, M_MMAP_THRESHOLD = -3) and positive values.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn bound_heap_growth() {}

fn mask_classify(format: OutputFormat) -> ExitCode {
    let stdin = std::io::stdin();
    match sluice_mask::classify_csv(stdin.lock()) {
        Ok(report) => {
            let out = match format {
                OutputFormat::Text => sluice_mask::render_text(&report),
                OutputFormat::Json => sluice_mask::render_json(&report),
            };
            print!("{out}");
            if !out.ends_with('\n') {
                println!();
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice mask classify: {e}");
            ExitCode::from(2)
        }
    }
}
