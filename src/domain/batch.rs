//! Batches: one recipient's notifications of one category under one batch
//! key, held and flushed together into a digest.
//!
//! One stream per (category, recipient, key) holds that key's batches one
//! after another: `BatchOpened` (number n, the policy it keeps), items
//! added, `BatchFlushed` (why, what, whether as a digest); the next item
//! opens n + 1. So at most one batch per key is open, whatever the
//! concurrency: two adds race on the stream's version. A batch's id is its
//! stream and number (`{stream}.{n}`), so a flush request names the batch
//! it means and never flushes the next one.
//!
//! Everything before the last `BatchOpened` is history: the state is folded
//! from there (`Batch::resumes_at`). Whether a notification is already in
//! a batch is the notification's own stream's to say (it records the batch
//! in the same append as the batch records the item).

use serde::{Deserialize, Serialize};

use super::batching::BatchPolicy;
use super::contact::{TenantId, TimeZone};
use super::values::{Category, Channel, GroupKey, NotificationId, Title, UserId};
use super::Timestamp;

pub const BATCH_TYPE: &str = "Batch";
pub const BATCH_EVENT_VERSION: &str = "1.0";

/// The most distinct actors a digest names.
pub const ACTORS_MAX: usize = 20;

/// The stream of `recipient`'s batches in `category` under `key`.
pub fn stream_id(category: &Category, recipient: &UserId, key: &str) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x3b7e_91d4_52c8_4f06_a1d9_6c2e_b47a_0f15);
    let name = format!("{}\n{}\n{key}", category.as_str(), recipient.as_str());
    uuid::Uuid::new_v5(&NAMESPACE, name.as_bytes()).to_string()
}

/// The id of batch `number` of `stream`.
pub fn batch_id(stream: &str, number: u64) -> String {
    format!("{stream}.{number}")
}

/// The stream and number a batch id names, when it is one.
pub fn parse_batch_id(id: &str) -> Option<(String, u64)> {
    let (stream, number) = id.rsplit_once('.')?;
    let stream = uuid::Uuid::parse_str(stream).ok()?;
    let number: u64 = number.parse().ok().filter(|n| *n >= 1)?;
    (batch_id(&stream.to_string(), number) == id).then(|| (stream.to_string(), number))
}

/// The digest notification a batch's flush creates.
pub fn digest_id(batch_id: &str) -> NotificationId {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x9c40_2f7a_d15e_4b83_b6a0_1e8d_73f2_c5a9);
    NotificationId(uuid::Uuid::new_v5(&NAMESPACE, batch_id.as_bytes()))
}

/// A notification held in a batch, as the digest summarises it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchItem {
    pub id: NotificationId,
    pub title: Title,
    /// `data.actor` when it is a string: who did what the item tells of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    pub channels: Vec<Channel>,
    pub added_at: Timestamp,
}

/// What a batch is, from its first item: whose, which key, which policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opening {
    pub category: Category,
    pub recipient: UserId,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_key: Option<GroupKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
    /// The policy the batch keeps for its life, and its version.
    pub policy: BatchPolicy,
    pub policy_version: u64,
    /// The recipient's, for a schedule.
    pub time_zone: TimeZone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlushReason {
    Window,
    MaxItems,
    Schedule,
    Manual,
}

impl FlushReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Window => "window",
            Self::MaxItems => "max_items",
            Self::Schedule => "schedule",
            Self::Manual => "manual",
        }
    }
}

/// An item as a digest names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRef {
    pub id: NotificationId,
    pub title: Title,
}

/// What the digest of a flushed batch says, decided with the flush.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub id: NotificationId,
    /// Whose, and of what: as the batch opened.
    pub recipient: UserId,
    pub category: Category,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_key: Option<GroupKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
    pub first: ItemRef,
    pub last: ItemRef,
    /// Distinct actors in the order they first appear (at most `ACTORS_MAX`).
    pub actors: Vec<String>,
    /// How many distinct actors there were.
    pub actor_count: usize,
    /// Every channel an item asked for, in the order first asked.
    pub channels: Vec<Channel>,
    /// The template its title and body render from (the policy's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<super::template::TemplateKey>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BatchCommand {
    /// Add `item` to the open batch, opening one (as `opening` says) when
    /// none is.
    Add {
        item: BatchItem,
        opening: Box<Opening>,
        at: Timestamp,
    },
    /// Flush batch `number`: by time (its timer's; the reason is its
    /// policy's cadence) or as a request asks (`manual`).
    Flush {
        number: u64,
        manual: bool,
        at: Timestamp,
    },
}

