//! Batch commands, run beside the generic runner because an item's add
//! touches two streams at once: the batch records the item and the
//! notification records its batch, in one append checked against both
//! streams' versions. So a notification is in at most one batch whatever
//! fires its add how often (the notification's own stream says it is in
//! one already), and the batch's stream is loaded from its last
//! `BatchOpened` only (`EventLog::streams_since`), never its history.

use std::collections::HashMap;

use cqrs_es::persist::SerializedEvent;
use cqrs_es::Aggregate;
use tracing::warn;

use super::metadata::CommandMetadata;
use super::runner::{backoff, serialize, CommandError, Commands};
use crate::domain::batch::{
    Batch, BatchCommand, BatchError, BatchEvent, BatchItem, Opening, BATCH_TYPE,
};
use crate::domain::{Lifecycle, Notification, NotificationEvent, NotificationId, Timestamp};
use crate::storage::{Position, SharedEvent};

/// The longest `data.actor` a digest names.
const ACTOR_MAX_CHARS: usize = 200;

/// A notification to add to its batch, under its reaction's command id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldItem {
    pub notification: NotificationId,
    pub command_id: String,
}

/// A stream folded from where its state starts: the state and its last
/// sequence.
struct Folded<A> {
    state: A,
    sequence: usize,
}

impl<A: Default> Default for Folded<A> {
    fn default() -> Self {
        Self {
            state: A::default(),
            sequence: 0,
        }
    }
}

/// Folds `events` (stream after stream) by stream; a stream holding an
/// event this release cannot read is left out (and named in the log).
fn fold_streams<A: Aggregate>(events: &[SharedEvent]) -> HashMap<String, Folded<A>> {
    let mut folded: HashMap<String, Folded<A>> = HashMap::new();
    for stream in events.chunk_by(|a, b| a.aggregate_id == b.aggregate_id) {
        let mut f = Folded::<A>::default();
        let mut readable = true;
        for event in stream {
            match event.decode::<A::Event>() {
                Ok(e) => {
                    f.state.apply(e);
                    f.sequence = event.sequence.max(0) as usize;
                }
                Err(error) => {
                    warn!(aggregate = A::TYPE, id = %event.aggregate_id, sequence = event.sequence, error, "a stream holds an event this release cannot read; passed over");
                    readable = false;
                    break;
                }
            }
        }
        if readable {
            folded.insert(stream[0].aggregate_id.clone(), f);
        }
    }
    folded
}

/// The item and the batch `n` would open, from a held notification.
fn item_of(n: &Notification, at: Timestamp) -> Option<(BatchItem, Opening)> {
    let held = n.held.as_ref()?;
    let content = n.content.as_ref()?;
    let actor = content
        .data
        .get("actor")
        .and_then(|a| a.as_str())
        .filter(|a| !a.trim().is_empty())
        .map(|a| a.chars().take(ACTOR_MAX_CHARS).collect());
    Some((
        BatchItem {
            id: n.id?,
            title: content.title.clone(),
            actor,
            channels: content.channels.clone(),
            added_at: at,
        },
        Opening {
            category: content.category.clone(),
            recipient: content.recipient.clone(),
            key: held.key.clone(),
            group_key: content.group_key.clone(),
            tenant: content.tenant.clone(),
            policy: held.policy.clone(),
            policy_version: held.policy_version,
            time_zone: held.time_zone,
        },
    ))
}

