//! The command side of notifications: one command, a create with its
//! idempotency key, or one command over many notifications at once, on the
//! generic runner (`runner`) that every aggregate uses.

pub mod aggregate;
pub mod metadata;
pub mod runner;

use std::sync::Arc;

use cqrs_es::persist::SerializedEvent;
use cqrs_es::Aggregate;
use tracing::{instrument, warn};

pub use metadata::CommandMetadata;
pub use runner::{CommandError, Commands, Decided, EventStore, Named};

use self::runner::{backoff, serialize, Appender};
use crate::domain::{
    NewNotification, Notification, NotificationCommand, NotificationError, NotificationEvent,
    NotificationId, Timestamp,
};
use crate::memory_limit::MemoryGuard;
use crate::storage::memory::MemoryEventStore;
use crate::storage::{AppendSignal, Position, StorageError};

/// Where notifications' events are loaded from and appended to.
pub type NotificationStore = EventStore<Notification>;

impl Named for NotificationCommand {
    fn name(&self) -> &'static str {
        NotificationCommand::name(self)
    }
}

impl From<NotificationError> for CommandError {
    fn from(err: NotificationError) -> Self {
        Self::Rejected(err)
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
    commands: Commands<Notification>,
}

impl CommandService {
    /// The memory event store behind the commands, when that is the backend:
    /// for appending events as another writer would (an older or newer
    /// release, an import), which tests of the projections need.
    pub fn memory_events(&self) -> Option<&MemoryEventStore> {
        match &self.commands.store.appender {
            Appender::Memory(events) => Some(events),
            Appender::Postgres(_) => None,
        }
    }

    pub fn new(store: NotificationStore, signal: AppendSignal, max_attempts: u32) -> Self {
        Self {
            commands: Commands::new(store, (), signal, max_attempts),
        }
    }

    /// Refuses to append while `memory` is at its limit (the memory store:
    /// better refuse new events than be killed with all of them).
    pub fn refusing_when_full(mut self, memory: Arc<MemoryGuard>) -> Self {
        self.commands.memory = Some(memory);
        self
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
        let decided = self
            .commands
            .execute(&id.to_string(), command, meta, fresh)
            .await?;
        Ok(Receipt {
            id,
            position: decided.position,
            state: decided.state,
            changed: decided.changed,
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
        let events = match self.commands.store.load_events(&aggregate_id).await {
            Ok(events) => events,
            Err(e) => return Err(self.commands.load_failure(&aggregate_id, e).await),
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
        let position = self.commands.position(&aggregate_id, last as i64).await?;
        Ok(Created::Replayed { id, position })
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
        for attempt in 1..=self.commands.max_attempts {
            let at = chrono::Utc::now();
            let history = self
                .commands
                .store
                .log
                .streams(Notification::TYPE, &aggregate_ids)
                .await?;
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
            self.commands.check_room()?;
            let appended = events.len() as u64;
            match self.commands.store.append(events).await {
                Ok(positions) => {
                    self.commands.signal.notify();
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
        self.commands.store.log.ping().await
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
    let serialized = serialize::<Notification>(
        &last.aggregate_id,
        last.sequence.max(0) as usize,
        events,
        &metadata,
    )?;
    Ok(Some(serialized))
}
