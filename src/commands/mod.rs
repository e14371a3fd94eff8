//! The command side of notifications: one command, a create with its
//! idempotency key, or one command over many notifications at once, on the
//! generic runner (`runner`) that every aggregate uses.

pub mod aggregate;
pub mod audience;
pub mod batches;
pub mod experiments;
pub mod latest;
pub mod metadata;
pub mod runner;
pub mod stores;
pub mod templates;

use std::sync::Arc;

use tracing::instrument;

pub use metadata::CommandMetadata;
pub use runner::{
    BatchReceipt, CommandError, Commands, Current, Decided, EventStore, Guard, Named, Target, BATCH,
};
pub use stores::EventStores;

use self::audience::AudienceLookup;
use self::runner::Appender;
use crate::domain::{
    NewNotification, Notification, NotificationCommand, NotificationError, NotificationId,
    Timestamp,
};
use crate::memory_limit::MemoryGuard;
use crate::storage::memory::MemoryEventStore;
use crate::storage::{AppendSignal, Position, StorageError};

/// Where notifications' events are loaded from and appended to.
pub type NotificationStore = EventStore<Notification>;

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
    commands: Arc<Commands<Notification>>,
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

    /// `audience`: what a create consults (preferences, category settings,
    /// the recipient's profile).
    pub fn new(
        store: NotificationStore,
        audience: Arc<dyn AudienceLookup>,
        signal: AppendSignal,
        max_attempts: u32,
    ) -> Self {
        Self {
            commands: Arc::new(Commands::new(store, audience, signal, max_attempts)),
        }
    }

    /// Refuses to append while `memory` is at its limit (the memory store:
    /// better refuse new events than be killed with all of them). Before
    /// the service is shared.
    pub fn refusing_when_full(mut self, memory: Arc<MemoryGuard>) -> Self {
        Arc::get_mut(&mut self.commands)
            .expect("the memory limit is set before the commands are shared")
            .memory = Some(memory);
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

    /// `execute`, refused as `NotFound` unless `guard` accepts the
    /// notification and who created it (see `Commands::execute_guarded`).
    pub async fn execute_guarded(
        &self,
        id: NotificationId,
        command: impl Fn(Timestamp) -> NotificationCommand,
        meta: &CommandMetadata,
        guard: &runner::Guard<'_, Notification>,
    ) -> Result<Receipt, CommandError> {
        self.run_guarded(id, command, meta, false, guard).await
    }

    /// `fresh`: the id was just made (UUID v7), so there is nothing to load.
    async fn run(
        &self,
        id: NotificationId,
        command: impl Fn(Timestamp) -> NotificationCommand,
        meta: &CommandMetadata,
        fresh: bool,
    ) -> Result<Receipt, CommandError> {
        self.run_guarded(id, command, meta, fresh, &|_, _| Ok(()))
            .await
    }

    #[instrument(skip_all, fields(notification = %id))]
    async fn run_guarded(
        &self,
        id: NotificationId,
        command: impl Fn(Timestamp) -> NotificationCommand,
        meta: &CommandMetadata,
        fresh: bool,
        guard: &runner::Guard<'_, Notification>,
    ) -> Result<Receipt, CommandError> {
        let decided = self
            .commands
            .execute_guarded(&id.to_string(), command, meta, fresh, guard)
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
                    audience: None,
                    batchable: true,
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

    /// Runs `command` on every notification of `ids` (see
    /// `Commands::execute_many`).
    pub async fn execute_many(
        &self,
        ids: &[NotificationId],
        command: impl Fn(Timestamp) -> NotificationCommand,
        meta: &CommandMetadata,
    ) -> Result<BatchReceipt, CommandError> {
        let targets: Vec<Target> = ids
            .iter()
            .map(|id| Target {
                aggregate_id: id.to_string(),
                command_id: None,
            })
            .collect();
        self.commands
            .execute_many(&targets, |_, at| command(at), meta)
            .await
    }

    /// The runner behind these commands, for those who send notification
    /// commands of their own (reactors).
    pub fn runner(&self) -> Arc<Commands<Notification>> {
        self.commands.clone()
    }

    /// Proves the event store answers (readiness).
    pub async fn ping(&self) -> Result<(), StorageError> {
        self.commands.store.log.ping().await
    }
}
