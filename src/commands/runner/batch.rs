//! One command over many aggregates: loaded in one read, decided one by
//! one, appended in one statement.

use std::collections::{HashMap, HashSet};

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::SerializedEvent;
use cqrs_es::Aggregate;
use tracing::warn;

use super::{backoff, serialize, CommandError, Commands, Loaded, Named};
use crate::commands::metadata::CommandMetadata;
use crate::domain::Timestamp;
use crate::storage::{Position, SharedEvent};

/// What one command over many aggregates did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchReceipt {
    /// Aggregates it changed.
    pub changed: u64,
    /// The greatest position it wrote (START when it wrote nothing).
    pub position: Position,
}

impl BatchReceipt {
    pub(super) const NOTHING: Self = Self {
        changed: 0,
        position: Position::START,
    };

    fn add(&mut self, other: Self) {
        self.changed += other.changed;
        self.position = self.position.max(other.position);
    }
}

/// What one command over many aggregates did, and each aggregate's state
/// after it: by target index, for every target it found or created (those
/// passed over because their history cannot be read are absent).
#[derive(Debug, Clone)]
pub struct BatchOutcome<A> {
    pub receipt: BatchReceipt,
    pub states: Vec<(usize, A)>,
}

impl<A> BatchOutcome<A> {
    fn nothing() -> Self {
        Self {
            receipt: BatchReceipt::NOTHING,
            states: Vec::new(),
        }
    }

    fn add(&mut self, other: Self) {
        self.receipt.add(other.receipt);
        self.states.extend(other.states);
    }
}

/// Aggregates decided together and appended in one statement.
pub const BATCH: usize = 500;

/// One aggregate a command over many goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub aggregate_id: String,
    /// The command's id on this aggregate when its sender derives it (see
    /// `CommandMetadata::command_id`); None: a new one.
    pub command_id: Option<String>,
}

