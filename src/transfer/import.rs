//! `tidings events import`: NDJSON events (as exported) into a store, in one
//! transaction, all or nothing.
//!
//! Idempotent and incremental: an event the store already holds (same
//! aggregate and sequence, same type, data and metadata) is skipped, one
//! that differs is refused, so re-running an import, or importing an
//! `export --after` on top of an earlier import, is correct. Every stream
//! must go on from where the store has it (from its first event for a new
//! stream) without gaps; a log whose streams start later (an export of a
//! range) is refused unless the operator says `--partial`.
//!
//! The store gives imported events new positions: cursors from the old
//! deployment mean nothing in the new one (see the README).

use std::collections::{HashMap, HashSet};
use std::io::BufRead;

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::Value;

use crate::api::events::UnreadableView;
use crate::storage::error_chain;
use crate::storage::postgres::{self, row_to_event, SessionLimits};

/// Lines inserted per statement.
const BATCH: usize = 1000;

/// One exported event, as read back. `cursor` is ignored: the store gives
/// new positions. `payload` is how exports before `data` carried an event.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Line {
    #[allow(dead_code)]
    #[serde(default)]
    cursor: Option<String>,
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    #[serde(rename = "type")]
    event_type: String,
    version: String,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    payload: Option<Value>,
    #[serde(default)]
    metadata: Value,
    recorded_at: String,
    #[serde(default)]
    unreadable: Option<UnreadableView>,
}

impl Line {
    /// The payload and metadata to store, as JSON text.
    fn stored(&self) -> anyhow::Result<(String, String)> {
        Ok(match (&self.unreadable, &self.data, &self.payload) {
            (Some(raw), _, _) => (raw.payload.clone(), raw.metadata.clone()),
            (None, Some(data), _) => (
                serde_json::json!({ self.event_type.clone(): data }).to_string(),
                self.metadata.to_string(),
            ),
            (None, None, Some(payload)) => (payload.to_string(), self.metadata.to_string()),
            (None, None, None) => bail!("it has neither `data` nor `payload`"),
        })
    }

    fn key(&self) -> (String, String) {
        (self.aggregate_type.clone(), self.aggregate_id.clone())
    }
}

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Imported {
    pub imported: u64,
    /// Events the store already held, as they were.
    pub skipped: u64,
}

/// Reads NDJSON events from `input` into the store at `url` (migrated), in
/// one transaction. `partial`: a stream may start after its first event.
pub async fn import(
    url: &str,
    limits: SessionLimits,
    input: impl BufRead,
    partial: bool,
) -> anyhow::Result<Imported> {
    let pools = postgres::connect(url, limits.with_pool_size(2)).await?;
    postgres::require_schema(&pools).await?;
    let mut client = pools
        .deadpool
        .get()
        .await
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
    let tx = client.transaction().await?;
    let bar = super::progress(None);
    let mut streams = Streams {
        next: HashMap::new(),
        met: HashSet::new(),
        partial,
    };
    let mut done = Imported::default();
    let mut batch: Vec<(usize, Line)> = Vec::with_capacity(BATCH);
    for (n, line) in input.lines().enumerate() {
        let line = line.context("reading the input")?;
        if line.trim().is_empty() {
            continue;
        }
        let event: Line = serde_json::from_str(&line)
            .with_context(|| format!("line {} is not an exported event", n + 1))?;
        batch.push((n + 1, event));
        if batch.len() == BATCH {
            let counted = import_batch(&tx, &mut streams, &batch).await?;
            done.imported += counted.imported;
            done.skipped += counted.skipped;
            bar.inc(batch.len() as u64);
            batch.clear();
        }
    }
    let counted = import_batch(&tx, &mut streams, &batch).await?;
    done.imported += counted.imported;
    done.skipped += counted.skipped;
    tx.commit().await.context("committing the import")?;
    bar.finish_and_clear();
    Ok(done)
}

/// Where each stream the import has met goes on.
struct Streams {
    /// (aggregate type, id) -> the next sequence it takes.
    next: HashMap<(String, String), i64>,
    /// Streams the input has had an event of, so far.
    met: HashSet<(String, String)>,
    partial: bool,
}