impl BatchCommand {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Add { .. } => "AddToBatch",
            Self::Flush { .. } => "FlushBatch",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BatchEvent {
    BatchOpened {
        batch_id: String,
        number: u64,
        #[serde(flatten)]
        opening: Box<Opening>,
        opened_at: Timestamp,
        flush_at: Timestamp,
    },
    /// `released`: the batch's first item under `first_item_immediately`,
    /// delivered at once rather than digested.
    BatchItemAdded {
        batch_id: String,
        item: BatchItem,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        released: bool,
        /// When the batch flushes by time now (a sliding window moves).
        flush_at: Timestamp,
    },
    /// The batch is closed. `digest`: the digest that carries `items`;
    /// None: fewer than `min_items`, delivered one by one.
    BatchFlushed {
        batch_id: String,
        reason: FlushReason,
        items: Vec<NotificationId>,
        count: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digest: Option<Box<Digest>>,
        flushed_at: Timestamp,
    },
}

impl BatchEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::BatchOpened { .. } => "BatchOpened",
            Self::BatchItemAdded { .. } => "BatchItemAdded",
            Self::BatchFlushed { .. } => "BatchFlushed",
        }
    }

    pub fn batch_id(&self) -> &str {
        match self {
            Self::BatchOpened { batch_id, .. }
            | Self::BatchItemAdded { batch_id, .. }
            | Self::BatchFlushed { batch_id, .. } => batch_id,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("no batch {0} has been opened under this key")]
    NotFound(String),
}

/// The batch a key stream is at: the last opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenBatch {
    pub batch_id: String,
    pub number: u64,
    pub opening: Opening,
    pub opened_at: Timestamp,
    pub flush_at: Timestamp,
    /// Held for the digest, in the order added.
    pub items: Vec<BatchItem>,
    /// The first item, delivered at once (`first_item_immediately`).
    pub released: Option<NotificationId>,
    /// Set once it flushed: why and when.
    pub flushed: Option<(FlushReason, Timestamp)>,
}

/// One key's batches as the stream leaves them (from its last
/// `BatchOpened` on, which is all a command needs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub current: Option<OpenBatch>,
}

impl Batch {
    /// The event type a load may start from: the state before it does not
    /// matter to any command.
    pub const RESUMES_AT: &'static str = "BatchOpened";

    fn open(&self) -> Option<&OpenBatch> {
        self.current.as_ref().filter(|b| b.flushed.is_none())
    }

    pub fn decide(&self, command: BatchCommand) -> Result<Vec<BatchEvent>, BatchError> {
        match command {
            BatchCommand::Add { item, opening, at } => Ok(self.decide_add(item, *opening, at)),
            BatchCommand::Flush { number, manual, at } => {
                if self.current.as_ref().is_none_or(|b| b.number < number) {
                    return Err(BatchError::NotFound(number.to_string()));
                }
                Ok(match self.open() {
                    Some(open) if open.number == number => {
                        let reason = if manual {
                            FlushReason::Manual
                        } else {
                            timed_reason(&open.opening.policy)
                        };
                        vec![flushed(open, reason, at)]
                    }
                    // Flushed already: this batch's flush has happened.
                    _ => vec![],
                })
            }
        }
    }

    fn decide_add(&self, item: BatchItem, opening: Opening, at: Timestamp) -> Vec<BatchEvent> {
        let mut events = Vec::new();
        let mut batch = match self.open() {
            Some(open) => {
                if open.items.iter().any(|i| i.id == item.id) || open.released == Some(item.id) {
                    return vec![];
                }
                open.clone()
            }
            None => {
                let number = self.current.as_ref().map_or(1, |b| b.number + 1);
                let stream = stream_id(&opening.category, &opening.recipient, &opening.key);
                let batch_id = batch_id(&stream, number);
                let flush_at = opening.policy.flush_at(at, at, opening.time_zone);
                let opened = BatchEvent::BatchOpened {
                    batch_id,
                    number,
                    opening: Box::new(opening),
                    opened_at: at,
                    flush_at,
                };
                let mut state = self.clone();
                state.apply(opened.clone());
                events.push(opened);
                state.current.expect("just opened")
            }
        };
        let policy = &batch.opening.policy;
        let released =
            policy.first_item_immediately && batch.items.is_empty() && batch.released.is_none();
        let flush_at = if released {
            batch.flush_at
        } else {
            policy.flush_at(batch.opened_at, at, batch.opening.time_zone)
        };
        let added = BatchEvent::BatchItemAdded {
            batch_id: batch.batch_id.clone(),
            item,
            released,
            flush_at,
        };
        apply_to(&mut batch, added.clone());
        events.push(added);
        if batch.items.len() >= batch.opening.policy.max_items as usize {
            events.push(flushed(&batch, FlushReason::MaxItems, at));
        }
        events
    }

