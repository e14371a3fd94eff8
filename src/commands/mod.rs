//! The command side: loads a notification's stream, lets the aggregate decide,
//! appends the events with an expected-version check, and answers with the
//! global position of the last event so the caller can read its own write.
//!
//! This drives cqrs-es's `EventStore` the way `CqrsFramework::execute_with_metadata`
//! does (load, `Aggregate::handle` into an `EventSink`, commit), but keeps what
//! that method throws away: the committed envelopes and the new state.

pub mod aggregate;
pub mod metadata;

use std::collections::HashMap;
use std::time::Duration;

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{
    EventStoreAggregateContext, PersistedEventStore, PersistenceError, SerializedEvent,
};
use cqrs_es::{Aggregate, AggregateError, EventEnvelope, EventStore};
use std::sync::Arc;
use tracing::{instrument, warn};

pub use metadata::CommandMetadata;

use crate::domain::{
    NewNotification, Notification, NotificationCommand, NotificationError, NotificationEvent,
    NotificationId, Timestamp,
};
use crate::memory_limit::{MemoryGuard, Pressure};
use crate::storage::error::chain_is_outage;
use crate::storage::memory::MemoryEventStore;
use crate::storage::postgres::{AppendError, PgAppender, PgEventLog, PgPools};
use crate::storage::repository::{LogRepository, UnreadableEvent};
use crate::storage::upcast::upcasters;
use crate::storage::{AppendSignal, Cause, EventLog, Position, StorageError};

/// Where a notification's events are loaded from and appended to.
///
/// Loading goes through cqrs-es's plain event store (its snapshot stores apply
/// events twice) over the log reader (`LogRepository`), the same on both
/// backends; appending goes through each backend's own append, which checks
/// the stream's version and reports the global positions the events landed
/// at, so a command can answer with its cursor.
pub struct NotificationStore {
    loader: PersistedEventStore<LogRepository, Notification>,
    appender: Appender,
}

enum Appender {
    Memory(MemoryEventStore),
    Postgres(PgAppender),
}

type Ctx = EventStoreAggregateContext<Notification>;
type AggErr = AggregateError<NotificationError>;

impl NotificationStore {
    fn new(log: Arc<dyn EventLog>, appender: Appender) -> Self {
        Self {
            loader: PersistedEventStore::new_event_store(LogRepository::new(log))
                .with_upcasters(upcasters()),
            appender,
        }
    }

    pub fn memory(events: MemoryEventStore) -> Self {
        Self::new(Arc::new(events.clone()), Appender::Memory(events))
    }

    pub fn postgres(pools: &PgPools) -> Self {
        Self::new(
            Arc::new(PgEventLog::new(pools.deadpool.clone())),
            Appender::Postgres(PgAppender::new(pools.deadpool.clone())),
        )
    }

    async fn load(&self, id: &str) -> Result<Ctx, AggErr> {
        self.loader.load_aggregate(id).await
    }

    async fn load_events(&self, id: &str) -> Result<Vec<EventEnvelope<Notification>>, AggErr> {
        self.loader.load_events(id).await
    }

    /// Appends the events of several streams at once, each still checked
    /// against the version it was decided on; all or nothing (a stale
    /// stream is a conflict for the whole batch).
    async fn commit_streams(
        &self,
        events: Vec<SerializedEvent>,
    ) -> Result<Vec<Position>, CommandError> {
        match &self.appender {
            Appender::Memory(store) => store.append_streams(events).map_err(|e| match e {
                PersistenceError::OptimisticLockError => CommandError::Conflict { attempts: 1 },
                other => CommandError::Internal(Box::new(other)),
            }),
            Appender::Postgres(appender) => appender.append(&events).await.map_err(|e| match e {
                AppendError::Conflict => CommandError::Conflict { attempts: 1 },
                AppendError::Storage(e) => e.into(),
            }),
        }
    }

