//! Commands for any cqrs-es aggregate: load its stream, let it decide (with
//! the domain services it was given), append the events with the version it
//! decided on, retry a conflict (bounded), and answer with the global
//! position of the last event, so the caller can read its own write.
//!
//! This drives cqrs-es's `EventStore` the way `CqrsFramework::execute_with_metadata`
//! does (load, `Aggregate::handle` into an `EventSink`, commit), but keeps what
//! that method throws away: the committed envelopes and the new state.
//! Commands over many aggregates at once are in `batch`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{PersistedEventStore, PersistenceError, SerializedEvent};
use cqrs_es::{Aggregate, AggregateError, EventEnvelope, EventStore as _};
use tracing::warn;

pub use self::batch::{BatchOutcome, BatchReceipt, Target, BATCH};
use super::metadata::{CommandMetadata, ACTOR, COMMAND_ID};
use crate::domain::{NotificationError, Timestamp};
use crate::memory_limit::{MemoryGuard, Pressure};
use crate::storage::error::chain_is_outage;
use crate::storage::memory::MemoryEventStore;
use crate::storage::postgres::{AppendError, PgAppender, PgEventLog, PgPools};
use crate::storage::repository::{LogRepository, UnreadableEvent};
use crate::storage::upcast::upcasters;
use crate::storage::{AppendSignal, Cause, EventLog, Position, SharedEvent, StorageError};

mod batch;

/// What every command says of itself: its name, as recorded in event
/// metadata and counted in the metrics.
pub trait Named {
    fn name(&self) -> &'static str;
}

/// Why a command did not go through. `E` is the aggregate's own refusal.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error = NotificationError> {
    #[error(transparent)]
    Rejected(E),
    #[error(
        "the {noun} kept changing under this command; {attempts} attempts all conflicted",
        noun = .aggregate.to_lowercase()
    )]
    Conflict {
        aggregate: &'static str,
        attempts: u32,
    },
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

impl<E: std::error::Error> CommandError<E> {
    /// The `outcome` label of the commands metric.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Rejected(_) | Self::IdempotencyMismatch(_) | Self::Unreadable(_) => "refused",
            Self::Conflict { .. } => "conflict",
            Self::Full { .. } | Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "failed",
        }
    }

    /// The same failure as one of another aggregate's commands; the
    /// refusal itself, which has no such form, as `Err`.
    pub fn unless_rejected<F: std::error::Error>(self) -> Result<CommandError<F>, E> {
        Ok(match self {
            Self::Rejected(e) => return Err(e),
            Self::Conflict {
                aggregate,
                attempts,
            } => CommandError::Conflict {
                aggregate,
                attempts,
            },
            Self::IdempotencyMismatch(k) => CommandError::IdempotencyMismatch(k),
            Self::Unreadable(u) => CommandError::Unreadable(u),
            Self::Full { used_mb, limit_mb } => CommandError::Full { used_mb, limit_mb },
            Self::Unavailable(c) => CommandError::Unavailable(c),
            Self::Internal(c) => CommandError::Internal(c),
        })
    }

    fn conflict<A: Aggregate>() -> Self {
        Self::Conflict {
            aggregate: A::TYPE,
            attempts: 1,
        }
    }
}

impl<E: std::error::Error> From<StorageError> for CommandError<E> {
    fn from(err: StorageError) -> Self {
        match err {
            StorageError::Unavailable(cause) => Self::Unavailable(cause),
            StorageError::Backend(cause) => Self::Internal(cause),
        }
    }
}

/// How appends reach the backend.
pub(super) enum Appender {
    Memory(MemoryEventStore),
    Postgres(PgAppender),
}

/// Where an aggregate's events are loaded from and appended to.
///
/// Loading goes through cqrs-es's plain event store (its snapshot stores apply
/// events twice) over the log reader (`LogRepository`), the same on both
/// backends; appending goes through each backend's own append, which checks
/// the stream's version and reports the global positions the events landed
/// at, so a command can answer with its cursor.
pub struct EventStore<A: Aggregate> {
    loader: PersistedEventStore<LogRepository, A>,
    pub(super) appender: Appender,
    pub(super) log: Arc<dyn EventLog>,
}

