//! The batcher: a held notification is owed its add to its key's batch
//! (under `item/{notification}`), and an open batch is owed its flush at
//! the time its policy says (under `flush/{batch}`, moved by each item of a
//! sliding window). Both go to the key's batch stream; an add also marks
//! the notification, in the same append (`Commands::<Batch>::add_items`),
//! so firing again never adds twice. A cancel before the add settles it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Fire, Pending, Reaction, Reactor};
use crate::commands::batches::HeldItem;
use crate::commands::{CommandMetadata, Commands};
use crate::domain::batch::{parse_batch_id, Batch, BatchEvent, BATCH_TYPE};
use crate::domain::{Notification, NotificationEvent, NotificationId};
use crate::projections::store::Keyed;
use crate::storage::{error_chain, LoggedEvent};

use cqrs_es::Aggregate as _;

pub const NAME: &str = "batcher";

/// What the batcher owes a batch stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BatchOrder {
    /// Add this held notification.
    Add { item: NotificationId },
    /// Flush batch `number` by time.
    Flush { number: u64 },
}

/// What the batcher reads of an event.
pub enum Step {
    Held {
        stream: String,
    },
    /// Cancelled or deleted: never added, if not yet.
    Gone,
    /// When batch `batch_id` flushes by time.
    Due {
        batch_id: String,
        flush_at: crate::domain::Timestamp,
    },
    Flushed {
        batch_id: String,
    },
}

fn item_key(id: &str) -> String {
    format!("item/{id}")
}

fn flush_key(batch_id: &str) -> String {
    format!("flush/{batch_id}")
}

pub struct Batcher;

impl Reactor for Batcher {
    const NAME: &'static str = NAME;
    type Input = Step;
    type Order = BatchOrder;

    fn read(&self, event: &LoggedEvent) -> Result<Option<Step>, String> {
        let t = event.event_type.as_str();
        if event.aggregate_type == Notification::TYPE {
            return Ok(match t {
                "NotificationBatched" => match event.decode::<NotificationEvent>()? {
                    NotificationEvent::NotificationBatched { stream, .. } => {
                        Some(Step::Held { stream })
                    }
                    _ => None,
                },
                "NotificationCancelled" | "NotificationDeleted" => Some(Step::Gone),
                _ => None,
            });
        }
        if event.aggregate_type != BATCH_TYPE {
            return Ok(None);
        }
        Ok(Some(match event.decode::<BatchEvent>()? {
            BatchEvent::BatchOpened {
                batch_id, flush_at, ..
            }
            | BatchEvent::BatchItemAdded {
                batch_id, flush_at, ..
            } => Step::Due { batch_id, flush_at },
            BatchEvent::BatchFlushed { batch_id, .. } => Step::Flushed { batch_id },
        }))
    }

    fn keys(&self, step: &Step, event: &LoggedEvent) -> Vec<String> {
        match step {
            Step::Held { .. } | Step::Gone => vec![item_key(&event.aggregate_id)],
            Step::Due { batch_id, .. } | Step::Flushed { batch_id } => vec![flush_key(batch_id)],
        }
    }

    fn new_keys(&self, step: &Step, event: &LoggedEvent) -> Vec<String> {
        match step {
            Step::Held { .. } => vec![item_key(&event.aggregate_id)],
            _ => Vec::new(),
        }
    }

    fn react(&self, step: Step, event: &LoggedEvent) -> Vec<Reaction<BatchOrder>> {
        match step {
            Step::Held { stream } => match NotificationId::parse(&event.aggregate_id) {
                Ok(item) => vec![Reaction::Owe {
                    id: item_key(&event.aggregate_id),
                    pending: Pending {
                        aggregate_id: stream,
                        due_at: event.recorded_at,
                        urgent: false,
                        order: BatchOrder::Add { item },
                    },
                }],
                Err(_) => Vec::new(),
            },
            Step::Gone => vec![Reaction::Settle {
                id: item_key(&event.aggregate_id),
            }],
            Step::Due { batch_id, flush_at } => match parse_batch_id(&batch_id) {
                Some((_, number)) => vec![Reaction::Owe {
                    id: flush_key(&batch_id),
                    pending: Pending {
                        aggregate_id: event.aggregate_id.clone(),
                        due_at: flush_at,
                        urgent: false,
                        order: BatchOrder::Flush { number },
                    },
                }],
                None => Vec::new(),
            },
            Step::Flushed { batch_id } => vec![Reaction::Settle {
                id: flush_key(&batch_id),
            }],
        }
    }
}

/// Runs the batcher's reactions: the adds in one append, then the flushes
/// in another.
pub struct BatchFire {
    pub batches: Arc<Commands<Batch>>,
}

#[async_trait::async_trait]
impl Fire<Batcher> for BatchFire {
    async fn fire(
        &self,
        _: &Batcher,
        due: &[Keyed<Pending<BatchOrder>>],
        meta: &CommandMetadata,
    ) -> Result<u64, String> {
        let items: Vec<HeldItem> = due
            .iter()
            .filter_map(|k| match k.row.order {
                BatchOrder::Add { item } => Some(HeldItem {
                    notification: item,
                    command_id: super::command_id::<Batcher>(&k.key),
                }),
                BatchOrder::Flush { .. } => None,
            })
            .collect();
        let mut changed = 0;
        if !items.is_empty() {
            changed += self
                .batches
                .add_items(&items, meta)
                .await
                .map_err(|e| error_chain(&e))?;
        }
        let flushes: Vec<(String, u64, String)> = due
            .iter()
            .filter_map(|k| match k.row.order {
                BatchOrder::Flush { number } => Some((
                    k.row.aggregate_id.clone(),
                    number,
                    super::command_id::<Batcher>(&k.key),
                )),
                BatchOrder::Add { .. } => None,
            })
            .collect();
        if !flushes.is_empty() {
            changed += self
                .batches
                .flush_many(&flushes, meta)
                .await
                .map_err(|e| error_chain(&e))?;
        }
        Ok(changed)
    }
}
