//! The `tidings` command line: serve (default), migrate, events export/import,
//! replay, parked, export-openapi. Each command takes the flags it uses and
//! no others (`tidings migrate --help` lists only the database's).

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};
use tidings::config::{Database, LogFormat, Logging, Rebuild, Settings};
use tidings::storage::postgres::{self, SessionLimits};
use tidings::{telemetry, Application};

/// mimalloc rather than glibc's malloc: the service allocates small objects
/// on many threads, where glibc's arena locks and heap growth showed up as
/// a fifth of the CPU in the create benchmark.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tidings",
    version,
    about = "Event-sourced notification service",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// `tidings` without a command serves, with serve's flags.
    #[command(flatten)]
    serve: Settings,
}

/// What a command that works on the database needs.
#[derive(Args)]
struct DbArgs {
    #[command(flatten)]
    db: Database,
    #[command(flatten)]
    log: Logging,
}

impl DbArgs {
    /// The database URL, or an error saying `what` needs one.
    fn url(&self, what: &str) -> anyhow::Result<&str> {
        self.db
            .database_url
            .as_deref()
            .with_context(|| format!("{what} needs a database: set DATABASE_URL or --database-url"))
    }

    fn limits(&self) -> SessionLimits {
        SessionLimits::of(&self.db)
    }
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Write every event (after --after) to stdout, one JSON object per line.
    Export {
        /// Start after this cursor (from an earlier export or a command's answer).
        #[arg(long)]
        after: Option<String>,
        #[command(flatten)]
        args: DbArgs,
    },
    /// Read events (as exported) from stdin into a migrated store; events it
    /// already holds are skipped, so an import can be re-run or continued.
    Import {
        /// Accept streams that start after their first event (an export of
        /// part of a log, imported into a store without the part before).
        #[arg(long)]
        partial: bool,
        #[command(flatten)]
        args: DbArgs,
    },
}

/// Which projection's parked events, in which database.
#[derive(Args)]
struct ParkedOf {
    /// Which projection (`inbox`, `schedule`).
    #[arg(long, default_value = "inbox")]
    projection: String,
    #[command(flatten)]
    args: DbArgs,
}

#[derive(Subcommand)]
enum ParkedCommand {
    /// Every parked event, one JSON object a line.
    List(ParkedOf),
    /// Try every parked event again (after deploying a fix).
    Redrive(ParkedOf),
    /// Give up on one parked event for good; the events held behind it are re-driven.
    Skip {
        /// The parked event's cursor (from `list`).
        #[arg(long)]
        cursor: String,
        #[command(flatten)]
        of: ParkedOf,
    },
}

impl ParkedCommand {
    fn of(&self) -> &ParkedOf {
        match self {
            Self::List(of) | Self::Redrive(of) | Self::Skip { of, .. } => of,
        }
    }
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make a key; its secret is printed once and stored only as a digest.
    Create {
        /// 1–64 letters, digits, `.`, `_`, `-` (`billing`).
        #[arg(long)]
        name: String,
        /// Comma-separated: `send`, `read`, `admin`.
        #[arg(long)]
        scopes: String,
        #[command(flatten)]
        args: DbArgs,
    },
    /// Every key: id, name, scopes, created, revoked, last used.
    List(DbArgs),
    /// Refuse a key from now on (every instance within a second).
    Revoke {
        /// The key's id (from `list`).
        #[arg(long)]
        id: String,
        #[command(flatten)]
        args: DbArgs,
    },
}

