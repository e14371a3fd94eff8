//! PostgreSQL: events, the global log and read models through
//! deadpool-postgres; migrations through sqlx's migrator on a connection of
//! their own.
//!
//! The global log is read with the xid8 recipe of DESIGN.md: an event is handed
//! out only once every transaction that could commit before it has finished,
//! so a projector never skips an event that commits "late" with a lower
//! `global_position`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use sqlx::postgres::{PgConnectOptions, PgSslMode};

use tokio_postgres::types::{FromSql, Type};

use super::{error_chain, EventLog, LoggedEvent, Position, SharedEvent, StorageError, Unreadable};

/// Migrations embedded at build time from `migrations/`, applied by sqlx's migrator.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Settings every connection gets: an abandoned transaction holds every
/// projector back (it pins the snapshot horizon), so the server ends it.
const SESSION_SETTINGS: &[(&str, &str)] = &[("idle_in_transaction_session_timeout", "15s")];

/// The connections to one database.
#[derive(Clone)]
pub struct PgPools {
    /// For migrations (one connection while they run).
    pub sqlx: PgConnectOptions,
    /// For appends, the log reader, read models and checkpoints.
    pub deadpool: Pool,
    /// For connections of their own (the projector leader's lock).
    pub pg_config: tokio_postgres::Config,
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

/// Connects both pools and proves the database answers. `pool_size` bounds
/// each pool: PostgreSQL peaks at a handful of concurrent transactions on a
/// small machine, so requests queue in the app rather than in the database.
pub async fn connect(url: &str, pool_size: u32) -> anyhow::Result<PgPools> {
    use anyhow::Context;
    let shown = redact(url);
    let mut opts = PgConnectOptions::from_str(url)
        .with_context(|| format!("DATABASE_URL `{shown}` is not a PostgreSQL URL"))?;
    let explicit_ssl = url.contains("sslmode=");
    if !explicit_ssl && is_local(&opts) {
        opts = opts.ssl_mode(PgSslMode::Disable);
    }
    let sqlx = opts.options(SESSION_SETTINGS.iter().copied());

    let mut pg_config = tokio_postgres::Config::from_str(url)
        .with_context(|| format!("DATABASE_URL `{shown}` is not a PostgreSQL URL"))?;
    let settings: Vec<String> = SESSION_SETTINGS
        .iter()
        .map(|(k, v)| format!("-c {k}={v}"))
        .collect();
    pg_config.options(settings.join(" "));
    if pg_config.get_connect_timeout().is_none() {
        pg_config.connect_timeout(Duration::from_secs(5));
    }
    let manager = Manager::from_config(
        pg_config.clone(),
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let deadpool = Pool::builder(manager)
        .max_size(pool_size as usize)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .build()
        .context("cannot build the PostgreSQL connection pool")?;
    let _probe = deadpool
        .get()
        .await
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))
        .with_context(|| format!("cannot connect to PostgreSQL at `{shown}` (DATABASE_URL)"))?;
    Ok(PgPools {
        sqlx,
        deadpool,
        pg_config,
    })
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

/// Why an append did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer appended to the stream first (its primary key collided).
    #[error("the stream moved on since it was loaded")]
    Conflict,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Appends a command's events in one autocommit statement and reports their
/// global positions.
///
/// postgres-es loads aggregates here (its reads are fine), but its `persist`
/// costs BEGIN, one INSERT per event and COMMIT (four round trips for a typical
/// command), cannot report where the events landed in the global log (a fifth
/// round trip), and reports any unique violation as a conflict. This writes the
/// same rows into the same table with one round trip, and treats only the
/// stream's primary key as a conflict.
pub struct PgAppender {
    pool: Pool,
}

const APPEND: &str = "
INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[])
RETURNING sequence, transaction_id::text::bigint AS tx, global_position";