impl<A> Commands<A>
where
    A: Aggregate,
    A::Command: Named,
{
    /// Runs a command on every aggregate of `targets` (`command` builds the
    /// one for `targets[i]`), in batches of `BATCH`: each batch is loaded in
    /// one read, decided aggregate by aggregate, and appended in one
    /// statement (memory: under one lock), every stream checked against the
    /// version it was decided on. A batch that conflicts is loaded and
    /// decided again (bounded); one that still conflicts runs as one command
    /// per aggregate. Aggregates that refuse the command (deleted since they
    /// were listed, say), whose history cannot be read, or that already
    /// hold the target's command id are passed over.
    pub async fn execute_many(
        &self,
        targets: &[Target],
        command: impl Fn(usize, Timestamp) -> A::Command,
        meta: &CommandMetadata,
    ) -> Result<BatchReceipt, CommandError<A::Error>> {
        Ok(self
            .in_batches(targets, command, meta, false)
            .await?
            .receipt)
    }

    /// `execute_many`, on targets that need not exist yet: a target without
    /// a stream is decided from the aggregate's default (a create with an
    /// id its sender derived). One that appeared meanwhile conflicts the
    /// batch, which is decided again and finds it. Answers each target's
    /// state after it: what it created, or what was there already (a
    /// target created by an earlier run of the same command).
    pub async fn create_many(
        &self,
        targets: &[Target],
        command: impl Fn(usize, Timestamp) -> A::Command,
        meta: &CommandMetadata,
    ) -> Result<BatchOutcome<A>, CommandError<A::Error>> {
        self.in_batches(targets, command, meta, true).await
    }

    async fn in_batches(
        &self,
        targets: &[Target],
        command: impl Fn(usize, Timestamp) -> A::Command,
        meta: &CommandMetadata,
        absent_too: bool,
    ) -> Result<BatchOutcome<A>, CommandError<A::Error>> {
        let mut outcome = BatchOutcome::nothing();
        for (n, chunk) in targets.chunks(BATCH).enumerate() {
            let offset = n * BATCH;
            let mut done = self
                .batch(chunk, &|i, at| command(offset + i, at), meta, absent_too)
                .await?;
            for (i, _) in &mut done.states {
                *i += offset;
            }
            outcome.add(done);
        }
        Ok(outcome)
    }

    async fn batch(
        &self,
        targets: &[Target],
        command: &impl Fn(usize, Timestamp) -> A::Command,
        meta: &CommandMetadata,
        absent_too: bool,
    ) -> Result<BatchOutcome<A>, CommandError<A::Error>> {
        // Each aggregate once per statement: a second target on the same
        // aggregate runs after it, on its own (`one_by_one`).
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut repeats: Vec<usize> = Vec::new();
        for (i, target) in targets.iter().enumerate() {
            if index.contains_key(target.aggregate_id.as_str()) {
                repeats.push(i);
            } else {
                index.insert(&target.aggregate_id, i);
            }
        }
        let ids: Vec<String> = index.keys().map(|id| (*id).to_owned()).collect();
        let mut receipt = BatchReceipt::NOTHING;
        let mut present: Vec<usize> = Vec::new();
        let mut states: Vec<(usize, A)> = Vec::new();
        let mut done = false;
        for attempt in 1..=self.max_attempts {
            let at = chrono::Utc::now();
            let history = self.store.log.streams(A::TYPE, &ids).await?;
            let mut events = Vec::new();
            let mut changed: HashMap<&'static str, u64> = HashMap::new();
            present.clear();
            states.clear();
            for stream in history.chunk_by(|a, b| a.aggregate_id == b.aggregate_id) {
                let Some(&i) = index.get(stream[0].aggregate_id.as_str()) else {
                    continue;
                };
                present.push(i);
                let cmd = command(i, at);
                let name = cmd.name();
                let Some((state, decided)) = self.decide_on(stream, &targets[i], cmd, meta).await?
                else {
                    continue;
                };
                states.push((i, state));
                let Some(decided) = decided else {
                    continue;
                };
                *changed.entry(name).or_default() += 1;
                events.extend(decided);
            }
            if absent_too {
                let found: HashSet<usize> = present.iter().copied().collect();
                let mut absent: Vec<usize> = index
                    .values()
                    .copied()
                    .filter(|i| !found.contains(i))
                    .collect();
                absent.sort_unstable();
                for i in absent {
                    present.push(i);
                    let cmd = command(i, at);
                    let name = cmd.name();
                    let Some((state, decided)) =
                        self.decide_on(&[], &targets[i], cmd, meta).await?
                    else {
                        continue;
                    };
                    states.push((i, state));
                    let Some(decided) = decided else {
                        continue;
                    };
                    *changed.entry(name).or_default() += 1;
                    events.extend(decided);
                }
            }
            if events.is_empty() {
                done = true;
                break;
            }
            self.check_room()?;
            let appended = events.len() as u64;
            match self.store.append(events).await {
                Ok(positions) => {
                    self.signal.notify();
                    metrics::counter!("tidings_events_appended_total").increment(appended);
                    for (name, n) in &changed {
                        metrics::counter!("tidings_commands_total", "command" => *name, "outcome" => "changed")
                            .increment(*n);
                    }
                    receipt = BatchReceipt {
                        changed: changed.values().sum(),
                        position: positions.into_iter().max().unwrap_or_default(),
                    };
                    done = true;
                    break;
                }
                Err(CommandError::Conflict { .. }) => {
                    metrics::counter!("tidings_command_conflicts_total").increment(1);
                    warn!(attempt, "a batch conflicted on append; deciding it again");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(other) => return Err(other),
            }
        }
        // Repeats of an aggregate the batch found; and when it stayed
        // contended all along, every target it found, one command each with
        // their own retries. A target without a stream is passed over.
        let found: HashSet<&str> = present
            .iter()
            .map(|&i| targets[i].aggregate_id.as_str())
            .collect();
        let mut again: Vec<usize> = repeats
            .into_iter()
            .filter(|&i| found.contains(targets[i].aggregate_id.as_str()))
            .collect();
        if !done {
            again.extend(present.iter().copied());
            again.sort_unstable();
            states.clear();
        }
        let mut outcome = BatchOutcome { receipt, states };
        outcome.add(self.one_by_one(targets, &again, command, meta).await?);
        Ok(outcome)
    }

    /// The targets at `which`, one command each, in order; refusals passed over.
    async fn one_by_one(
        &self,
        targets: &[Target],
        which: &[usize],
        command: &impl Fn(usize, Timestamp) -> A::Command,
        meta: &CommandMetadata,
    ) -> Result<BatchOutcome<A>, CommandError<A::Error>> {
        let mut outcome = BatchOutcome::nothing();
        for &i in which {
            let target = &targets[i];
            let meta = CommandMetadata {
                command_id: target.command_id.clone(),
                ..meta.clone()
            };
            match self
                .execute(&target.aggregate_id, |at| command(i, at), &meta, false)
                .await
            {
                Ok(r) => {
                    outcome.receipt.add(BatchReceipt {
                        changed: u64::from(r.changed),
                        position: r.position,
                    });
                    outcome.states.push((i, r.state));
                }
                // Refused: as it is (a create on one that exists).
                Err(CommandError::Rejected(_)) => {
                    if let Ok(current) = self.current(&target.aggregate_id, None).await {
                        outcome.states.push((i, current.state));
                    }
                }
                Err(CommandError::Unreadable(_)) => {}
                Err(other) => return Err(other),
            }
        }
        Ok(outcome)
    }

    /// What `command` records on the aggregate whose whole stream this is,
    /// and its state after: its events, ready to append after the stream's
    /// last one, or None when it records nothing, is refused or was already
    /// run (`target`'s command id). None at all when the stream cannot be
    /// read.
    #[allow(clippy::type_complexity)]
    async fn decide_on(
        &self,
        stream: &[SharedEvent],
        target: &Target,
        command: A::Command,
        meta: &CommandMetadata,
    ) -> Result<Option<(A, Option<Vec<SerializedEvent>>)>, CommandError<A::Error>> {
        // Unreadable: commands on it one by one answer unreadable-event.
        let Some(mut loaded) = Loaded::<A>::of_logged(stream, target.command_id.as_deref()) else {
            return Ok(None);
        };
        if loaded.repeat {
            return Ok(Some((loaded.aggregate, None)));
        }
        let name = command.name();
        let sink = EventSink::default();
        if let Err(refused) = loaded
            .aggregate
            .handle(command, &self.services, &sink)
            .await
        {
            tracing::debug!(aggregate = %target.aggregate_id, %refused, "refused in a batch; passed over");
            return Ok(Some((loaded.aggregate, None)));
        }
        let events = sink.collect().await;
        if events.is_empty() {
            return Ok(Some((loaded.aggregate, None)));
        }
        let command_id = target
            .command_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let metadata = meta.to_map(name, &command_id);
        let serialized = serialize::<A>(&target.aggregate_id, loaded.sequence, events, &metadata)?;
        Ok(Some((loaded.aggregate, Some(serialized))))
    }
}