async fn import_batch(
    tx: &tokio_postgres::Transaction<'_>,
    streams: &mut Streams,
    batch: &[(usize, Line)],
) -> anyhow::Result<Imported> {
    if batch.is_empty() {
        return Ok(Imported::default());
    }
    let types: Vec<&str> = batch
        .iter()
        .map(|(_, e)| e.aggregate_type.as_str())
        .collect();
    let ids: Vec<&str> = batch.iter().map(|(_, e)| e.aggregate_id.as_str()).collect();
    let sequences: Vec<i64> = batch.iter().map(|(_, e)| e.sequence).collect();
    // What the store holds already of these events, and how far it has
    // each stream the batch meets for the first time.
    let held: HashMap<(String, String, i64), crate::storage::LoggedEvent> = tx
        .query(
            "SELECT transaction_id::text::bigint AS tx, global_position, aggregate_type,
                    aggregate_id, sequence, event_type, event_version, payload, metadata,
                    recorded_at
               FROM events
              WHERE (aggregate_type, aggregate_id, sequence) IN
                    (SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[]))",
            &[&types, &ids, &sequences],
        )
        .await
        .context("reading what the store already holds")?
        .iter()
        .map(|row| {
            let e = row_to_event(row)?;
            Ok((
                (e.aggregate_type.clone(), e.aggregate_id.clone(), e.sequence),
                e,
            ))
        })
        .collect::<Result<_, tokio_postgres::Error>>()?;
    let unseen: Vec<(&str, &str)> = batch
        .iter()
        .map(|(_, e)| (e.aggregate_type.as_str(), e.aggregate_id.as_str()))
        .filter(|(t, i)| {
            !streams
                .next
                .contains_key(&((*t).to_owned(), (*i).to_owned()))
        })
        .collect();
    if !unseen.is_empty() {
        let (ts, is): (Vec<&str>, Vec<&str>) = unseen.into_iter().unzip();
        let rows = tx
            .query(
                "SELECT u.t, u.i, coalesce(max(e.sequence), 0)
                   FROM UNNEST($1::text[], $2::text[]) AS u(t, i)
                   LEFT JOIN events e ON e.aggregate_type = u.t AND e.aggregate_id = u.i
                  GROUP BY u.t, u.i",
                &[&ts, &is],
            )
            .await
            .context("reading how far the store has each stream")?;
        for row in rows {
            let (t, i, last): (String, String, i64) = (row.get(0), row.get(1), row.get(2));
            streams.next.entry((t, i)).or_insert(last + 1);
        }
    }

    let mut counted = Imported::default();
    let mut new: Vec<(&Line, String, String, chrono::DateTime<chrono::Utc>)> = Vec::new();
    for (n, event) in batch {
        let at = |what: String| {
            format!(
                "line {n} (event {} of {} {}): {what}",
                event.sequence, event.aggregate_type, event.aggregate_id
            )
        };
        let (payload, metadata) = event
            .stored()
            .map_err(|e| anyhow::anyhow!(at(e.to_string())))?;
        let key = (
            event.aggregate_type.clone(),
            event.aggregate_id.clone(),
            event.sequence,
        );
        if let Some(stored) = held.get(&key) {
            streams.met.insert(event.key());
            if same_event(stored, event, &payload, &metadata) {
                counted.skipped += 1;
                continue;
            }
            bail!(at(
                "the store holds a different event at this place; nothing was imported".into()
            ));
        }
        let next = streams.next.get(&event.key()).copied().unwrap_or(1);
        let first_met = streams.met.insert(event.key());
        if event.sequence != next {
            let late_start = first_met && next == 1 && event.sequence > 1;
            if !(late_start && streams.partial) {
                bail!(at(if late_start {
                    "the stream starts here, not at its first event: this is part of a log; \
                     import it on top of the part before it, or say --partial"
                        .into()
                } else {
                    format!(
                        "the store has this stream up to event {}; events are missing in between",
                        next - 1
                    )
                }));
            }
        }
        streams.next.insert(event.key(), event.sequence + 1);
        let recorded = chrono::DateTime::parse_from_rfc3339(&event.recorded_at)
            .map_err(|_| {
                anyhow::anyhow!(at(format!(
                    "`{}` is not an RFC 3339 time",
                    event.recorded_at
                )))
            })?
            .with_timezone(&chrono::Utc);
        new.push((event, payload, metadata, recorded));
    }
    if new.is_empty() {
        return Ok(counted);
    }
    let types: Vec<&str> = new
        .iter()
        .map(|(e, ..)| e.aggregate_type.as_str())
        .collect();
    let ids: Vec<&str> = new.iter().map(|(e, ..)| e.aggregate_id.as_str()).collect();
    let sequences: Vec<i64> = new.iter().map(|(e, ..)| e.sequence).collect();
    let event_types: Vec<&str> = new.iter().map(|(e, ..)| e.event_type.as_str()).collect();
    let versions: Vec<&str> = new.iter().map(|(e, ..)| e.version.as_str()).collect();
    let payloads: Vec<&str> = new.iter().map(|(_, p, ..)| p.as_str()).collect();
    let metadata: Vec<&str> = new.iter().map(|(_, _, m, _)| m.as_str()).collect();
    let recorded: Vec<chrono::DateTime<chrono::Utc>> = new.iter().map(|(.., r)| *r).collect();
    counted.imported = tx
        .execute(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                                 payload, metadata, recorded_at)
             SELECT t, i, s, et, v, p::jsonb, m::jsonb, r
               FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[],
                           $6::text[], $7::text[], $8::timestamptz[]) AS u(t, i, s, et, v, p, m, r)",
            &[
                &types,
                &ids,
                &sequences,
                &event_types,
                &versions,
                &payloads,
                &metadata,
                &recorded,
            ],
        )
        .await
        .context("inserting imported events (is a line repeated in the input?)")?;
    Ok(counted)
}

/// Whether `stored` is the event `line` describes: same type, and the same
/// payload and metadata as values (key order and spacing aside), both
/// read through today's upcasters.
fn same_event(
    stored: &crate::storage::LoggedEvent,
    line: &Line,
    payload: &str,
    metadata: &str,
) -> bool {
    if stored.event_type != line.event_type {
        return false;
    }
    if let Some(raw) = &stored.unreadable {
        return line
            .unreadable
            .as_ref()
            .is_some_and(|l| l.payload == raw.payload && l.metadata == raw.metadata);
    }
    let (Ok(mut incoming), Ok(incoming_meta)) = (
        serde_json::from_str::<Value>(payload),
        serde_json::from_str::<Value>(metadata),
    ) else {
        return false;
    };
    let mut version = line.version.clone();
    crate::storage::upcast::upcast_logged(&line.event_type, &mut version, &mut incoming);
    incoming == stored.payload && incoming_meta == *stored.metadata
}