impl PgAppender {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// Appends `events` (consecutive, one stream), all or nothing; returns
    /// their positions in sequence order.
    pub async fn append(
        &self,
        events: &[cqrs_es::persist::SerializedEvent],
    ) -> Result<Vec<Position>, AppendError> {
        let types: Vec<&str> = events.iter().map(|e| e.aggregate_type.as_str()).collect();
        let ids: Vec<&str> = events.iter().map(|e| e.aggregate_id.as_str()).collect();
        let sequences: Vec<i64> = events.iter().map(|e| e.sequence as i64).collect();
        let event_types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        let versions: Vec<&str> = events.iter().map(|e| e.event_version.as_str()).collect();
        let payloads: Vec<&serde_json::Value> = events.iter().map(|e| &e.payload).collect();
        let metadata: Vec<&serde_json::Value> = events.iter().map(|e| &e.metadata).collect();
        let client = self.pool.get().await.map_err(StorageError::from)?;
        let stmt = client
            .prepare_cached(APPEND)
            .await
            .map_err(StorageError::from)?;
        let rows = client
            .query(
                &stmt,
                &[
                    &types,
                    &ids,
                    &sequences,
                    &event_types,
                    &versions,
                    &payloads,
                    &metadata,
                ],
            )
            .await
            .map_err(|e| {
                let stream_key_taken = e.as_db_error().is_some_and(|db| {
                    *db.code() == tokio_postgres::error::SqlState::UNIQUE_VIOLATION
                        && db.constraint() == Some("events_pkey")
                });
                if stream_key_taken {
                    AppendError::Conflict
                } else {
                    AppendError::Storage(e.into())
                }
            })?;
        let mut landed = rows
            .iter()
            .map(|r| {
                Ok((
                    r.try_get::<_, i64>("sequence")?,
                    Position::new(r.try_get("tx")?, r.try_get("global_position")?),
                ))
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()
            .map_err(StorageError::from)?;
        landed.sort_unstable();
        Ok(landed.into_iter().map(|(_, p)| p).collect())
    }
}

pub struct PgEventLog {
    pool: Pool,
}

impl PgEventLog {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

const READ_AFTER: &str = "
SELECT transaction_id::text::bigint AS tx, global_position, aggregate_type, aggregate_id,
       sequence, event_type, event_version, payload, metadata, recorded_at
  FROM events
 WHERE (transaction_id, global_position) > ($1::text::xid8, $2)
   AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
 ORDER BY transaction_id, global_position
 LIMIT $3";

const STREAM: &str = "
SELECT transaction_id::text::bigint AS tx, global_position, aggregate_type, aggregate_id,
       sequence, event_type, event_version, payload, metadata, recorded_at
  FROM events
 WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
 ORDER BY sequence
 LIMIT $4";

/// Served by events_created_recipient (migrations/0004) and the primary key.
const RECIPIENT_HISTORY: &str = "
SELECT transaction_id::text::bigint AS tx, global_position, aggregate_type, aggregate_id,
       sequence, event_type, event_version, payload, metadata, recorded_at
  FROM events
 WHERE aggregate_type = 'Notification'
   AND aggregate_id IN (SELECT aggregate_id FROM events
                         WHERE event_type = 'NotificationCreated'
                           AND payload -> 'NotificationCreated' ->> 'recipient' = $1)
   AND (transaction_id, global_position) <= ($2::text::xid8, $3)
   AND recorded_at <= $4
 ORDER BY transaction_id, global_position";

const POSITION_OF: &str = "
SELECT transaction_id::text::bigint AS tx, global_position
  FROM events
 WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3";

/// A JSON or JSONB column as its text, without building a value tree.
pub struct RawJson<'a>(pub &'a [u8]);

impl<'a> FromSql<'a> for RawJson<'a> {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        if *ty == Type::JSONB {
            match raw.split_first() {
                Some((1, text)) => Ok(Self(text)),
                _ => Err("unsupported JSONB encoding version".into()),
            }
        } else {
            Ok(Self(raw))
        }
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::JSON | Type::JSONB)
    }
}

/// Why stored metadata does not read as JSON, in the words a payload's
/// refusal uses.
pub fn unreadable_metadata(e: &serde_json::Error) -> String {
    super::upcast::unparsable(e).replacen("payload", "metadata", 1)
}

/// Whether `text` reads as JSON by the same rules a value tree is parsed
/// with (nesting limit, number range), without building the tree.
pub fn check_json(text: &[u8]) -> Result<(), serde_json::Error> {
    struct Checked;
    impl<'de> serde::Deserialize<'de> for Checked {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(CheckedVisitor)
        }
    }
    struct CheckedVisitor;
    impl<'de> serde::de::Visitor<'de> for CheckedVisitor {
        type Value = Checked;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
            Ok(Checked)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
            Ok(Checked)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
            Ok(Checked)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
            Ok(Checked)
        }
        fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
            Ok(Checked)
        }
        fn visit_unit<E>(self) -> Result<Checked, E> {
            Ok(Checked)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
            while seq.next_element::<Checked>()?.is_some() {}
            Ok(Checked)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
            while map
                .next_entry::<serde::de::IgnoredAny, Checked>()?
                .is_some()
            {}
            Ok(Checked)
        }
    }
    serde_json::from_slice::<Checked>(text).map(drop)
}

/// A logged event from its row, upcast to the current shape. A payload or
/// metadata that does not parse makes an unreadable event, not an error: a
/// bad row must not look like an outage.
pub fn row_to_event(row: &tokio_postgres::Row) -> Result<LoggedEvent, tokio_postgres::Error> {
    let RawJson(payload) = row.try_get("payload")?;
    let RawJson(metadata) = row.try_get("metadata")?;
    let parsed = serde_json::from_slice::<serde_json::Value>(payload)
        .map_err(|e| super::upcast::unparsable(&e))
        .and_then(|p| {
            serde_json::from_slice::<serde_json::Value>(metadata)
                .map(|m| (p, m))
                .map_err(|e| unreadable_metadata(&e))
        });
    let (payload, metadata, unreadable) = match parsed {
        Ok((payload, metadata)) => (payload, metadata, None),
        Err(error) => (
            serde_json::Value::Null,
            serde_json::Value::Null,
            Some(Arc::new(Unreadable {
                error,
                payload: String::from_utf8_lossy(payload).into_owned(),
                metadata: String::from_utf8_lossy(metadata).into_owned(),
            })),
        ),
    };
    let mut event = LoggedEvent {
        position: Position::new(row.try_get("tx")?, row.try_get("global_position")?),
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        payload,
        metadata: Arc::new(metadata),
        recorded_at: row.try_get("recorded_at")?,
        unreadable,
    };
    if event.unreadable.is_none() {
        super::upcast::upcast_logged(
            &event.event_type,
            &mut event.event_version,
            &mut event.payload,
        );
    }
    Ok(event)
}

