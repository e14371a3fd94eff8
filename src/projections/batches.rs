//! Batches: each batch as it stands (open or flushed, its items, when it
//! flushes), one row per batch under its id, sorted per recipient by when
//! it opened: `GET /v1/users/{user}/batches` reads a recipient's range,
//! `GET /v1/batches/{id}` one row. Each change is announced on
//! `batches:{user}` with the row as REST shows it.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::store::{Fold, Rows};
use crate::domain::batch::{BatchEvent, FlushReason, BATCH_TYPE};
use crate::domain::{NotificationId, Timestamp, UserId};
use crate::storage::LoggedEvent;

pub const NAME: &str = "batches";

/// Bits of a row's sort that hold its opening second.
const TIME_BITS: u32 = 40;

/// The sort range of `recipient`'s batches: `[start, start + RANGE)`.
pub fn range_of(recipient: &UserId) -> i64 {
    let digest = Sha256::digest(recipient.as_str().as_bytes());
    let prefix = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) >> 9; // 23 bits
    i64::from(prefix) << TIME_BITS
}

pub const RANGE: i64 = 1 << TIME_BITS;

fn sort_of(recipient: &UserId, opened_at: Timestamp) -> i64 {
    range_of(recipient) | (opened_at.timestamp().clamp(0, RANGE - 1))
}

/// One batch, as REST shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub id: String,
    pub recipient: UserId,
    pub category: String,
    pub key: String,
    /// `open` or `flushed`.
    pub status: String,
    /// Items held for the digest.
    pub count: usize,
    /// When it flushes by time (its policy's window or schedule); the
    /// time it flushed, once flushed.
    pub flush_at: Timestamp,
    pub items: Vec<NotificationId>,
    /// The first item, delivered at once (`first_item_immediately`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released: Option<NotificationId>,
    pub policy_version: u64,
    pub opened_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flushed_at: Option<Timestamp>,
    /// `window`, `schedule`, `max_items` or `manual`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<FlushReason>,
    /// The digest that carried the items (none below `min_items`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_id: Option<NotificationId>,
}

/// The topic a recipient's batches are announced on.
pub fn topic_of(recipient: &UserId) -> String {
    crate::streams::updates::Topic::Batches(recipient.clone()).to_string()
}

fn render(_: &str, row: &Row) -> Option<String> {
    serde_json::to_string(row).ok()
}

pub struct Batches;

impl Fold for Batches {
    const NAME: &'static str = NAME;
    type Input = BatchEvent;
    type Row = Row;

    fn read(&self, event: &LoggedEvent) -> Result<Option<BatchEvent>, String> {
        if event.aggregate_type != BATCH_TYPE {
            return Ok(None);
        }
        event.decode().map(Some)
    }

    fn keys(&self, input: &BatchEvent, _: &LoggedEvent) -> Vec<String> {
        vec![input.batch_id().to_owned()]
    }

    fn new_keys(&self, input: &BatchEvent, _: &LoggedEvent) -> Vec<String> {
        match input {
            BatchEvent::BatchOpened { batch_id, .. } => vec![batch_id.clone()],
            _ => Vec::new(),
        }
    }

    fn fold(&self, input: BatchEvent, _: &LoggedEvent, rows: &mut Rows<Row>) -> Result<(), String> {
        let key = input.batch_id().to_owned();
        let (row, kind) = match input {
            BatchEvent::BatchOpened {
                batch_id,
                opening,
                opened_at,
                flush_at,
                ..
            } => (
                Row {
                    id: batch_id,
                    recipient: opening.recipient,
                    category: opening.category.as_str().to_owned(),
                    key: opening.key,
                    status: "open".into(),
                    count: 0,
                    flush_at,
                    items: Vec::new(),
                    released: None,
                    policy_version: opening.policy_version,
                    opened_at,
                    flushed_at: None,
                    reason: None,
                    digest_id: None,
                },
                "opened",
            ),
            BatchEvent::BatchItemAdded {
                item,
                released,
                flush_at,
                ..
            } => {
                let mut row = rows
                    .get(&key)
                    .cloned()
                    .ok_or_else(|| format!("an item of batch {key} before its opening"))?;
                if released {
                    row.released = Some(item.id);
                } else {
                    row.items.push(item.id);
                    row.count = row.items.len();
                }
                row.flush_at = flush_at;
                (row, "changed")
            }
            BatchEvent::BatchFlushed {
                reason,
                digest,
                flushed_at,
                ..
            } => {
                let mut row = rows
                    .get(&key)
                    .cloned()
                    .ok_or_else(|| format!("a flush of batch {key} before its opening"))?;
                row.status = "flushed".into();
                row.flushed_at = Some(flushed_at);
                row.flush_at = flushed_at;
                row.reason = Some(reason);
                row.digest_id = digest.map(|d| d.id);
                (row, "flushed")
            }
        };
        let topic = topic_of(&row.recipient);
        rows.put(&key, sort_of(&row.recipient, row.opened_at), row);
        rows.announce_row(topic, kind, &key, render);
        Ok(())
    }
}