impl KeysCommand {
    fn args(&self) -> &DbArgs {
        match self {
            Self::Create { args, .. } | Self::List(args) | Self::Revoke { args, .. } => args,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve(Box<Settings>),
    /// Apply database migrations to DATABASE_URL and exit.
    Migrate(DbArgs),
    /// Export or import the event log (NDJSON), with DATABASE_URL.
    Events {
        #[command(subcommand)]
        action: EventsCommand,
    },
    /// Rebuild a projection from the whole log beside the live one, then switch
    /// reads to it (DATABASE_URL; the service keeps running).
    Replay {
        /// Which projection (`inbox`, `schedule`).
        #[arg(long, default_value = "inbox")]
        projection: String,
        #[command(flatten)]
        rebuild: Rebuild,
        #[command(flatten)]
        args: DbArgs,
    },
    /// Poison events a projection parked: list, re-drive or skip them
    /// (DATABASE_URL; the service keeps running).
    Parked {
        #[command(subcommand)]
        action: ParkedCommand,
    },
    /// Server API keys: create (prints the secret once), list, revoke
    /// (DATABASE_URL; without it, `create` prints a TIDINGS_API_KEYS entry).
    Keys {
        #[command(subcommand)]
        action: KeysCommand,
    },
    /// Write the OpenAPI document (to a file, or stdout).
    ExportOpenapi {
        /// Where to write it; absent: stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

impl Cli {
    fn log_format(&self) -> LogFormat {
        match &self.command {
            None => self.serve.log.log_format,
            Some(Command::Serve(s)) => s.log.log_format,
            Some(Command::Migrate(args))
            | Some(Command::Events {
                action: EventsCommand::Export { args, .. } | EventsCommand::Import { args, .. },
            })
            | Some(Command::Replay { args, .. }) => args.log.log_format,
            Some(Command::Parked { action }) => action.of().args.log.log_format,
            Some(Command::Keys { action }) => action.args().log.log_format,
            Some(Command::ExportOpenapi { .. }) => LogFormat::Text,
        }
    }
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

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let shutdown = shutdown_signal()?;
    let app = Application::build(settings).await?;
    app.run_until_stopped(shutdown).await
}

/// Writes to stdout; a reader that went away (`| head`) ends the command
/// quietly instead of failing it.
fn finish_output(result: std::io::Result<()>) -> anyhow::Result<()> {
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(settings)) => serve(*settings).await,
        Some(Command::Migrate(args)) => {
            let url = args.url("migrate")?;
            let pools = postgres::connect(url, args.limits().with_pool_size(1)).await?;
            postgres::migrate(&pools).await?;
            tracing::info!(database = %postgres::redact(url), "migrations applied");
            Ok(())
        }
        Some(Command::Events { action }) => match action {
            EventsCommand::Export { after, args } => {
                let url = args.url("events export")?;
                let stdout = std::io::stdout();
                let mut out = std::io::BufWriter::new(stdout.lock());
                match tidings::transfer::export(url, args.limits(), after.as_deref(), &mut out)
                    .await
                {
                    Ok(n) => tracing::info!(events = n, "exported"),
                    Err(e) if is_broken_pipe(&e) => return Ok(()),
                    Err(e) => return Err(e),
                }
                finish_output(out.flush())
            }
            EventsCommand::Import { partial, args } => {
                let url = args.url("events import")?;
                let stdin = std::io::stdin();
                let done =
                    tidings::transfer::import(url, args.limits(), stdin.lock(), partial).await?;
                tracing::info!(
                    imported = done.imported,
                    skipped = done.skipped,
                    "imported (events the store already held were skipped)"
                );
                Ok(())
            }
        },
        Some(Command::Replay {
            projection,
            rebuild,
            args,
        }) => {
            let url = args.url("replay")?;
            let version =
                tidings::operate::replay(url, args.limits(), &projection, rebuild.tuning()).await?;
            tracing::info!(projection, version, "rebuilt and switched");
            eprintln!("{projection}: now at version {version}");
            Ok(())
        }
        Some(Command::Parked { action }) => {
            use tidings::operate::{self, ParkedAction};
            let ParkedOf { projection, args } = action.of();
            let url = args.url("parked (with the memory store, use the HTTP endpoints)")?;
            let action = match &action {
                ParkedCommand::List(_) => ParkedAction::List,
                ParkedCommand::Redrive(_) => ParkedAction::Redrive,
                ParkedCommand::Skip { cursor, .. } => ParkedAction::Skip {
                    cursor: cursor.clone(),
                },
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            match operate::parked(url, args.limits(), projection, action, &mut out).await {
                Err(e) if is_broken_pipe(&e) => return Ok(()),
                other => other?,
            }
            finish_output(out.flush())
        }
        Some(Command::Keys { action }) => {
            use tidings::operate::keys::{self, KeysAction};
            let args = action.args();
            let (url, limits) = (args.db.database_url.clone(), args.limits());
            let action = match action {
                KeysCommand::Create { name, scopes, .. } => KeysAction::Create { name, scopes },
                KeysCommand::List(_) => KeysAction::List,
                KeysCommand::Revoke { id, .. } => KeysAction::Revoke { id },
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            keys::run(url.as_deref(), limits, action, &mut out).await?;
            finish_output(out.flush())
        }
        Some(Command::ExportOpenapi { output }) => {
            let spec = tidings::openapi_json().await?;
            match output {
                Some(path) => std::fs::write(&path, spec + "\n")
                    .with_context(|| format!("cannot write {}", path.display())),
                None => {
                    let mut out = std::io::stdout().lock();
                    finish_output(
                        out.write_all(spec.as_bytes())
                            .and_then(|()| out.write_all(b"\n"))
                            .and_then(|()| out.flush()),
                    )
                }
            }
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The error and its causes in one line, each said once.
fn report(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let said = cause.to_string();
        if text.contains(&said) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&said);
    }
    text
}

/// A bad value in an environment variable is reported under the variable's
/// name: clap names the flag, which the user may never have typed.
fn name_the_variable(err: clap::Error, args: &[OsString]) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        err.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return err;
    }
    let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) else {
        return err;
    };
    let Some(long) = arg.split_whitespace().next().map(str::to_owned) else {
        return err;
    };
    let typed = args.iter().any(|a| {
        a.to_str()
            .is_some_and(|a| a == long || a.starts_with(&format!("{long}=")))
    });
    let Some(name) = long.strip_prefix("--") else {
        return err;
    };
    let Some(env) = env_of(&Cli::command(), name) else {
        return err;
    };
    if typed || std::env::var_os(&env).is_none() {
        return err;
    }
    let value = match err.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(v)) => v.clone(),
        _ => String::new(),
    };
    let why = std::error::Error::source(&err)
        .map(|e| format!(": {e}"))
        .unwrap_or_default();
    let mut message = format!("invalid value '{value}' in the environment variable {env}{why}");
    if let Some(ContextValue::Strings(valid)) = err.get(ContextKind::ValidValue) {
        message.push_str(&format!(" (use one of: {})", valid.join(", ")));
    }
    message.push_str(&format!(" (it sets {long})\n"));
    clap::Error::raw(ErrorKind::ValueValidation, message)
}

/// The environment variable behind flag `--{long}`, anywhere in the commands.
fn env_of(command: &clap::Command, long: &str) -> Option<String> {
    command
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .or_else(|| command.get_subcommands().find_map(|c| env_of(c, long)))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(err) => name_the_variable(err, &args).exit(),
    };
    let format = cli.log_format();
    // Writing the spec starts the app in memory to describe it; its start-up
    // notices would only confuse a shell pipeline.
    let quiet = matches!(cli.command, Some(Command::ExportOpenapi { .. }));
    telemetry::init_with_default(format, if quiet { "error" } else { "info" });
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Once: as a JSON log line for log shippers, else as plain text.
            match format {
                LogFormat::Json => tracing::error!(error = %report(&err), "tidings stopped"),
                LogFormat::Text => eprintln!("error: {}", report(&err)),
            }
            ExitCode::FAILURE
        }
    }
}