#[async_trait]
impl EventLog for PgEventLog {
    async fn read_after(
        &self,
        after: Position,
        limit: usize,
    ) -> Result<Vec<SharedEvent>, StorageError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(READ_AFTER).await?;
        let rows = client
            .query(&stmt, &[&after.tx.to_string(), &after.seq, &(limit as i64)])
            .await?;
        rows.iter()
            .map(|r| row_to_event(r).map(Arc::new).map_err(StorageError::from))
            .collect()
    }

    async fn position_of(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
    ) -> Result<Option<Position>, StorageError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(POSITION_OF).await?;
        let row = client
            .query_opt(&stmt, &[&aggregate_type, &aggregate_id, &sequence])
            .await?;
        row.map(|r| {
            Ok(Position::new(
                r.try_get("tx")?,
                r.try_get("global_position")?,
            ))
        })
        .transpose()
        .map_err(|e: tokio_postgres::Error| StorageError::from(e))
    }

    async fn stream(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<SharedEvent>, StorageError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(STREAM).await?;
        let rows = client
            .query(
                &stmt,
                &[&aggregate_type, &aggregate_id, &after, &(limit as i64)],
            )
            .await?;
        rows.iter()
            .map(|r| row_to_event(r).map(Arc::new).map_err(StorageError::from))
            .collect()
    }

    async fn recipient_history(
        &self,
        recipient: &str,
        until: Position,
        recorded_by: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<SharedEvent>, StorageError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(RECIPIENT_HISTORY).await?;
        let rows = client
            .query(
                &stmt,
                &[&recipient, &until.tx.to_string(), &until.seq, &recorded_by],
            )
            .await?;
        rows.iter()
            .map(|r| row_to_event(r).map(Arc::new).map_err(StorageError::from))
            .collect()
    }

    async fn behind(
        &self,
        after: Position,
    ) -> Result<(u64, Option<chrono::DateTime<chrono::Utc>>), StorageError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT count(*), min(recorded_at) FROM events
                  WHERE (transaction_id, global_position) > ($1::text::xid8, $2)",
                &[&after.tx.to_string(), &after.seq],
            )
            .await?;
        Ok((row.try_get::<_, i64>(0)? as u64, row.try_get(1)?))
    }

    async fn ping(&self) -> Result<(), StorageError> {
        let client = self.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{check_json, redact};
    use proptest::prelude::*;

    fn nested(depth: usize, leaf: &str) -> String {
        format!("{}{leaf}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn checking_json_refuses_exactly_what_a_value_tree_refuses() {
        for text in [
            nested(127, "1"),
            nested(128, "1"),
            nested(129, "1"),
            nested(5000, ""),
            r#"{"a": 1e400}"#.to_owned(),
            r#"{"a": -1e308, "b": [1.5e-320, 18446744073709551615]}"#.to_owned(),
            r#"{"a": "\u0041", "b": {"c": null, "d": true}}"#.to_owned(),
        ] {
            let as_value = serde_json::from_str::<serde_json::Value>(&text).is_ok();
            assert_eq!(
                check_json(text.as_bytes()).is_ok(),
                as_value,
                "{}",
                &text[..text.len().min(40)]
            );
        }
    }

    proptest! {
        /// jsonb keeps numbers as exact decimals and writes them out without
        /// an exponent (1e308 comes back as 309 digits). Every double must
        /// read back as itself from that, or an event accepted at the edge
        /// could not be read back (serde_json's `float_roundtrip`).
        #[test]
        fn every_double_reads_back_from_its_exact_decimal(x in any::<f64>().prop_filter("finite", |x| x.is_finite())) {
            let stored = serde_json::Value::from(x).to_string();
            // Rust prints a double without an exponent, as PostgreSQL does.
            let written_back = format!("{}", stored.parse::<f64>().unwrap());
            let read: serde_json::Value = serde_json::from_str(&written_back).unwrap();
            prop_assert_eq!(read.as_f64(), Some(x));
        }

        #[test]
        fn checking_agrees_with_parsing_on_any_nesting(depth in 0usize..300, object in any::<bool>()) {
            let text = if object {
                format!("{}1{}", "{\"k\":".repeat(depth), "}".repeat(depth))
            } else {
                nested(depth, "1")
            };
            prop_assert_eq!(
                check_json(text.as_bytes()).is_ok(),
                serde_json::from_str::<serde_json::Value>(&text).is_ok()
            );
        }
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
