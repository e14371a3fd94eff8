//! Connecting to PostgreSQL.

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::storage::error_chain;

/// Migrations embedded at build time from `migrations/`, applied by sqlx's migrator.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// What bounds every connection's work: the pool size, and the limits each
/// session gets from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Connections in each pool.
    pub pool_size: u32,
    /// `statement_timeout` (zero: none).
    pub statement_timeout: Duration,
    /// `lock_timeout` (zero: none).
    pub lock_timeout: Duration,
}

impl SessionLimits {
    pub fn of(db: &crate::config::Database) -> Self {
        Self {
            pool_size: db.db_pool_size,
            statement_timeout: db.statement_timeout(),
            lock_timeout: db.lock_timeout(),
        }
    }

    /// These limits with a pool of `n`.
    pub fn with_pool_size(self, n: u32) -> Self {
        Self {
            pool_size: n,
            ..self
        }
    }

    /// The settings every session gets, less those the URL's own `options`
    /// already set (the URL wins). An abandoned transaction holds every
    /// projector back (it pins the snapshot horizon), so the server ends it.
    fn settings(&self, url_options: Option<&str>) -> Vec<(&'static str, String)> {
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let mut settings = vec![
            ("idle_in_transaction_session_timeout", "15s".to_owned()),
            ("statement_timeout", ms(self.statement_timeout)),
            ("lock_timeout", ms(self.lock_timeout)),
        ];
        settings.retain(|(name, _)| !url_options.is_some_and(|o| sets(o, name)));
        settings
    }
}

/// Whether PostgreSQL startup options (`-c name=value`, `--name=value`) set `name`.
fn sets(options: &str, name: &str) -> bool {
    let normal = |s: &str| s.replace('-', "_").to_ascii_lowercase();
    let name = normal(name);
    let mut words = options.split_whitespace().peekable();
    while let Some(word) = words.next() {
        let assignment = if word == "-c" {
            words.next().unwrap_or_default()
        } else if let Some(rest) = word.strip_prefix("-c") {
            rest
        } else if let Some(rest) = word.strip_prefix("--") {
            rest
        } else {
            continue;
        };
        if assignment
            .split_once('=')
            .is_some_and(|(key, _)| normal(key) == name)
        {
            return true;
        }
    }
    false
}

/// The startup options string: the URL's own, then ours.
fn options_string(url_options: Option<&str>, ours: &[(&str, String)]) -> String {
    let mut words: Vec<String> = url_options.into_iter().map(str::to_owned).collect();
    words.extend(ours.iter().map(|(k, v)| format!("-c {k}={v}")));
    words.join(" ")
}

/// DATABASE_URL must be a PostgreSQL URL: `postgres://` or `postgresql://`.
fn check_scheme(url: &str, shown: &str) -> anyhow::Result<()> {
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("postgres" | "postgresql") => Ok(()),
        _ => anyhow::bail!(
            "DATABASE_URL `{shown}` is not a PostgreSQL URL; use postgres://user@host:5432/database"
        ),
    }
}

/// The connections to one database.
#[derive(Clone)]
pub struct PgPools {
    /// For migrations (one connection while they run).
    pub sqlx: PgConnectOptions,
    /// For appends, the log reader, read models and checkpoints.
    pub deadpool: Pool,
    /// For connections of their own (the projector leader's lock, the
    /// maintenance lock, a rebuild's stages): the pool's settings and TLS.
    pub connector: PgConnector,
}

/// Makes connections of their own, with the pool's settings and TLS.
#[derive(Clone)]
pub struct PgConnector {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
}

impl PgConnector {
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// A pool of its own, of at most `size` connections with the same
    /// settings: background work that must not take the requests' connections.
    pub fn pool(&self, size: usize) -> anyhow::Result<Pool> {
        pool_of(&self.config, &self.tls, size)
    }

    /// A connection, and the task driving it (it ends when the connection does).
    pub async fn connect_with_task(
        &self,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
        let (client, connection) = self.config.connect(self.tls.clone()).await?;
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok((client, task))
    }

    /// A connection whose task runs until it closes.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        Ok(self.connect_with_task().await?.0)
    }
}

/// Loopback connections gain nothing from TLS but pay for it in throughput;
/// unless the URL says otherwise, connect to a local server without TLS.
fn is_local(opts: &PgConnectOptions) -> bool {
    let host = opts.get_host();
    host.starts_with('/') || matches!(host, "localhost" | "127.0.0.1" | "::1")
}