    pub fn apply(&mut self, event: BatchEvent) {
        match event {
            BatchEvent::BatchOpened {
                batch_id,
                number,
                opening,
                opened_at,
                flush_at,
            } => {
                self.current = Some(OpenBatch {
                    batch_id,
                    number,
                    opening: *opening,
                    opened_at,
                    flush_at,
                    items: Vec::new(),
                    released: None,
                    flushed: None,
                });
            }
            other => {
                if let Some(batch) = self.current.as_mut() {
                    apply_to(batch, other);
                }
            }
        }
    }
}

fn apply_to(batch: &mut OpenBatch, event: BatchEvent) {
    match event {
        BatchEvent::BatchOpened { .. } => {}
        BatchEvent::BatchItemAdded {
            item,
            released,
            flush_at,
            ..
        } => {
            if released {
                batch.released = Some(item.id);
            } else {
                batch.items.push(item);
            }
            batch.flush_at = flush_at;
        }
        BatchEvent::BatchFlushed {
            reason, flushed_at, ..
        } => batch.flushed = Some((reason, flushed_at)),
    }
}

/// The flush of `batch`: as a digest when it holds at least `min_items`
/// (and any at all), else its items one by one.
fn flushed(batch: &OpenBatch, reason: FlushReason, at: Timestamp) -> BatchEvent {
    let items: Vec<NotificationId> = batch.items.iter().map(|i| i.id).collect();
    let count = items.len();
    let digest = (count >= 1 && count >= batch.opening.policy.min_items as usize).then(|| {
        let item_ref = |i: &BatchItem| ItemRef {
            id: i.id,
            title: i.title.clone(),
        };
        let mut actors: Vec<String> = Vec::new();
        for actor in batch.items.iter().filter_map(|i| i.actor.as_ref()) {
            if !actors.contains(actor) {
                actors.push(actor.clone());
            }
        }
        let mut channels: Vec<Channel> = Vec::new();
        for c in batch.items.iter().flat_map(|i| &i.channels) {
            if !channels.contains(c) {
                channels.push(*c);
            }
        }
        let actor_count = actors.len();
        actors.truncate(ACTORS_MAX);
        Box::new(Digest {
            id: digest_id(&batch.batch_id),
            recipient: batch.opening.recipient.clone(),
            category: batch.opening.category.clone(),
            group_key: batch.opening.group_key.clone(),
            tenant: batch.opening.tenant.clone(),
            first: item_ref(&batch.items[0]),
            last: item_ref(&batch.items[count - 1]),
            actors,
            actor_count,
            channels,
            template: batch.opening.policy.template.clone(),
        })
    });
    BatchEvent::BatchFlushed {
        batch_id: batch.batch_id.clone(),
        reason,
        items,
        count,
        digest,
        flushed_at: at,
    }
}