    /// Appends `events` after the sequence `ctx` was loaded at; their positions,
    /// or `AggregateConflict` when another writer got there first.
    async fn commit(
        &self,
        events: Vec<NotificationEvent>,
        ctx: &Ctx,
        metadata: &HashMap<String, String>,
    ) -> Result<Vec<Position>, CommandError> {
        let serialized = events
            .into_iter()
            .zip(ctx.current_sequence + 1..)
            .map(|(payload, sequence)| {
                SerializedEvent::try_from(&EventEnvelope::<Notification> {
                    aggregate_id: ctx.aggregate_id.clone(),
                    sequence,
                    payload,
                    metadata: metadata.clone(),
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CommandError::Internal(Box::new(e)))?;
        match &self.appender {
            Appender::Memory(events) => events.append(serialized).map_err(|e| match e {
                PersistenceError::OptimisticLockError => CommandError::Conflict { attempts: 1 },
                other => CommandError::Internal(Box::new(other)),
            }),
            Appender::Postgres(appender) => {
                appender.append(&serialized).await.map_err(|e| match e {
                    AppendError::Conflict => CommandError::Conflict { attempts: 1 },
                    AppendError::Storage(e) => e.into(),
                })
            }
        }
    }
}

/// What a command did.
#[derive(Debug, Clone)]
pub struct Receipt {
    pub id: NotificationId,
    /// Global position of the notification's latest event after the command.
    pub position: Position,
    /// The notification's state after the command.
    pub state: Notification,
    /// False when the command found things already so and recorded nothing.
    pub changed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Rejected(#[from] NotificationError),
    #[error(
        "the notification kept changing under this command; {attempts} attempts all conflicted"
    )]
    Conflict { attempts: u32 },
    #[error("Idempotency-Key `{0}` was already used with a different request")]
    IdempotencyMismatch(String),
    /// The aggregate's history holds an event this release cannot read, so
    /// it cannot be loaded to decide anything.
    #[error(transparent)]
    Unreadable(Box<UnreadableEvent>),
    /// The memory store is at the process's memory limit.
    #[error("the memory store is at the memory limit ({used_mb} of {limit_mb} MiB) and takes no new events")]
    Full { used_mb: u64, limit_mb: u64 },
    #[error("the event store is unavailable")]
    Unavailable(#[source] Cause),
    #[error("unexpected event store failure")]
    Internal(#[source] Cause),
}

impl CommandError {
    /// The `outcome` label of the commands metric.
    fn outcome(&self) -> &'static str {
        match self {
            Self::Rejected(_) | Self::IdempotencyMismatch(_) | Self::Unreadable(_) => "refused",
            Self::Conflict { .. } => "conflict",
            Self::Full { .. } | Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "failed",
        }
    }
}

impl From<StorageError> for CommandError {
    fn from(err: StorageError) -> Self {
        match err {
            StorageError::Unavailable(cause) => Self::Unavailable(cause),
            StorageError::Backend(cause) => Self::Internal(cause),
        }
    }
}

fn storage_failure(err: AggErr) -> CommandError {
    match err {
        AggregateError::UserError(e) => CommandError::Rejected(e),
        AggregateError::AggregateConflict => CommandError::Conflict { attempts: 1 },
        AggregateError::DatabaseConnectionError(e) => CommandError::Unavailable(e),
        AggregateError::UnexpectedError(e) if chain_is_outage(&*e) => CommandError::Unavailable(e),
        AggregateError::DeserializationError(e) => match e.downcast::<UnreadableEvent>() {
            Ok(unreadable) => CommandError::Unreadable(unreadable),
            Err(e) => CommandError::Internal(e),
        },
        AggregateError::UnexpectedError(e) => CommandError::Internal(e),
    }
}

/// Why a stored event cannot be loaded into an aggregate: its payload (as
/// cqrs-es reads it, through the upcasters) or its metadata (a map of
/// strings) does not read.
fn unloadable(event: &crate::storage::LoggedEvent) -> Option<String> {
    if let Err(reason) = event.decode::<NotificationEvent>() {
        return Some(reason);
    }
    serde_json::from_value::<HashMap<String, String>>((*event.metadata).clone())
        .err()
        .map(|e| format!("the metadata is not a map of strings: {e}"))
}

/// What one command over many notifications did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchReceipt {
    /// Notifications it changed.
    pub changed: u64,
    /// The greatest position it wrote (START when it wrote nothing).
    pub position: Position,
}

/// Notifications decided together and appended in one statement.
pub const BATCH: usize = 500;

/// How a create ended.
#[derive(Debug, Clone)]
pub enum Created {
    New(Box<Receipt>),
    /// Same Idempotency-Key and body as an earlier create: that create's answer.
    Replayed {
        id: NotificationId,
        position: Position,
    },
}

pub struct CommandService {
    store: NotificationStore,
    log: Arc<dyn EventLog>,
    signal: AppendSignal,
    max_attempts: u32,
    /// Set in memory mode: at the memory limit, nothing new is appended.
    memory: Option<Arc<MemoryGuard>>,
}

impl CommandService {
    /// The memory event store behind the commands, when that is the backend:
    /// for appending events as another writer would (an older or newer
    /// release, an import), which tests of the projections need.
    pub fn memory_events(&self) -> Option<&MemoryEventStore> {
        match &self.store.appender {
            Appender::Memory(events) => Some(events),
            Appender::Postgres(_) => None,
        }
    }

    pub fn new(
        store: NotificationStore,
        log: Arc<dyn EventLog>,
        signal: AppendSignal,
        max_attempts: u32,
    ) -> Self {
        Self {
            store,
            log,
            signal,
            max_attempts: max_attempts.max(1),
            memory: None,
        }
    }

    /// Refuses to append while `memory` is at its limit (the memory store:
    /// better refuse new events than be killed with all of them).
    pub fn refusing_when_full(mut self, memory: Arc<MemoryGuard>) -> Self {
        self.memory = Some(memory);
        self
    }

    fn check_room(&self) -> Result<(), CommandError> {
        match &self.memory {
            Some(m) if m.pressure() == Pressure::Full => Err(CommandError::Full {
                used_mb: m.used() >> 20,
                limit_mb: m.limit().unwrap_or(0) >> 20,
            }),
            _ => Ok(()),
        }
    }

    /// Runs one command against notification `id`. `command` builds the command
    /// for a given time; it is rebuilt on each retry after a conflict.
    pub async fn execute(
        &self,
        id: NotificationId,
        command: impl Fn(Timestamp) -> NotificationCommand,
        meta: &CommandMetadata,
    ) -> Result<Receipt, CommandError> {
        self.run(id, command, meta, false).await
    }

    /// `fresh`: the id was just made (UUID v7), so there is nothing to load.
    #[instrument(skip_all, fields(notification = %id))]
    async fn run(
        &self,
        id: NotificationId,
        command: impl Fn(Timestamp) -> NotificationCommand,
        meta: &CommandMetadata,
        fresh: bool,
    ) -> Result<Receipt, CommandError> {
        let mut name = "unknown";
        let result = self.attempts(id, command, meta, fresh, &mut name).await;
        let outcome = match &result {
            Ok(r) if r.changed => "changed",
            Ok(_) => "unchanged",
            Err(e) => e.outcome(),
        };
        metrics::counter!("tidings_commands_total", "command" => name, "outcome" => outcome)
            .increment(1);
        result
    }

    /// `run`'s tries; sets `name` to the command's.
    async fn attempts(
        &self,
        id: NotificationId,
        command: impl Fn(Timestamp) -> NotificationCommand,
        meta: &CommandMetadata,
        fresh: bool,
        name: &mut &'static str,
    ) -> Result<Receipt, CommandError> {
        let aggregate_id = id.to_string();
        let command_id = uuid::Uuid::now_v7().to_string();
        for attempt in 1..=self.max_attempts {
            let cmd = command(chrono::Utc::now());
            *name = cmd.name();
            let metadata = meta.to_map(cmd.name(), &command_id);
            let mut ctx = if attempt == 1 && fresh {
                // A new time-ordered id has no stream yet; should it have one,
                // the append conflicts and the retry loads it.
                EventStoreAggregateContext {
                    aggregate_id: aggregate_id.clone(),
                    aggregate: Notification::default(),
                    current_sequence: 0,
                    current_snapshot: None,
                }
            } else {
                match self.store.load(&aggregate_id).await {
                    Ok(ctx) => ctx,
                    Err(e) => return Err(self.load_failure(&aggregate_id, e).await),
                }
            };
            let sink = EventSink::default();
            ctx.aggregate
                .handle(cmd, &(), &sink)
                .await
                .map_err(CommandError::Rejected)?;
            let events = sink.collect().await;
            let state = ctx.aggregate.clone();
            if events.is_empty() {
                let position = self
                    .position(&aggregate_id, ctx.current_sequence as i64)
                    .await?;
                return Ok(Receipt {
                    id,
                    position,
                    state,
                    changed: false,
                });
            }
            self.check_room()?;
            let appended = events.len() as u64;
            match self.store.commit(events, &ctx, &metadata).await {
                Ok(positions) => {
                    self.signal.notify();
                    metrics::counter!("tidings_events_appended_total").increment(appended);
                    return Ok(Receipt {
                        id,
                        position: positions.last().copied().unwrap_or_default(),
                        state,
                        changed: true,
                    });
                }
                Err(CommandError::Conflict { .. }) => {
                    metrics::counter!("tidings_command_conflicts_total").increment(1);
                    warn!(attempt, "conflict on append; retrying with fresh state");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(other) => return Err(other),
            }
        }
        Err(CommandError::Conflict {
            attempts: self.max_attempts,
        })
    }

    /// Creates a notification. With an idempotency key the id is derived from
    /// the key, so a repeat collides with the first create in the event store
    /// itself, even when both arrive at once or on different instances.
    #[instrument(skip_all, fields(notification = %id))]
    pub async fn create(
        &self,
        id: NotificationId,
        content: NewNotification,
        meta: &CommandMetadata,
    ) -> Result<Created, CommandError> {
        let result = self
            .run(
                id,
                |at| NotificationCommand::Create {
                    id,
                    content: Box::new(content.clone()),
                    at,
                },
                meta,
                meta.idempotency.is_none(),
            )
            .await;
        match (result, &meta.idempotency) {
            (Ok(receipt), _) => Ok(Created::New(Box::new(receipt))),
            (Err(CommandError::Rejected(NotificationError::AlreadyExists)), Some((key, hash))) => {
                self.replay_create(id, key, hash).await
            }
            (Err(e), _) => Err(e),
        }
    }

    async fn replay_create(
        &self,
        id: NotificationId,
        key: &str,
        hash: &str,
    ) -> Result<Created, CommandError> {
        let aggregate_id = id.to_string();
        let events = match self.store.load_events(&aggregate_id).await {
            Ok(events) => events,
            Err(e) => return Err(self.load_failure(&aggregate_id, e).await),
        };
        let Some(first) = events.first() else {
            return Err(CommandError::Internal(
                format!("notification {id} exists but has no events").into(),
            ));
        };
        let get = |k: &str| first.metadata.get(k).map(String::as_str);
        if get(metadata::IDEMPOTENCY_KEY) != Some(key) || get(metadata::REQUEST_HASH) != Some(hash)
        {
            return Err(CommandError::IdempotencyMismatch(key.to_owned()));
        }
        let command_id = first.metadata.get(metadata::COMMAND_ID);
        let last = events
            .iter()
            .take_while(|e| e.metadata.get(metadata::COMMAND_ID) == command_id)
            .last()
            .map_or(first.sequence, |e| e.sequence);
        let position = self.position(&aggregate_id, last as i64).await?;
        Ok(Created::Replayed { id, position })
    }

    async fn position(&self, aggregate_id: &str, sequence: i64) -> Result<Position, CommandError> {
        if sequence == 0 {
            return Ok(Position::START);
        }
        self.log
            .position_of(Notification::TYPE, aggregate_id, sequence)
            .await?
            .ok_or_else(|| {
                CommandError::Internal(
                    format!(
                        "event {sequence} of {aggregate_id} was committed but is not in the log"
                    )
                    .into(),
                )
            })
    }

    /// What a failed load means. A failure that is neither an outage nor a
    /// conflict is looked into: when an event of the stream cannot be read,
    /// the answer names it (the caller can do nothing about it, but an
    /// operator can), instead of an opaque internal error.
    async fn load_failure(&self, aggregate_id: &str, err: AggErr) -> CommandError {
        let err = storage_failure(err);
        if let CommandError::Unreadable(unreadable) = &err {
            warn!(%unreadable, "a command met an unreadable event");
        }
        if !matches!(err, CommandError::Internal(_)) {
            return err;
        }
        match self.first_unreadable(aggregate_id).await {
            Ok(Some(unreadable)) => {
                warn!(%unreadable, "a command met an unreadable event");
                CommandError::Unreadable(Box::new(unreadable))
            }
            Ok(None) => err,
            Err(e) => e.into(),
        }
    }

    /// The first event of `aggregate_id`'s stream that cannot be loaded.
    async fn first_unreadable(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<UnreadableEvent>, StorageError> {
        let mut after = 0;
        loop {
            let page = self
                .log
                .stream(Notification::TYPE, aggregate_id, after, 1000)
                .await?;
            let Some(last) = page.last() else {
                return Ok(None);
            };
            after = last.sequence;
            for event in &page {
                if let Some(reason) = unloadable(event) {
                    return Ok(Some(UnreadableEvent::of(event, reason)));
                }
            }
        }
    }

    /// Runs `command` on every notification of `ids`, in batches of
    /// `BATCH`: each batch is loaded in one read, decided notification by
    /// notification, and appended in one statement (memory: under one lock),
    /// every stream checked against the version it was decided on. A batch
    /// that conflicts is reloaded and decided again (bounded); one that still
    /// conflicts runs as one command per notification. Notifications the
    /// command does not apply to (deleted since they were listed, say), or
    /// whose history cannot be read, are passed over.
    pub async fn execute_many(
        &self,
        ids: &[NotificationId],
        command: impl Fn(Timestamp) -> NotificationCommand,
        meta: &CommandMetadata,
    ) -> Result<BatchReceipt, CommandError> {
        let mut receipt = BatchReceipt {
            changed: 0,
            position: Position::START,
        };
        for chunk in ids.chunks(BATCH) {
            let done = self.batch(chunk, &command, meta).await?;
            receipt.changed += done.changed;
            receipt.position = receipt.position.max(done.position);
        }
        Ok(receipt)
    }

    async fn batch(
        &self,
        ids: &[NotificationId],
        command: &impl Fn(Timestamp) -> NotificationCommand,
        meta: &CommandMetadata,
    ) -> Result<BatchReceipt, CommandError> {
        let aggregate_ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        for attempt in 1..=self.max_attempts {
            let at = chrono::Utc::now();
            let history = self.log.streams(Notification::TYPE, &aggregate_ids).await?;
            let mut events = Vec::new();
            let mut changed = 0;
            for stream in history.chunk_by(|a, b| a.aggregate_id == b.aggregate_id) {
                let Some(decided) = decide_on(stream, command(at), meta)? else {
                    continue;
                };
                changed += 1;
                events.extend(decided);
            }
            if events.is_empty() {
                return Ok(BatchReceipt {
                    changed: 0,
                    position: Position::START,
                });
            }
            self.check_room()?;
            let appended = events.len() as u64;
            match self.store.commit_streams(events).await {
                Ok(positions) => {
                    self.signal.notify();
                    metrics::counter!("tidings_events_appended_total").increment(appended);
                    metrics::counter!("tidings_commands_total", "command" => command(at).name(), "outcome" => "changed")
                        .increment(changed);
                    return Ok(BatchReceipt {
                        changed,
                        position: positions.into_iter().max().unwrap_or_default(),
                    });
                }
                Err(CommandError::Conflict { .. }) => {
                    metrics::counter!("tidings_command_conflicts_total").increment(1);
                    warn!(attempt, "a batch conflicted on append; deciding it again");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(other) => return Err(other),
            }
        }
        // Contended all along: one command each, with their own retries.
        let mut receipt = BatchReceipt {
            changed: 0,
            position: Position::START,
        };
        for id in ids {
            match self.execute(*id, command, meta).await {
                Ok(r) => {
                    receipt.changed += u64::from(r.changed);
                    receipt.position = receipt.position.max(r.position);
                }
                Err(CommandError::Rejected(_) | CommandError::Unreadable(_)) => {}
                Err(other) => return Err(other),
            }
        }
        Ok(receipt)
    }

    /// Proves the event store answers (readiness).
    pub async fn ping(&self) -> Result<(), StorageError> {
        self.log.ping().await
    }
}

/// What `command` records on the notification whose whole stream this is:
/// its events, ready to append after the stream's last one; None when it
/// records nothing, is refused, or the stream cannot be read.
fn decide_on(
    stream: &[crate::storage::SharedEvent],
    command: NotificationCommand,
    meta: &CommandMetadata,
) -> Result<Option<Vec<SerializedEvent>>, CommandError> {
    let mut state = Notification::default();
    for event in stream {
        match event.decode::<NotificationEvent>() {
            Ok(e) => state.apply(e),
            Err(_) => return Ok(None), // commands on it answer unreadable-event
        }
    }
    let (Some(last), Ok(events)) = (stream.last(), state.decide(command.clone())) else {
        return Ok(None);
    };
    if events.is_empty() {
        return Ok(None);
    }
    let metadata = meta.to_map(command.name(), &uuid::Uuid::now_v7().to_string());
    let serialized = events
        .into_iter()
        .zip(last.sequence.max(0) as usize + 1..)
        .map(|(payload, sequence)| {
            SerializedEvent::try_from(&EventEnvelope::<Notification> {
                aggregate_id: last.aggregate_id.clone(),
                sequence,
                payload,
                metadata: metadata.clone(),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CommandError::Internal(Box::new(e)))?;
    Ok(Some(serialized))
}

/// 1, 2, 4, ... ms plus up to 1 ms of jitter, so racing writers spread out.
fn backoff(attempt: u32) -> Duration {
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() % 1_000_000);
    Duration::from_millis(1 << attempt.min(6)) + Duration::from_nanos(jitter as u64)
}
