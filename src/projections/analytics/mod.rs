//! Analytics: per UTC minute, hour and day, per category and channel, how
//! many notifications were created, delivered, seen, read, clicked,
//! archived, deleted and cancelled, and how long delivery and engagement
//! took (mergeable histograms, `latency`). Queries (`query`) merge any range
//! of buckets; `health` scores a window of them.
//!
//! Counting rules:
//! - created, cancelled and deleted count once under each channel of the
//!   notification; delivered under the channel delivered; suppressed
//!   (preference, category default, missing address), held (quiet hours)
//!   and failed (a worker's report) under their channel, apart: a
//!   suppression is a decision, not a failure; digested (carried by a
//!   digest, which counts as a notification of its own) under each channel
//!   of the item;
//! - seen, read, clicked and archived count under `in_app` (the inbox is
//!   where they happen), each once per notification however often it is
//!   marked unread and read again;
//! - delivery latency runs from when the notification was due (its
//!   `deliver_at`, or its creation) to its delivery on that channel; seen
//!   and read latencies from its in-app delivery;
//! - an event counts in the buckets of the time it happened (the event's own
//!   time, not when it was recorded).
//!
//! Rows: one per bucket (`minute:{start_ms}`, `hour:…`, `day:…`) holding
//! its cells, and one per live notification (`n:{id}`: what later events of
//! it need to know: its category, channels, due time, in-app delivery).

pub mod health;
pub mod latency;
pub mod query;

use serde::{Deserialize, Serialize};

use self::latency::Latency;
use super::store::{Fold, Rows};
use crate::domain::contact::TenantId;
use crate::domain::preferences::SuppressionRule;
use crate::domain::{Category, Channel, Notification, NotificationEvent, Timestamp, EVENT_VERSION};
use crate::storage::LoggedEvent;
use cqrs_es::Aggregate;

pub const NAME: &str = "analytics";

/// How long analytics lets appends gather into one page: counters a
/// dashboard reads need not be fresh to the millisecond, and a page is one
/// write of each bucket however many events it counts.
pub const SETTLE: std::time::Duration = std::time::Duration::from_millis(100);

/// Events per analytics page: every page rewrites its buckets' rows once.
pub const PAGE: usize = 2_000;

/// The stream topic analytics updates go to.
pub const TOPIC: &str = "analytics";

/// A bucket's width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

/// Bucket starts are kept within ±2^49 ms of 1970 (±17,000 years).
const SPAN: i64 = 1 << 49;

impl Granularity {
    pub const ALL: [Granularity; 3] = [Self::Minute, Self::Hour, Self::Day];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.as_str() == s)
    }

    pub fn millis(self) -> i64 {
        match self {
            Self::Minute => 60_000,
            Self::Hour => 3_600_000,
            Self::Day => 86_400_000,
        }
    }

    /// The start of the bucket holding `ms` (UTC: the epoch is a midnight);
    /// times past ±2^49 ms count in the first or last bucket within it.
    pub fn start_of(self, ms: i64) -> i64 {
        let w = self.millis();
        ms.clamp(-SPAN + w, SPAN - 1).div_euclid(w) * w
    }

    /// The row's sort value: each width in a range of its own, above the
    /// notifications' 0, so a range query reads one width only.
    pub fn sort(self, start: i64) -> i64 {
        let rank = match self {
            Self::Minute => 1,
            Self::Hour => 2,
            Self::Day => 3,
        };
        rank * 4 * SPAN + start.clamp(-SPAN, SPAN) + SPAN
    }

    pub fn key(self, start: i64) -> String {
        format!("{}:{start}", self.as_str())
    }
}

/// How many of each happened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub created: u64,
    pub delivered: u64,
    pub seen: u64,
    pub read: u64,
    pub clicked: u64,
    pub archived: u64,
    pub deleted: u64,
    pub cancelled: u64,
    /// Channels not delivered because of a preference, a category default
    /// or a missing address (absent from rows written before them).
    #[serde(default)]
    pub suppressed: u64,
    /// Channels held by quiet hours (delivered when they end).
    #[serde(default)]
    pub held: u64,
    /// Failures reported by channel workers.
    #[serde(default)]
    pub failed: u64,
    /// Carried by a digest instead of delivered on their own (the digest
    /// counts as a notification of its own).
    #[serde(default)]
    pub digested: u64,
}

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        self.created += other.created;
        self.delivered += other.delivered;
        self.seen += other.seen;
        self.read += other.read;
        self.clicked += other.clicked;
        self.archived += other.archived;
        self.deleted += other.deleted;
        self.cancelled += other.cancelled;
        self.suppressed += other.suppressed;
        self.held += other.held;
        self.failed += other.failed;
        self.digested += other.digested;
    }

    /// Channel sends that were to be delivered on their own: created, less
    /// suppressed and digested.
    pub fn deliverable(&self) -> u64 {
        self.created
            .saturating_sub(self.suppressed)
            .saturating_sub(self.digested)
    }
}

