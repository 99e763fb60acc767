//! `sluice`: the command line. Parsing and wiring only; the work is in the
//! library crates.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
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
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Passwd => passwd(),
        Command::Serve {
            config,
            data_dir,
            log_format,
        } => {
            init_logging(log_format);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
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
            match reload_state.reload() {
                Ok(()) => tracing::info!("configuration reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "reload failed; keeping the previous configuration")
                }
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
    state.serve(pg, shutdown).await;
    Ok(())
}