impl<A: Aggregate> EventStore<A> {
    fn new(log: Arc<dyn EventLog>, appender: Appender) -> Self {
        Self {
            loader: PersistedEventStore::new_event_store(LogRepository::new(log.clone()))
                .with_upcasters(upcasters()),
            appender,
            log,
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

    pub(super) async fn load_events(
        &self,
        id: &str,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        self.loader.load_events(id).await
    }

    /// Appends serialized events of one or several streams, each checked
    /// against the version it was decided on; all or nothing (a stale
    /// stream is a conflict for the whole batch).
    pub(super) async fn append(
        &self,
        events: Vec<SerializedEvent>,
    ) -> Result<Vec<Position>, CommandError<A::Error>> {
        match &self.appender {
            Appender::Memory(store) => store.append_streams(events).map_err(|e| match e {
                PersistenceError::OptimisticLockError => CommandError::conflict::<A>(),
                other => CommandError::Internal(Box::new(other)),
            }),
            Appender::Postgres(appender) => appender.append(&events).await.map_err(|e| match e {
                AppendError::Conflict => CommandError::conflict::<A>(),
                AppendError::Storage(e) => e.into(),
            }),
        }
    }
}

/// The events of one decision, ready to append after `after` (the stream's
/// last sequence when it was decided on).
pub(super) fn serialize<A: Aggregate>(
    aggregate_id: &str,
    after: usize,
    events: Vec<A::Event>,
    metadata: &HashMap<String, String>,
) -> Result<Vec<SerializedEvent>, CommandError<A::Error>> {
    events
        .into_iter()
        .zip(after + 1..)
        .map(|(payload, sequence)| {
            SerializedEvent::try_from(&EventEnvelope::<A> {
                aggregate_id: aggregate_id.to_owned(),
                sequence,
                payload,
                metadata: metadata.clone(),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CommandError::Internal(Box::new(e)))
}

/// What a command did to one aggregate.
#[derive(Debug, Clone)]
pub struct Decided<A> {
    /// Global position of the aggregate's latest event after the command.
    pub position: Position,
    /// The aggregate's state after the command.
    pub state: A,
    /// False when the command found things already so and recorded nothing.
    pub changed: bool,
}

/// An aggregate as its events leave it, read without a command.
#[derive(Debug, Clone)]
pub struct Current<A> {
    pub state: A,
    /// Its last event's sequence (0: no events, the default).
    pub version: u64,
    /// Its last event's global position (the start: none).
    pub position: Position,
}

/// An aggregate as its history leaves it.
struct Loaded<A> {
    aggregate: A,
    /// Its last event's sequence (0: no events).
    sequence: usize,
    /// Its history already holds the command id being run.
    repeat: bool,
    /// Who started the stream: the `actor` of its first event.
    origin: Option<String>,
}

impl<A: Aggregate> Default for Loaded<A> {
    fn default() -> Self {
        Self {
            aggregate: A::default(),
            sequence: 0,
            repeat: false,
            origin: None,
        }
    }
}

impl<A: Aggregate> Loaded<A> {
    fn of(events: Vec<EventEnvelope<A>>, command_id: Option<&str>) -> Self {
        let mut loaded = Self {
            origin: events.first().and_then(|e| e.metadata.get(ACTOR).cloned()),
            ..Self::default()
        };
        for event in events {
            loaded.repeat |= command_id.is_some()
                && event.metadata.get(COMMAND_ID).map(String::as_str) == command_id;
            loaded.sequence = event.sequence;
            loaded.aggregate.apply(event.payload);
        }
        loaded
    }

    /// From one stream as the log reads it; None when an event does not read.
    fn of_logged(stream: &[SharedEvent], command_id: Option<&str>) -> Option<Self> {
        let mut loaded = Self::default();
        for event in stream {
            loaded.repeat |= command_id.is_some()
                && event.metadata.get(COMMAND_ID).and_then(|v| v.as_str()) == command_id;
            loaded.sequence = event.sequence.max(0) as usize;
            loaded.aggregate.apply(event.decode::<A::Event>().ok()?);
        }
        Some(loaded)
    }
}

/// Whether a command may touch an aggregate: given its state and who started
/// its stream, Ok or the refusal.
pub type Guard<'a, A> = dyn Fn(&A, Option<&str>) -> Result<(), <A as Aggregate>::Error> + Sync + 'a;

/// Runs commands against aggregates of type `A`.
pub struct Commands<A: Aggregate> {
    pub(super) store: EventStore<A>,
    services: A::Services,
    pub(super) signal: AppendSignal,
    pub(super) max_attempts: u32,
    /// Set in memory mode: at the memory limit, nothing new is appended.
    pub(super) memory: Option<Arc<MemoryGuard>>,
}

impl<A> Commands<A>
where
    A: Aggregate,
    A::Command: Named,
{
    /// `services`: what the aggregate's `handle` may consult (preferences,
    /// templates, ...).
    pub fn new(
        store: EventStore<A>,
        services: A::Services,
        signal: AppendSignal,
        max_attempts: u32,
    ) -> Self {
        Self {
            store,
            services,
            signal,
            max_attempts: max_attempts.max(1),
            memory: None,
        }
    }

    /// Refuses to append while `memory` is at its limit (the memory
    /// store). Before the commands are shared.
    pub fn refusing_when_full(mut self, memory: Arc<MemoryGuard>) -> Self {
        self.memory = Some(memory);
        self
    }

    pub(super) fn check_room(&self) -> Result<(), CommandError<A::Error>> {
        match &self.memory {
            Some(m) if m.pressure() == Pressure::Full => Err(CommandError::Full {
                used_mb: m.used() >> 20,
                limit_mb: m.limit().unwrap_or(0) >> 20,
            }),
            _ => Ok(()),
        }
    }

    /// Runs one command against aggregate `aggregate_id`. `command` builds
    /// the command for a given time; it is built again for each try after a
    /// conflict. `fresh`: the id was just made (UUID v7), so there is
    /// nothing to load on the first try.
    pub async fn execute(
        &self,
        aggregate_id: &str,
        command: impl Fn(Timestamp) -> A::Command,
        meta: &CommandMetadata,
        fresh: bool,
    ) -> Result<Decided<A>, CommandError<A::Error>> {
        self.execute_guarded(aggregate_id, command, meta, fresh, &|_, _| Ok(()))
            .await
    }

    /// `execute`, refused with `guard`'s error unless `guard` accepts the
    /// aggregate as loaded and who started its stream (the `actor` of its
    /// first event): whether the one asking may touch it. Checked on every
    /// try, against the state the command is decided on.
    pub async fn execute_guarded(
        &self,
        aggregate_id: &str,
        command: impl Fn(Timestamp) -> A::Command,
        meta: &CommandMetadata,
        fresh: bool,
        guard: &Guard<'_, A>,
    ) -> Result<Decided<A>, CommandError<A::Error>> {
        let mut name = "unknown";
        let result = self
            .attempts(aggregate_id, command, meta, fresh, guard, &mut name)
            .await;
        let outcome = match &result {
            Ok(r) if r.changed => "changed",
            Ok(_) => "unchanged",
            Err(e) => e.outcome(),
        };
        metrics::counter!("tidings_commands_total", "command" => name, "outcome" => outcome)
            .increment(1);
        result
    }

    /// `execute`'s tries; sets `name` to the command's.
    async fn attempts(
        &self,
        aggregate_id: &str,
        command: impl Fn(Timestamp) -> A::Command,
        meta: &CommandMetadata,
        fresh: bool,
        guard: &Guard<'_, A>,
        name: &mut &'static str,
    ) -> Result<Decided<A>, CommandError<A::Error>> {
        let command_id = meta
            .command_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        for attempt in 1..=self.max_attempts {
            let cmd = command(chrono::Utc::now());
            *name = cmd.name();
            let metadata = meta.to_map(cmd.name(), &command_id);
            // A new time-ordered id has no stream yet; should it have one,
            // the append conflicts and the retry loads it.
            let mut ctx = if attempt == 1 && fresh {
                Loaded::default()
            } else {
                match self.store.load_events(aggregate_id).await {
                    Ok(events) => Loaded::of(events, meta.command_id.as_deref()),
                    Err(e) => return Err(self.load_failure(aggregate_id, e).await),
                }
            };
            guard(&ctx.aggregate, ctx.origin.as_deref()).map_err(CommandError::Rejected)?;
            if ctx.repeat {
                let position = self.position(aggregate_id, ctx.sequence as i64).await?;
                return Ok(Decided {
                    position,
                    state: ctx.aggregate,
                    changed: false,
                });
            }
            let sink = EventSink::default();
            ctx.aggregate
                .handle(cmd, &self.services, &sink)
                .await
                .map_err(CommandError::Rejected)?;
            let events = sink.collect().await;
            if events.is_empty() {
                let position = self.position(aggregate_id, ctx.sequence as i64).await?;
                return Ok(Decided {
                    position,
                    state: ctx.aggregate,
                    changed: false,
                });
            }
            self.check_room()?;
            let appended = events.len() as u64;
            let serialized = serialize::<A>(aggregate_id, ctx.sequence, events, &metadata)?;
            match self.store.append(serialized).await {
                Ok(positions) => {
                    self.signal.notify();
                    metrics::counter!("tidings_events_appended_total").increment(appended);
                    return Ok(Decided {
                        position: positions.last().copied().unwrap_or_default(),
                        state: ctx.aggregate,
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
            aggregate: A::TYPE,
            attempts: self.max_attempts,
        })
    }

    /// Aggregate `aggregate_id` as its events leave it, without a command:
    /// all of them, or (`until`) those at or before a position and recorded
    /// no later than a time (time travel). A stream that does not exist is
    /// the aggregate's default, at version 0.
    pub async fn current(
        &self,
        aggregate_id: &str,
        until: Option<(Position, Timestamp)>,
    ) -> Result<Current<A>, CommandError<A::Error>> {
        const PAGE: usize = 1000;
        let mut current = Current {
            state: A::default(),
            version: 0,
            position: Position::START,
        };
        loop {
            let page = self
                .store
                .log
                .stream(A::TYPE, aggregate_id, current.version as i64, PAGE)
                .await?;
            for event in &page {
                if let Some((position, recorded_by)) = until {
                    if event.position > position || event.recorded_at > recorded_by {
                        return Ok(current);
                    }
                }
                let payload = event.decode::<A::Event>().map_err(|reason| {
                    CommandError::Unreadable(Box::new(UnreadableEvent::of(event, reason)))
                })?;
                current.state.apply(payload);
                current.version = event.sequence.max(0) as u64;
                current.position = event.position;
            }
            if page.len() < PAGE {
                return Ok(current);
            }
        }
    }

    /// The global position of event `sequence` of `aggregate_id`.
    pub(super) async fn position(
        &self,
        aggregate_id: &str,
        sequence: i64,
    ) -> Result<Position, CommandError<A::Error>> {
        if sequence == 0 {
            return Ok(Position::START);
        }
        self.store
            .log
            .position_of(A::TYPE, aggregate_id, sequence)
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
    pub(super) async fn load_failure(
        &self,
        aggregate_id: &str,
        err: AggregateError<A::Error>,
    ) -> CommandError<A::Error> {
        let err = storage_failure::<A>(err);
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
                .store
                .log
                .stream(A::TYPE, aggregate_id, after, 1000)
                .await?;
            let Some(last) = page.last() else {
                return Ok(None);
            };
            after = last.sequence;
            for event in &page {
                if let Some(reason) = unloadable::<A>(event) {
                    return Ok(Some(UnreadableEvent::of(event, reason)));
                }
            }
        }
    }
}

fn storage_failure<A: Aggregate>(err: AggregateError<A::Error>) -> CommandError<A::Error> {
    match err {
        AggregateError::UserError(e) => CommandError::Rejected(e),
        AggregateError::AggregateConflict => CommandError::conflict::<A>(),
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
fn unloadable<A: Aggregate>(event: &crate::storage::LoggedEvent) -> Option<String> {
    if let Err(reason) = event.decode::<A::Event>() {
        return Some(reason);
    }
    serde_json::from_value::<HashMap<String, String>>((*event.metadata).clone())
        .err()
        .map(|e| format!("the metadata is not a map of strings: {e}"))
}

/// 1, 2, 4, ... ms plus up to 1 ms of jitter, so racing writers spread out.
pub(super) fn backoff(attempt: u32) -> Duration {
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() % 1_000_000);
    Duration::from_millis(1 << attempt.min(6)) + Duration::from_nanos(jitter as u64)
}

#[cfg(test)]
mod tests {
    use cqrs_es::DomainEvent;
    use serde::{Deserialize, Serialize};

    use super::*;

    /// A second aggregate, to prove the runner is not the notification's:
    /// a counter that a domain service caps.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    struct Tally {
        count: u32,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum TallyEvent {
        Counted { to: u32 },
    }

    impl DomainEvent for TallyEvent {
        fn event_type(&self) -> String {
            "Counted".into()
        }
        fn event_version(&self) -> String {
            "1.0".into()
        }
    }

    enum TallyCommand {
        Count,
        Nothing,
    }

    impl Named for TallyCommand {
        fn name(&self) -> &'static str {
            match self {
                Self::Count => "Count",
                Self::Nothing => "Nothing",
            }
        }
    }

    #[derive(Debug, PartialEq, thiserror::Error)]
    #[error("the tally is at its cap of {0}")]
    struct AtCap(u32);

    /// The domain service: how far a tally may go.
    struct Cap(u32);

    impl Aggregate for Tally {
        const TYPE: &'static str = "Tally";
        type Command = TallyCommand;
        type Event = TallyEvent;
        type Error = AtCap;
        type Services = Cap;

        async fn handle(
            &mut self,
            command: TallyCommand,
            cap: &Cap,
            sink: &EventSink<Self>,
        ) -> Result<(), AtCap> {
            match command {
                TallyCommand::Nothing => Ok(()),
                TallyCommand::Count if self.count >= cap.0 => Err(AtCap(cap.0)),
                TallyCommand::Count => {
                    let event = TallyEvent::Counted { to: self.count + 1 };
                    sink.write(event, self).await;
                    Ok(())
                }
            }
        }

        fn apply(&mut self, event: TallyEvent) {
            let TallyEvent::Counted { to } = event;
            self.count = to;
        }
    }

    fn tallies(cap: u32) -> Arc<Commands<Tally>> {
        let signal = AppendSignal::default();
        let events = MemoryEventStore::new(signal.clone());
        Arc::new(Commands::new(
            EventStore::memory(events),
            Cap(cap),
            signal,
            50,
        ))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn any_aggregate_runs_with_its_services_and_racing_commands_all_count() {
        let commands = tallies(40);
        let meta = CommandMetadata::default();
        let racers: Vec<_> = (0..30)
            .map(|_| {
                let commands = commands.clone();
                let meta = meta.clone();
                tokio::spawn(async move {
                    commands
                        .execute("t-1", |_| TallyCommand::Count, &meta, false)
                        .await
                })
            })
            .collect();
        let mut positions = Vec::new();
        for r in racers {
            let decided = r
                .await
                .unwrap()
                .expect("every racer counts, retrying conflicts");
            assert!(decided.changed);
            positions.push(decided.position);
        }
        positions.sort();
        positions.dedup();
        assert_eq!(positions.len(), 30, "each at a position of its own");

        let unchanged = commands
            .execute("t-1", |_| TallyCommand::Nothing, &meta, false)
            .await
            .unwrap();
        assert_eq!(unchanged.state, Tally { count: 30 }, "no lost update");
        assert!(!unchanged.changed);
        assert_eq!(unchanged.position, *positions.last().unwrap());

        for _ in 30..40 {
            commands
                .execute("t-1", |_| TallyCommand::Count, &meta, false)
                .await
                .unwrap();
        }
        let refused = commands
            .execute("t-1", |_| TallyCommand::Count, &meta, false)
            .await
            .unwrap_err();
        assert!(
            matches!(refused, CommandError::Rejected(AtCap(40))),
            "the service decides: {refused}"
        );
    }

    /// A reaction's command: the same command id on every try.
    fn reaction(id: &str) -> CommandMetadata {
        CommandMetadata {
            command_id: Some(id.to_owned()),
            ..CommandMetadata::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_command_id_sent_by_racing_senders_counts_once() {
        let commands = tallies(1000);
        let racers: Vec<_> = (0..30)
            .map(|n| {
                let commands = commands.clone();
                tokio::spawn(async move {
                    let meta = reaction("tick/1");
                    if n % 2 == 0 {
                        let one = commands
                            .execute("t-1", |_| TallyCommand::Count, &meta, false)
                            .await?;
                        Ok(u64::from(one.changed))
                    } else {
                        let target = Target {
                            aggregate_id: "t-1".into(),
                            command_id: meta.command_id.clone(),
                        };
                        let many = commands
                            .execute_many(&[target], |_, _| TallyCommand::Count, &meta)
                            .await?;
                        Ok::<_, CommandError<AtCap>>(many.changed)
                    }
                })
            })
            .collect();
        let mut changed = 0;
        for r in racers {
            changed += r.await.unwrap().expect("a repeat is not an error");
        }
        assert_eq!(
            changed, 1,
            "one racer recorded it; the others found it done"
        );
        let after = commands
            .execute(
                "t-1",
                |_| TallyCommand::Nothing,
                &CommandMetadata::default(),
                false,
            )
            .await
            .unwrap();
        assert_eq!(after.state, Tally { count: 1 });

        // Another id is another command.
        let next = commands
            .execute("t-1", |_| TallyCommand::Count, &reaction("tick/2"), false)
            .await
            .unwrap();
        assert!(next.changed);
        assert_eq!(next.state, Tally { count: 2 });
        let repeat = commands
            .execute("t-1", |_| TallyCommand::Count, &reaction("tick/1"), false)
            .await
            .unwrap();
        assert!(!repeat.changed, "an old id is still done");
        assert_eq!(repeat.state, Tally { count: 2 });
        assert_eq!(repeat.position, next.position);
    }

    #[tokio::test]
    async fn a_batch_runs_each_target_once_and_passes_over_refusals() {
        let commands = tallies(3);
        let none = CommandMetadata::default();
        let count = |id: &'static str, meta: CommandMetadata| {
            let commands = commands.clone();
            async move {
                commands
                    .execute(id, |_| TallyCommand::Count, &meta, false)
                    .await
                    .unwrap()
            }
        };
        // t-0 is at its cap; t-1 already ran its command id; t-2 did not.
        for _ in 0..3 {
            count("t-0", none.clone()).await;
        }
        count("t-1", reaction("tick/1")).await;
        count("t-2", none.clone()).await;
        let targets: Vec<Target> = (0..4)
            .map(|i| Target {
                aggregate_id: format!("t-{i}"),
                command_id: Some(format!("tick/{i}")),
            })
            .collect();
        let receipt = commands
            .execute_many(&targets, |_, _| TallyCommand::Count, &none)
            .await
            .unwrap();
        assert_eq!(
            receipt.changed, 1,
            "only t-2 (t-3 has no stream): {receipt:?}"
        );
        let again = commands
            .execute_many(&targets, |_, _| TallyCommand::Count, &none)
            .await
            .unwrap();
        assert_eq!(again, BatchReceipt::NOTHING, "each target's id is done");
        let t2 = count("t-2", reaction("tick/2")).await;
        assert_eq!(t2.state, Tally { count: 2 }, "the batch counted t-2 once");
        assert!(!t2.changed);
    }

    #[tokio::test]
    async fn a_batch_runs_two_reactions_on_one_aggregate_and_creates_no_stream() {
        let commands = tallies(10);
        let none = CommandMetadata::default();
        commands
            .execute("t-1", |_| TallyCommand::Count, &none, false)
            .await
            .unwrap();
        let target = |id: &str, reaction: &str| Target {
            aggregate_id: id.into(),
            command_id: Some(reaction.into()),
        };
        let targets = [
            target("t-1", "tick/a"),
            target("t-9", "tick/a"),
            target("t-1", "tick/b"),
            target("t-1", "tick/a"),
        ];
        let receipt = commands
            .execute_many(&targets, |_, _| TallyCommand::Count, &none)
            .await
            .unwrap();
        assert_eq!(receipt.changed, 2, "tick/a and tick/b on t-1: {receipt:?}");
        let t1 = commands
            .execute("t-1", |_| TallyCommand::Nothing, &none, false)
            .await
            .unwrap();
        assert_eq!(t1.state, Tally { count: 3 });
        let t9 = commands
            .execute("t-9", |_| TallyCommand::Nothing, &none, false)
            .await
            .unwrap();
        assert_eq!(t9.position, Position::START, "no stream was made for t-9");
    }

    #[tokio::test]
    async fn a_create_many_run_again_answers_what_its_first_run_created() {
        let commands = tallies(1);
        let none = CommandMetadata::default();
        let target = |id: &str| Target {
            aggregate_id: id.into(),
            command_id: None,
        };
        let first = commands
            .create_many(
                &[target("a"), target("b")],
                |_, _| TallyCommand::Count,
                &none,
            )
            .await
            .unwrap();
        assert_eq!(first.receipt.changed, 2);
        let again = commands
            .create_many(
                &[target("a"), target("b"), target("c")],
                |_, _| TallyCommand::Count,
                &none,
            )
            .await
            .unwrap();
        assert_eq!(again.receipt.changed, 1, "only c is new: {again:?}");
        let mut states = again.states;
        states.sort_by_key(|(i, _)| *i);
        assert_eq!(
            states,
            [0, 1, 2].map(|i| (i, Tally { count: 1 })),
            "a and b refused (at their cap) answer as they are"
        );
    }
}