/// One category on one channel (for one tenant, or none) in one bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub category: Category,
    pub channel: Channel,
    /// Absent from cells written before tenants, and for sends without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
    pub counts: Counts,
    /// Due → delivered, ms.
    pub delivery: Latency,
    /// In-app delivered → seen, ms.
    pub seen: Latency,
    /// In-app delivered → read, ms.
    pub read: Latency,
}

/// What later events of a notification need to know of it. One is kept
/// per notification, so what is not so is left out of the stored document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tracked {
    pub category: Category,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
    pub channels: Vec<Channel>,
    /// When it was due: its `deliver_at`, or its creation (ms).
    pub due: i64,
    /// Its in-app delivery (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_app_delivered: Option<i64>,
    /// Already counted (each counts once per notification).
    #[serde(default, skip_serializing_if = "is_false")]
    pub seen: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub read: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub clicked: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub archived: bool,
}

fn is_false(b: &bool) -> bool {
    !b
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "row", rename_all = "snake_case")]
pub enum Row {
    Bucket { cells: Vec<Cell> },
    Notification(Tracked),
}

/// An event as analytics reads it: what happened, and when (ms).
pub struct Happened {
    what: What,
    at: i64,
}

enum What {
    Created(Creation),
    /// Any later event.
    Then(NotificationEvent),
}

/// What analytics reads of a creation, and all it decodes of one: the
/// title, body and data are for the inbox. So a creation whose title (say)
/// does not read is counted here while the inbox parks it: analytics counts
/// what was created, by category and channel.
#[derive(Deserialize)]
struct Creation {
    category: Category,
    channels: Vec<Channel>,
    deliver_at: Option<Timestamp>,
    created_at: Timestamp,
    #[serde(default)]
    tenant: Option<TenantId>,
}

fn tracked_key(aggregate_id: &str) -> String {
    format!("n:{aggregate_id}")
}

pub struct Analytics;

impl Fold for Analytics {
    const NAME: &'static str = NAME;
    type Input = Happened;
    type Row = Row;

    fn read(&self, event: &LoggedEvent) -> Result<Option<Happened>, String> {
        if event.aggregate_type != Notification::TYPE
            || matches!(
                event.event_type.as_str(),
                "NotificationScheduled" | "NotificationUnread" | "NotificationUnarchived"
            )
        {
            return Ok(None);
        }
        let what = if event.event_type == "NotificationCreated"
            && event.event_version == EVENT_VERSION
            && event.unreadable.is_none()
        {
            let created = Creation::deserialize(&event.payload["NotificationCreated"])
                .map_err(|e| format!("the payload does not parse: {e}"))?;
            What::Created(created)
        } else {
            match event.decode()? {
                NotificationEvent::NotificationCreated {
                    category,
                    channels,
                    deliver_at,
                    created_at,
                    tenant,
                    ..
                } => What::Created(Creation {
                    category,
                    channels,
                    deliver_at,
                    created_at,
                    tenant,
                }),
                then => What::Then(then),
            }
        };
        let at = match &what {
            What::Created(c) => c.created_at,
            What::Then(e) => e.occurred_at(),
        };
        Ok(Some(Happened {
            what,
            at: at.timestamp_millis(),
        }))
    }

    fn keys(&self, input: &Happened, event: &LoggedEvent) -> Vec<String> {
        let mut keys = vec![tracked_key(&event.aggregate_id)];
        keys.extend(Granularity::ALL.map(|g| g.key(g.start_of(input.at))));
        keys
    }

    fn new_keys(&self, input: &Happened, event: &LoggedEvent) -> Vec<String> {
        match input.what {
            What::Created(_) => vec![tracked_key(&event.aggregate_id)],
            What::Then(_) => Vec::new(),
        }
    }