/// How a batch flushes by time under `policy`.
pub fn timed_reason(policy: &BatchPolicy) -> FlushReason {
    match policy.cadence {
        super::batching::Cadence::Window(_) => FlushReason::Window,
        super::batching::Cadence::Schedule(_) => FlushReason::Schedule,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::batching::{Cadence, Window};
    use chrono::{TimeZone as _, Utc};

    fn at(secs: i64) -> Timestamp {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn policy(window: Window, max_items: u32, first: bool, min_items: u32) -> BatchPolicy {
        BatchPolicy::new(
            Cadence::Window(window),
            max_items,
            None,
            first,
            Some(min_items),
        )
        .unwrap()
    }

    fn opening(policy: BatchPolicy) -> Box<Opening> {
        Box::new(Opening {
            category: Category::parse("comments").unwrap(),
            recipient: UserId::parse("alice").unwrap(),
            key: "alice/post-42".into(),
            group_key: None,
            tenant: None,
            policy,
            policy_version: 1,
            time_zone: TimeZone::UTC,
        })
    }

    fn item(n: u128, actor: &str, secs: i64) -> BatchItem {
        BatchItem {
            id: NotificationId(uuid::Uuid::from_u128(n)),
            title: Title::parse(&format!("Reply {n}")).unwrap(),
            actor: Some(actor.into()),
            channels: vec![Channel::InApp],
            added_at: at(secs),
        }
    }

    /// Given `batch`, when `command`, then the events; the batch moves on.
    fn run(batch: &mut Batch, command: BatchCommand) -> Vec<BatchEvent> {
        let events = batch.decide(command).unwrap();
        for e in &events {
            batch.apply(e.clone());
        }
        events
    }

    fn add(
        batch: &mut Batch,
        policy: &BatchPolicy,
        n: u128,
        actor: &str,
        secs: i64,
    ) -> Vec<&'static str> {
        run(
            batch,
            BatchCommand::Add {
                item: item(n, actor, secs),
                opening: opening(policy.clone()),
                at: at(secs),
            },
        )
        .iter()
        .map(BatchEvent::event_type)
        .collect()
    }

    #[test]
    fn the_first_item_opens_a_batch_the_rest_join_it_and_max_items_flushes_it() {
        let p = policy(Window::Fixed { seconds: 60 }, 3, false, 1);
        let mut b = Batch::default();
        assert_eq!(
            add(&mut b, &p, 1, "ann", 0),
            ["BatchOpened", "BatchItemAdded"]
        );
        assert_eq!(add(&mut b, &p, 2, "bob", 1), ["BatchItemAdded"]);
        assert_eq!(
            add(&mut b, &p, 2, "bob", 2),
            Vec::<&str>::new(),
            "an item once"
        );
        assert_eq!(
            add(&mut b, &p, 3, "ann", 3),
            ["BatchItemAdded", "BatchFlushed"]
        );
        let open = b.current.clone().unwrap();
        assert_eq!(open.flushed.map(|f| f.0), Some(FlushReason::MaxItems));
        assert_eq!(open.flush_at, at(60), "a fixed window from the first item");
        // The next item opens the next batch, under its own id.
        assert_eq!(
            add(&mut b, &p, 4, "cat", 4),
            ["BatchOpened", "BatchItemAdded"]
        );
        let next = b.current.clone().unwrap();
        assert_eq!(next.number, 2);
        assert_ne!(next.batch_id, open.batch_id);
    }

    #[test]
    fn a_flush_happens_once_and_names_its_items_actors_and_digest() {
        let p = policy(Window::Fixed { seconds: 60 }, 10, false, 1);
        let mut b = Batch::default();
        for (n, actor) in [(1, "ann"), (2, "bob"), (3, "ann")] {
            add(&mut b, &p, n, actor, n as i64);
        }
        let flush = |manual| BatchCommand::Flush {
            number: 1,
            manual,
            at: at(60),
        };
        let events = run(&mut b, flush(false));
        let [BatchEvent::BatchFlushed {
            reason,
            items,
            count,
            digest: Some(digest),
            ..
        }] = events.as_slice()
        else {
            panic!("one flush with a digest: {events:?}");
        };
        assert_eq!((*reason, *count, items.len()), (FlushReason::Window, 3, 3));
        assert_eq!(digest.actors, ["ann", "bob"]);
        assert_eq!((digest.first.id, digest.last.id), (items[0], items[2]));
        assert_eq!(digest.id, digest_id(&b.current.as_ref().unwrap().batch_id));
        assert_eq!(run(&mut b, flush(true)), vec![], "flushed already");
        assert!(matches!(
            b.decide(BatchCommand::Flush {
                number: 2,
                manual: true,
                at: at(61)
            }),
            Err(BatchError::NotFound(_))
        ));
    }

    #[test]
    fn below_min_items_a_flush_has_no_digest_and_the_first_item_can_go_at_once() {
        let p = policy(Window::Fixed { seconds: 60 }, 10, true, 3);
        let mut b = Batch::default();
        add(&mut b, &p, 1, "ann", 0);
        add(&mut b, &p, 2, "bob", 1);
        add(&mut b, &p, 3, "cat", 2);
        let open = b.current.clone().unwrap();
        assert_eq!(
            open.released,
            Some(NotificationId(uuid::Uuid::from_u128(1)))
        );
        assert_eq!(open.items.len(), 2, "the first is not held");
        let events = run(
            &mut b,
            BatchCommand::Flush {
                number: 1,
                manual: true,
                at: at(5),
            },
        );
        assert!(
            matches!(
                &events[..],
                [BatchEvent::BatchFlushed {
                    digest: None,
                    count: 2,
                    reason: FlushReason::Manual,
                    ..
                }]
            ),
            "{events:?}"
        );
    }

    #[test]
    fn a_sliding_window_moves_with_each_item_up_to_its_bound() {
        let p = policy(
            Window::Sliding {
                seconds: 10,
                max_seconds: 25,
            },
            100,
            false,
            1,
        );
        let mut b = Batch::default();
        add(&mut b, &p, 1, "ann", 0);
        assert_eq!(b.current.as_ref().unwrap().flush_at, at(10));
        add(&mut b, &p, 2, "ann", 8);
        assert_eq!(b.current.as_ref().unwrap().flush_at, at(18));
        add(&mut b, &p, 3, "ann", 20);
        assert_eq!(b.current.as_ref().unwrap().flush_at, at(25), "bounded");
    }

    #[test]
    fn batch_ids_name_their_stream_and_number_and_nothing_else() {
        let stream = stream_id(
            &Category::parse("comments").unwrap(),
            &UserId::parse("alice").unwrap(),
            "k",
        );
        let id = batch_id(&stream, 7);
        assert_eq!(parse_batch_id(&id), Some((stream.clone(), 7)));
        for bad in [
            "",
            "x.1",
            &format!("{stream}.0"),
            &format!("{stream}.07"),
            &stream,
            &format!("{}.1", stream.to_uppercase()),
        ] {
            assert_eq!(parse_batch_id(bad), None, "{bad}");
        }
    }
}