impl Commands<Batch> {
    /// Adds each of `items` to its key's open batch (opening one when none
    /// is; a batch that fills up flushes in the same append and the next
    /// item opens the next). A notification no longer held (cancelled,
    /// deleted) or already in a batch is passed over. One append for all;
    /// a conflict loads and decides again. Answers how many were added.
    pub async fn add_items(
        &self,
        items: &[HeldItem],
        meta: &CommandMetadata,
    ) -> Result<u64, CommandError<BatchError>> {
        let ids: Vec<String> = items.iter().map(|i| i.notification.to_string()).collect();
        for attempt in 1..=self.max_attempts {
            let at = chrono::Utc::now();
            let held = self.store.log.streams(Notification::TYPE, &ids).await?;
            let notifications = fold_streams::<Notification>(&held);
            let mut wanted: Vec<String> = notifications
                .values()
                .filter_map(|f| f.state.held.as_ref().map(|h| h.stream.clone()))
                .collect();
            wanted.sort_unstable();
            wanted.dedup();
            let loaded = self
                .store
                .log
                .streams_since(BATCH_TYPE, &wanted, Batch::RESUMES_AT)
                .await?;
            let mut batches = fold_streams::<Batch>(&loaded);
            let mut decided: HashMap<String, Vec<(BatchEvent, String)>> = HashMap::new();
            let mut marks: Vec<SerializedEvent> = Vec::new();
            let mut added = 0;
            for (item, id) in items.iter().zip(&ids) {
                let Some(n) = notifications.get(id) else {
                    continue;
                };
                let state = &n.state;
                let waiting = state.lifecycle == Lifecycle::Batched
                    && state.held.as_ref().is_some_and(|h| h.batch_id.is_none());
                let Some((batch_item, opening)) = waiting.then(|| item_of(state, at)).flatten()
                else {
                    continue;
                };
                let stream = state
                    .held
                    .as_ref()
                    .map(|h| h.stream.clone())
                    .unwrap_or_default();
                if !wanted.contains(&stream) {
                    continue;
                }
                let batch = batches.entry(stream.clone()).or_default();
                let events = batch
                    .state
                    .decide(BatchCommand::Add {
                        item: batch_item,
                        opening: Box::new(opening),
                        at,
                    })
                    .map_err(CommandError::Rejected)?;
                let Some((batch_id, released)) = events.iter().find_map(|e| match e {
                    BatchEvent::BatchItemAdded {
                        batch_id, released, ..
                    } => Some((batch_id.clone(), *released)),
                    _ => None,
                }) else {
                    continue;
                };
                for e in &events {
                    batch.state.apply(e.clone());
                }
                let queued = decided.entry(stream).or_default();
                queued.extend(events.into_iter().map(|e| (e, item.command_id.clone())));
                let metadata = meta.to_map("AddToBatch", &item.command_id);
                marks.extend(
                    serialize::<Notification>(
                        id,
                        n.sequence,
                        vec![NotificationEvent::NotificationAddedToBatch {
                            batch_id,
                            released,
                            added_at: at,
                        }],
                        &metadata,
                    )
                    .map_err(|e| CommandError::Internal(e.to_string().into()))?,
                );
                added += 1;
            }
            if marks.is_empty() {
                return Ok(0);
            }
            let mut events = marks;
            for (stream, queued) in decided {
                let after = self.loaded_sequence(&loaded, &stream);
                for (offset, (event, command_id)) in queued.into_iter().enumerate() {
                    let metadata = meta.to_map("AddToBatch", &command_id);
                    events.extend(serialize::<Batch>(
                        &stream,
                        after + offset,
                        vec![event],
                        &metadata,
                    )?);
                }
            }
            self.check_room()?;
            let appended = events.len() as u64;
            match self.store.append(events).await {
                Ok(_) => {
                    self.signal.notify();
                    metrics::counter!("tidings_events_appended_total").increment(appended);
                    metrics::counter!("tidings_commands_total", "command" => "AddToBatch", "outcome" => "changed")
                        .increment(added);
                    return Ok(added);
                }
                Err(CommandError::Conflict { .. }) => {
                    metrics::counter!("tidings_command_conflicts_total").increment(1);
                    warn!(
                        attempt,
                        "conflict adding to batches; retrying with fresh state"
                    );
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(other) => return Err(other),
            }
        }
        Err(CommandError::Conflict {
            aggregate: BATCH_TYPE,
            attempts: self.max_attempts,
        })
    }

    /// Flushes each of `due` (stream, batch number, the flush's command id)
    /// by time, in one read and one append; a batch flushed already is
    /// passed over. Answers how many it flushed.
    pub async fn flush_many(
        &self,
        due: &[(String, u64, String)],
        meta: &CommandMetadata,
    ) -> Result<u64, CommandError<BatchError>> {
        let mut streams: Vec<String> = due.iter().map(|(s, _, _)| s.clone()).collect();
        streams.sort_unstable();
        streams.dedup();
        for attempt in 1..=self.max_attempts {
            let at = chrono::Utc::now();
            let loaded = self
                .store
                .log
                .streams_since(BATCH_TYPE, &streams, Batch::RESUMES_AT)
                .await?;
            let mut folded = fold_streams::<Batch>(&loaded);
            let mut events = Vec::new();
            let mut flushed = 0;
            for (stream, number, command_id) in due {
                let Some(batch) = folded.get_mut(stream) else {
                    warn!(%stream, number, "a flush is owed for a batch its stream does not hold");
                    continue;
                };
                let Ok(decided) = batch.state.decide(BatchCommand::Flush {
                    number: *number,
                    manual: false,
                    at,
                }) else {
                    warn!(%stream, number, "a flush is owed for a batch its stream does not hold");
                    continue;
                };
                if decided.is_empty() {
                    continue;
                }
                let metadata = meta.to_map("FlushBatch", command_id);
                events.extend(serialize::<Batch>(
                    stream,
                    batch.sequence,
                    decided.clone(),
                    &metadata,
                )?);
                batch.sequence += decided.len();
                for e in decided {
                    batch.state.apply(e);
                }
                flushed += 1;
            }
            if events.is_empty() {
                return Ok(0);
            }
            self.check_room()?;
            let appended = events.len() as u64;
            match self.store.append(events).await {
                Ok(_) => {
                    self.signal.notify();
                    metrics::counter!("tidings_events_appended_total").increment(appended);
                    metrics::counter!("tidings_commands_total", "command" => "FlushBatch", "outcome" => "changed")
                        .increment(flushed);
                    return Ok(flushed);
                }
                Err(CommandError::Conflict { .. }) => {
                    metrics::counter!("tidings_command_conflicts_total").increment(1);
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(other) => return Err(other),
            }
        }
        Err(CommandError::Conflict {
            aggregate: BATCH_TYPE,
            attempts: self.max_attempts,
        })
    }

    /// The last sequence of `stream` among `loaded` (0: not there).
    fn loaded_sequence(&self, loaded: &[SharedEvent], stream: &str) -> usize {
        loaded
            .iter()
            .filter(|e| e.aggregate_id == stream)
            .map(|e| e.sequence.max(0) as usize)
            .max()
            .unwrap_or(0)
    }

    /// Flushes batch `number` of `stream` (by time, or as a request asks:
    /// `manual`). Answers the flush (None: it had flushed already) and the
    /// position of the stream's last event.
    pub async fn flush(
        &self,
        stream: &str,
        number: u64,
        manual: bool,
        meta: &CommandMetadata,
    ) -> Result<(Option<BatchEvent>, Position), CommandError<BatchError>> {
        let command_id = meta
            .command_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let ids = [stream.to_owned()];
        for attempt in 1..=self.max_attempts {
            let at = chrono::Utc::now();
            let loaded = self
                .store
                .log
                .streams_since(BATCH_TYPE, &ids, Batch::RESUMES_AT)
                .await?;
            let folded = fold_streams::<Batch>(&loaded);
            let Some(batch) = folded.get(stream) else {
                if loaded.is_empty() {
                    return Err(CommandError::Rejected(BatchError::NotFound(
                        number.to_string(),
                    )));
                }
                return Err(CommandError::Internal(
                    format!("batch stream {stream} holds an event this release cannot read").into(),
                ));
            };
            let events = batch
                .state
                .decide(BatchCommand::Flush { number, manual, at })
                .map_err(CommandError::Rejected)?;
            let Some(flush) = events.first().cloned() else {
                let position = self.position(stream, batch.sequence as i64).await?;
                return Ok((None, position));
            };
            let metadata = meta.to_map("FlushBatch", &command_id);
            let serialized = serialize::<Batch>(stream, batch.sequence, events, &metadata)?;
            self.check_room()?;
            match self.store.append(serialized).await {
                Ok(positions) => {
                    self.signal.notify();
                    metrics::counter!("tidings_events_appended_total").increment(1);
                    metrics::counter!("tidings_commands_total", "command" => "FlushBatch", "outcome" => "changed")
                        .increment(1);
                    return Ok((Some(flush), positions.last().copied().unwrap_or_default()));
                }
                Err(CommandError::Conflict { .. }) => {
                    metrics::counter!("tidings_command_conflicts_total").increment(1);
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(other) => return Err(other),
            }
        }
        Err(CommandError::Conflict {
            aggregate: BATCH_TYPE,
            attempts: self.max_attempts,
        })
    }
}
