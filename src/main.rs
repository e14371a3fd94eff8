//! The `tidings` command line: serve (default), migrate, events export/import,
//! replay, parked, export-openapi.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tidings::config::Settings;
use tidings::{storage, telemetry, Application};

/// mimalloc rather than glibc's malloc: the service allocates small objects
/// on many threads, where glibc's arena locks and heap growth showed up as
/// a fifth of the CPU in the create benchmark.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tidings",
    version,
    about = "Event-sourced notification service"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Write every event (after --after) to stdout, one JSON object per line.
    Export {
        /// Start after this cursor (from an earlier export or a command's answer).
        #[arg(long)]
        after: Option<String>,
    },
    /// Read events (as exported) from stdin into an empty store.
    Import,
}

#[derive(Subcommand)]
enum ParkedCommand {
    /// Every parked event, one JSON object a line.
    List,
    /// Try every parked event again (after deploying a fix).
    Redrive,
    /// Give up on one parked event for good; the events held behind it are re-driven.
    Skip {
        /// The parked event's cursor (from `list`).
        #[arg(long)]
        cursor: String,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Apply database migrations to DATABASE_URL and exit.
    Migrate,
    /// Export or import the event log (NDJSON), with DATABASE_URL.
    Events {
        #[command(subcommand)]
        action: EventsCommand,
    },
    /// Rebuild a projection from the whole log beside the live one, then switch
    /// reads to it (DATABASE_URL; the service keeps running).
    Replay {
        /// Which projection (`inbox`).
        #[arg(long, default_value = "inbox")]
        projection: String,
    },
    /// Poison events a projection parked: list, re-drive or skip them
    /// (DATABASE_URL; the service keeps running).
    Parked {
        /// Which projection (`inbox`).
        #[arg(long, default_value = "inbox", global = true)]
        projection: String,
        #[command(subcommand)]
        action: ParkedCommand,
    },
    /// Write the OpenAPI document (to a file, or stdout).
    ExportOpenapi {
        /// Where to write it; absent: stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed before this
/// returns, so a signal that arrives during start-up is not lost.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    let ctrl_c = tokio::signal::ctrl_c();
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
    })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let shutdown = shutdown_signal()?;
            let app = Application::build(cli.settings).await?;
            app.run_until_stopped(shutdown).await
        }
        Command::Migrate => {
            let url = cli
                .settings
                .database_url
                .context("migrate needs a database: set DATABASE_URL or --database-url")?;
            let pools = storage::postgres::connect(&url, 1).await?;
            storage::postgres::migrate(&pools).await?;
            tracing::info!(database = %storage::postgres::redact(&url), "migrations applied");
            Ok(())
        }
        Command::Events { action } => {
            let url = cli.settings.database_url.context(
                "events export/import need a database: set DATABASE_URL or --database-url",
            )?;
            match action {
                EventsCommand::Export { after } => {
                    let stdout = std::io::stdout();
                    let mut out = std::io::BufWriter::new(stdout.lock());
                    let n = tidings::transfer::export(&url, after.as_deref(), &mut out).await?;
                    tracing::info!(events = n, "exported");
                }
                EventsCommand::Import => {
                    let stdin = std::io::stdin();
                    let n = tidings::transfer::import(&url, stdin.lock()).await?;
                    tracing::info!(events = n, "imported");
                }
            }
            Ok(())
        }
        Command::Replay { projection } => {
            let tuning = cli.settings.rebuild_tuning();
            let url = cli
                .settings
                .database_url
                .context("replay needs a database: set DATABASE_URL or --database-url")?;
            let version = tidings::projections::cli::replay(&url, &projection, tuning).await?;
            tracing::info!(projection, version, "rebuilt and switched");
            eprintln!("{projection}: now at version {version}");
            Ok(())
        }
        Command::Parked { projection, action } => {
            use tidings::projections::cli::{self as operate, ParkedAction};
            let url = cli.settings.database_url.context(
                "parked needs a database: set DATABASE_URL or --database-url \
                 (with the memory store, use the HTTP endpoints)",
            )?;
            let action = match action {
                ParkedCommand::List => ParkedAction::List,
                ParkedCommand::Redrive => ParkedAction::Redrive,
                ParkedCommand::Skip { cursor } => ParkedAction::Skip { cursor },
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            operate::parked(&url, &projection, action, &mut out).await?;
            std::io::Write::flush(&mut out)?;
            Ok(())
        }
        Command::ExportOpenapi { output } => {
            let spec = tidings::openapi_json().await?;
            match output {
                Some(path) => std::fs::write(&path, spec + "\n")
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => println!("{spec}"),
            }
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.settings.log_format);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