/// Shows a URL without its password, for error messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Connects the pool and proves the database answers. `limits.pool_size`
/// bounds the pool: PostgreSQL peaks at a handful of concurrent transactions
/// on a small machine, so requests queue in the app rather than in the
/// database. Every connection made from what this returns (the pool's, the
/// leader and maintenance locks', the rebuild stages', the migrations') gets
/// the same session limits.
pub async fn connect(url: &str, limits: SessionLimits) -> anyhow::Result<PgPools> {
    use anyhow::Context;
    let shown = redact(url);
    check_scheme(url, &shown)?;
    let (tokio_url, tls_request) = super::tls::split_url(url)?;
    let mut opts = PgConnectOptions::from_str(url)
        .with_context(|| format!("DATABASE_URL `{shown}` is not a PostgreSQL URL"))?;
    let mut pg_config = tokio_postgres::Config::from_str(&tokio_url)
        .with_context(|| format!("DATABASE_URL `{shown}` is not a PostgreSQL URL"))?;
    if tls_request.mode.is_none() && is_local(&opts) {
        opts = opts.ssl_mode(PgSslMode::Disable);
        pg_config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    }
    let tls = super::tls::connector(&tls_request)
        .with_context(|| format!("the TLS settings of DATABASE_URL `{shown}`"))?;
    let url_options = pg_config.get_options().map(str::to_owned);
    let settings = limits.settings(url_options.as_deref());
    pg_config.options(options_string(url_options.as_deref(), &settings));
    // Migrations may build indexes over big tables: no statement timeout
    // for them (unless the URL sets one); the lock timeout still holds.
    let sqlx = opts.options(settings.iter().map(|(k, v)| {
        (
            *k,
            if *k == "statement_timeout" {
                "0"
            } else {
                v.as_str()
            },
        )
    }));
    if pg_config.get_connect_timeout().is_none() {
        pg_config.connect_timeout(Duration::from_secs(5));
    }
    let deadpool = pool_of(&pg_config, &tls, limits.pool_size as usize)?;
    let _probe = deadpool
        .get()
        .await
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))
        .with_context(|| format!("cannot connect to PostgreSQL at `{shown}` (DATABASE_URL)"))?;
    Ok(PgPools {
        sqlx,
        deadpool,
        connector: PgConnector {
            config: pg_config,
            tls,
        },
    })
}

fn pool_of(
    config: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
    size: usize,
) -> anyhow::Result<Pool> {
    use anyhow::Context;
    let manager = Manager::from_config(
        config.clone(),
        tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .build()
        .context("cannot build the PostgreSQL connection pool")
}

/// A name for this deployment, from where its database is: the default Redis
/// channel, so that deployments sharing a Redis never mix their updates.
pub fn deployment_channel(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "tidings:{}:{port}/{}:stream-updates",
        hosts.join(","),
        config.get_dbname().unwrap_or("postgres")
    )
}

/// Proves the database holds the schema this release needs, for commands
/// that do not migrate (all but `migrate` and `serve`).
pub async fn require_schema(pools: &PgPools) -> anyhow::Result<()> {
    let (applied, needed) = migrations_applied(pools).await?;
    if applied < needed {
        anyhow::bail!(
            "the database has {applied} of the {needed} migrations this release needs; run `tidings migrate` first"
        );
    }
    Ok(())
}

/// Applies the migrations the database lacks, if it lacks any: a serving
/// role that may not create tables (see ops/app-role.sql) starts on a
/// migrated database without trying to.
pub async fn migrate_if_needed(pools: &PgPools) -> anyhow::Result<()> {
    let (applied, needed) = migrations_applied(pools).await?;
    if applied < needed {
        migrate(pools).await?;
    }
    Ok(())
}

/// (migrations the database has, migrations this release has).
async fn migrations_applied(pools: &PgPools) -> anyhow::Result<(i64, i64)> {
    use anyhow::Context;
    let client = pools
        .deadpool
        .get()
        .await
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
    let reading = "reading which migrations the database has";
    let migrated: bool = client
        .query_one("SELECT to_regclass('_sqlx_migrations') IS NOT NULL", &[])
        .await
        .context(reading)?
        .try_get(0)?;
    let applied: i64 = if migrated {
        client
            .query_one("SELECT count(*) FROM _sqlx_migrations WHERE success", &[])
            .await
            .context(reading)?
            .try_get(0)?
    } else {
        0
    };
    Ok((applied, MIGRATOR.iter().count() as i64))
}

/// Applies pending migrations; safe to run from several instances at once
/// (sqlx's migrator takes an advisory lock).
pub async fn migrate(pools: &PgPools) -> anyhow::Result<()> {
    use anyhow::Context;
    use sqlx::Connection;
    let mut connection = sqlx::PgConnection::connect_with(&pools.sqlx)
        .await
        .context("cannot connect to PostgreSQL to apply migrations")?;
    MIGRATOR
        .run(&mut connection)
        .await
        .context("applying database migrations failed")?;
    connection.close().await.ok();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{options_string, redact, sets, SessionLimits};
    use std::time::Duration;

    #[test]
    fn the_urls_own_options_win_over_the_settings() {
        let limits = SessionLimits {
            pool_size: 1,
            statement_timeout: Duration::from_secs(10),
            lock_timeout: Duration::from_millis(500),
        };
        let url = "-c statement_timeout=2s --search-path=app";
        let settings = limits.settings(Some(url));
        let names: Vec<&str> = settings.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names,
            ["idle_in_transaction_session_timeout", "lock_timeout"]
        );
        assert_eq!(
            options_string(Some(url), &settings),
            "-c statement_timeout=2s --search-path=app -c idle_in_transaction_session_timeout=15s -c lock_timeout=500ms"
        );
        assert!(sets("-clock_timeout=1s", "lock_timeout"));
        assert!(sets("--lock-timeout=1s", "lock_timeout"));
        assert!(!sets("-c lock_timeout_x=1", "lock_timeout"));
        assert_eq!(limits.settings(None).len(), 3);
    }

    #[test]
    fn passwords_are_hidden_in_urls_shown_to_people() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/tidings"),
            "postgres://app:***@db:5432/tidings"
        );
        assert_eq!(redact("postgres://app@db/t"), "postgres://app@db/t");
        assert_eq!(redact("postgres:///t"), "postgres:///t");
    }
}