    fn fold(
        &self,
        input: Happened,
        event: &LoggedEvent,
        rows: &mut Rows<Row>,
    ) -> Result<(), String> {
        let key = tracked_key(&event.aggregate_id);
        let at = input.at;
        let then = match input.what {
            What::Created(Creation {
                category,
                channels,
                deliver_at,
                created_at,
                tenant,
            }) => {
                let due = deliver_at.map_or(created_at, |d| d.max(created_at));
                let dims = (&category, tenant.as_ref());
                count(rows, at, dims, &channels, |c| c.counts.created += 1);
                let tracked = Tracked {
                    tenant: tenant.clone(),
                    category,
                    channels,
                    due: due.timestamp_millis(),
                    in_app_delivered: None,
                    seen: false,
                    read: false,
                    clicked: false,
                    archived: false,
                };
                rows.put(&key, 0, Row::Notification(tracked));
                return Ok(());
            }
            What::Then(then) => then,
        };
        let Some(Row::Notification(mut n)) = rows.get(&key).cloned() else {
            return Err(format!(
                "{} of {} follows no NotificationCreated",
                event.event_type, event.aggregate_id
            ));
        };
        let since = |from: Option<i64>| from.map(|t| (at - t).max(0) as u64);
        let (category, tenant) = (n.category.clone(), n.tenant.clone());
        let cat = (&category, tenant.as_ref());
        match then {
            NotificationEvent::NotificationDelivered { channel, .. } => {
                let late = (at - n.due).max(0) as u64;
                count(rows, at, cat, &[channel], |c| {
                    c.counts.delivered += 1;
                    c.delivery.record(late);
                });
                if channel == Channel::InApp && n.in_app_delivered.is_none() {
                    n.in_app_delivered = Some(at);
                }
            }
            NotificationEvent::NotificationSeen { .. } if !n.seen => {
                n.seen = true;
                let took = since(n.in_app_delivered);
                count(rows, at, cat, &[Channel::InApp], |c| {
                    c.counts.seen += 1;
                    if let Some(ms) = took {
                        c.seen.record(ms);
                    }
                });
            }
            NotificationEvent::NotificationRead { .. } if !n.read => {
                n.read = true;
                let took = since(n.in_app_delivered);
                count(rows, at, cat, &[Channel::InApp], |c| {
                    c.counts.read += 1;
                    if let Some(ms) = took {
                        c.read.record(ms);
                    }
                });
            }
            NotificationEvent::NotificationClicked { .. } if !n.clicked => {
                n.clicked = true;
                count(rows, at, cat, &[Channel::InApp], |c| c.counts.clicked += 1);
            }
            NotificationEvent::NotificationArchived { .. } if !n.archived => {
                n.archived = true;
                count(rows, at, cat, &[Channel::InApp], |c| c.counts.archived += 1);
            }
            NotificationEvent::ChannelSuppressed { channel, rule, .. } => {
                let held = rule == SuppressionRule::QuietHours;
                count(rows, at, cat, &[channel], |c| {
                    if held {
                        c.counts.held += 1;
                    } else {
                        c.counts.suppressed += 1;
                    }
                });
                return Ok(());
            }
            NotificationEvent::DeliveryFailed { channel, .. } => {
                count(rows, at, cat, &[channel], |c| c.counts.failed += 1);
                return Ok(());
            }
            NotificationEvent::NotificationDigested { .. } => {
                count(rows, at, cat, &n.channels, |c| c.counts.digested += 1);
                return Ok(());
            }
            NotificationEvent::NotificationCancelled { .. } => {
                count(rows, at, cat, &n.channels, |c| c.counts.cancelled += 1);
            }
            NotificationEvent::NotificationDeleted { .. } => {
                count(rows, at, cat, &n.channels, |c| c.counts.deleted += 1);
                // Nothing follows a deletion: the notification's row goes.
                rows.remove(&key);
                return Ok(());
            }
            _ => return Ok(()),
        }
        rows.put(&key, 0, Row::Notification(n));
        Ok(())
    }
}

/// The `minute` stream update of the minute bucket under `key`.
fn minute_json(key: &str, row: &Row) -> Option<String> {
    let start = key.strip_prefix("minute:")?.parse().ok()?;
    let Row::Bucket { cells } = row else {
        return None;
    };
    serde_json::to_string(&query::minute_update(start, cells)).ok()
}

/// Applies `change` to the cell of `category` on each of `channels` in the
/// minute, hour and day of `at`; announces the minute's totals.
fn count(
    rows: &mut Rows<Row>,
    at: i64,
    (category, tenant): (&Category, Option<&TenantId>),
    channels: &[Channel],
    change: impl Fn(&mut Cell),
) {
    for g in Granularity::ALL {
        let start = g.start_of(at);
        let key = g.key(start);
        let mut cells = match rows.get(&key) {
            Some(Row::Bucket { cells }) => cells.clone(),
            _ => Vec::new(),
        };
        for channel in channels {
            let at = match cells.iter().position(|c| {
                &c.category == category && c.channel == *channel && c.tenant.as_ref() == tenant
            }) {
                Some(i) => i,
                None => {
                    cells.push(Cell {
                        category: category.clone(),
                        channel: *channel,
                        tenant: tenant.cloned(),
                        counts: Counts::default(),
                        delivery: Latency::default(),
                        seen: Latency::default(),
                        read: Latency::default(),
                    });
                    cells.len() - 1
                }
            };
            change(&mut cells[at]);
        }
        if g == Granularity::Minute {
            rows.announce_row(TOPIC.into(), "minute", &key, minute_json);
        }
        rows.put(&key, g.sort(start), Row::Bucket { cells });
    }
}
