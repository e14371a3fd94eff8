//! Reactors turn what the log says into commands, at once or at a time the
//! log recorded.
//!
//! A reactor is a fold (`Reactor`) whose rows are the commands it owes
//! (`Pending`, under a reaction id it derives from the events). It runs on the
//! projection engine like any read model, as `Outbox`: one leader across
//! instances, its rows committed with its checkpoint, a poison event parked,
//! a rebuild blue/green. The dispatcher (`dispatch`) runs the commands that
//! are due, on the leader only.
//!
//! Each command carries its reaction's id as its command id
//! (`command_id`), and an aggregate records a command id once
//! (`commands::runner`): firing again, after a timeout, a failover or on two
//! instances at once, changes nothing. The events that carry the id settle
//! the reaction in the fold, whichever instance fired it. So delivery is at
//! least once and the effect exactly once, and a rebuild replays without side
//! effects: what was fired is settled by the log itself, and only what is
//! still owed is pending again.
//!
//! A reactor supplies its name, how it reads an event, what it owes or no
//! longer owes for it (`react`), and the command each reaction runs; timers
//! are reactions due later.

pub mod batcher;
pub mod digests;
pub mod dispatch;
pub mod fanout;
pub mod scheduled;

use std::fmt::Debug;

use cqrs_es::Aggregate;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::commands::metadata::COMMAND_ID;
use crate::commands::{CommandMetadata, Commands, Named, Target};
use crate::domain::Timestamp;
use crate::projections::store::{Fold, Keyed, Rows};
use crate::storage::{error_chain, LoggedEvent};

/// Commands owed for events: a reactor's rules.
pub trait Reactor: Send + Sync + 'static {
    /// Its name: in the registry, the checkpoint, the command ids it sends.
    const NAME: &'static str;
    /// An event as this reactor reads it.
    type Input: Send;
    /// What a pending reaction keeps to build its command from.
    type Order: Serialize + DeserializeOwned + Clone + PartialEq + Debug + Send + Sync + 'static;

    /// Reads `event`: None when it does not concern this reactor, an error
    /// (the reason) when it does but cannot be read (retried, then parked).
    fn read(&self, event: &LoggedEvent) -> Result<Option<Self::Input>, String>;

    /// The reaction ids reacting to `input` may owe or settle.
    fn keys(&self, input: &Self::Input, event: &LoggedEvent) -> Vec<String>;

    /// Those of `keys` nothing can be pending under before this event.
    fn new_keys(&self, _input: &Self::Input, _event: &LoggedEvent) -> Vec<String> {
        Vec::new()
    }

    /// What the reactor owes, or no longer owes, for `input`.
    fn react(&self, input: Self::Input, event: &LoggedEvent) -> Vec<Reaction<Self::Order>>;
}

/// A reactor whose reactions are each one command on one aggregate, run
/// by the generic runner (`Commands::execute_many`).
pub trait Commanding: Reactor {
    /// The aggregate its commands go to.
    type Target: Aggregate<Command: Named + Send, Error: Send + Sync>;

    /// The command `pending` runs, as of `at`.
    fn command(
        &self,
        pending: &Pending<Self::Order>,
        at: Timestamp,
    ) -> <Self::Target as Aggregate>::Command;
}

/// How a reactor's due reactions are run: one call per batch of them,
/// each under its reaction's command id; answers how many aggregates it
/// changed.
#[async_trait::async_trait]
pub trait Fire<R: Reactor>: Send + Sync {
    async fn fire(
        &self,
        reactor: &R,
        due: &[Keyed<Pending<R::Order>>],
        meta: &CommandMetadata,
    ) -> Result<u64, String>;
}

#[async_trait::async_trait]
impl<R: Commanding> Fire<R> for Commands<R::Target>
where
    <R::Target as Aggregate>::Command: Named + Send,
{
    async fn fire(
        &self,
        reactor: &R,
        due: &[Keyed<Pending<R::Order>>],
        meta: &CommandMetadata,
    ) -> Result<u64, String> {
        let targets: Vec<Target> = due
            .iter()
            .map(|k| Target {
                aggregate_id: k.row.aggregate_id.clone(),
                command_id: Some(command_id::<R>(&k.key)),
            })
            .collect();
        let receipt = self
            .execute_many(&targets, |i, at| reactor.command(&due[i].row, at), meta)
            .await
            .map_err(|e| error_chain(&e))?;
        Ok(receipt.changed)
    }
}

/// A change to what a reactor owes.
#[derive(Debug, Clone, PartialEq)]
pub enum Reaction<O> {
    /// A command is owed, under reaction id `id` (which it replaces).
    Owe { id: String, pending: Pending<O> },
    /// The command under `id` is no longer owed (done, or moot).
    Settle { id: String },
}

/// A command owed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending<O> {
    /// The aggregate the command goes to.
    pub aggregate_id: String,
    /// When it is due: at once when this is the event's time or earlier.
    pub due_at: Timestamp,
    /// Fired before the others due with it, and never held back.
    pub urgent: bool,
    pub order: O,
}

/// The command id a reaction's command carries.
pub(crate) fn command_id<R: Reactor>(reaction_id: &str) -> String {
    format!("{}/{reaction_id}", R::NAME)
}

/// The reaction an event's command id names, when one of `R`'s caused it.
fn settled_by<R: Reactor>(event: &LoggedEvent) -> Option<&str> {
    event
        .metadata
        .get(COMMAND_ID)?
        .as_str()?
        .strip_prefix(R::NAME)?
        .strip_prefix('/')
}

/// A reactor as the projection store folds it: its rows are its pending
/// commands by reaction id, sorted by due time.
pub struct Outbox<R>(pub R);

/// An event as an outbox reads it.
pub struct Step<I> {
    /// As the reactor reads it.
    input: Option<I>,
    /// The reaction the event's own command was.
    settles: Option<String>,
}

impl<R: Reactor> Fold for Outbox<R> {
    const NAME: &'static str = R::NAME;
    type Input = Step<R::Input>;
    type Row = Pending<R::Order>;

    fn read(&self, event: &LoggedEvent) -> Result<Option<Self::Input>, String> {
        let input = self.0.read(event)?;
        let settles = settled_by::<R>(event).map(str::to_owned);
        Ok((input.is_some() || settles.is_some()).then_some(Step { input, settles }))
    }

    fn keys(&self, step: &Self::Input, event: &LoggedEvent) -> Vec<String> {
        let mut keys = match &step.input {
            Some(input) => self.0.keys(input, event),
            None => Vec::new(),
        };
        keys.extend(step.settles.iter().cloned());
        keys
    }

    fn new_keys(&self, step: &Self::Input, event: &LoggedEvent) -> Vec<String> {
        match &step.input {
            Some(input) => self.0.new_keys(input, event),
            None => Vec::new(),
        }
    }

    fn fold(
        &self,
        step: Self::Input,
        event: &LoggedEvent,
        rows: &mut Rows<Self::Row>,
    ) -> Result<(), String> {
        if let Some(id) = &step.settles {
            rows.remove(id);
        }
        for reaction in step
            .input
            .map(|i| self.0.react(i, event))
            .unwrap_or_default()
        {
            match reaction {
                Reaction::Owe { id, pending } => {
                    rows.put(&id, pending.due_at.timestamp_millis(), pending)
                }
                Reaction::Settle { id } => rows.remove(&id),
            }
        }
        Ok(())
    }
}
