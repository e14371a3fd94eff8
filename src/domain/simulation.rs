//! What-if: a proposed batching policy replayed over past notifications,
//! through the same batch rules the live path runs (`Batch::decide`), in
//! the order they were created, each batch flushing at the time its policy
//! says. Pure: no IO, no clock.

use std::collections::{BTreeMap, BTreeSet};

use super::batch::{Batch, BatchCommand, BatchEvent, BatchItem, Opening};
use super::batching::BatchPolicy;
use super::contact::TimeZone;
use super::{NewNotification, NotificationId, Timestamp, UserId};

/// One past notification as the simulation replays it.
#[derive(Debug, Clone)]
pub struct Past {
    pub id: NotificationId,
    pub content: NewNotification,
    pub created_at: Timestamp,
    /// The recipient's time zone (for a schedule).
    pub time_zone: TimeZone,
}

/// What one recipient would have received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Received {
    /// Notifications delivered on their own: not batched (urgent,
    /// scheduled, a key that does not render), a batch's first under
    /// `first_item_immediately`, or below `min_items`.
    pub notifications: u64,
    /// Digests.
    pub digests: u64,
    /// Notifications a digest carried.
    pub digested: u64,
}

/// The outcome of a simulation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Simulated {
    pub recipients: BTreeMap<UserId, Received>,
    /// How long each notification would have waited (ms), in order.
    pub delays_ms: Vec<u64>,
}

impl Simulated {
    fn received(&mut self, user: &UserId) -> &mut Received {
        self.recipients.entry(user.clone()).or_default()
    }
}

/// Replays `past` (in creation order) through `policy` at `version`:
/// every batch flushes when its policy says, the last ones too (after the
/// range, as they would).
pub fn simulate(policy: &BatchPolicy, version: u64, past: &[Past]) -> Simulated {
    let mut out = Simulated::default();
    let mut batches: BTreeMap<String, (Batch, UserId)> = BTreeMap::new();
    // Open batches by when they flush by time.
    let mut due: BTreeSet<(Timestamp, String)> = BTreeSet::new();
    for p in past {
        flush_due(&mut batches, &mut due, &mut out, Some(p.created_at));
        let c = &p.content;
        let key = if c.priority.may_be_held() && c.deliver_at.is_none_or(|d| d <= p.created_at) {
            policy.key_for(c).ok()
        } else {
            None
        };
        let Some(key) = key else {
            out.received(&c.recipient).notifications += 1;
            out.delays_ms.push(0);
            continue;
        };
        let stream = super::batch::stream_id(&c.category, &c.recipient, &key);
        let (batch, _) = batches
            .entry(stream.clone())
            .or_insert_with(|| (Batch::default(), c.recipient.clone()));
        let before = batch.current.as_ref().map(|b| (b.number, b.flush_at));
        let command = BatchCommand::Add {
            item: BatchItem {
                id: p.id,
                title: c.title.clone(),
                actor: None,
                channels: c.channels.clone(),
                added_at: p.created_at,
            },
            opening: Box::new(Opening {
                category: c.category.clone(),
                recipient: c.recipient.clone(),
                key,
                group_key: c.group_key.clone(),
                tenant: c.tenant.clone(),
                policy: policy.clone(),
                policy_version: version,
                time_zone: p.time_zone,
            }),
            at: p.created_at,
        };
        let Ok(events) = batch.decide(command) else {
            continue;
        };
        if let Some((_, flush_at)) = before {
            due.remove(&(flush_at, stream.clone()));
        }
        for event in events {
            if let BatchEvent::BatchItemAdded { released: true, .. } = event {
                out.received(&c.recipient).notifications += 1;
                out.delays_ms.push(0);
            }
            tally(batch, &c.recipient, &event, &mut out);
            batch.apply(event);
        }
        if let Some(open) = batch.current.as_ref().filter(|b| b.flushed.is_none()) {
            due.insert((open.flush_at, stream));
        }
    }
    flush_due(&mut batches, &mut due, &mut out, None);
    out
}

/// Flushes the batches due by `until` (every one when None), by time.
fn flush_due(
    batches: &mut BTreeMap<String, (Batch, UserId)>,
    due: &mut BTreeSet<(Timestamp, String)>,
    out: &mut Simulated,
    until: Option<Timestamp>,
) {
    while let Some((at, stream)) = due.first().cloned() {
        if until.is_some_and(|t| at > t) {
            return;
        }
        due.pop_first();
        let Some((batch, user)) = batches.get_mut(&stream) else {
            continue;
        };
        let Some(number) = batch.current.as_ref().map(|b| b.number) else {
            continue;
        };
        let flush = BatchCommand::Flush {
            number,
            manual: false,
            at,
        };
        if let Ok(events) = batch.decide(flush) {
            let user = user.clone();
            for event in events {
                tally(batch, &user, &event, out);
                batch.apply(event);
            }
        }
    }
}

/// Counts what `event`, when it is a flush of `batch` (before it), delivers
/// to `user`: the digest it decided on, or its items one by one.
fn tally(batch: &Batch, user: &UserId, event: &BatchEvent, out: &mut Simulated) {
    let BatchEvent::BatchFlushed {
        digest, flushed_at, ..
    } = event
    else {
        return;
    };
    let Some(b) = &batch.current else {
        return;
    };
    let count = b.items.len() as u64;
    for item in &b.items {
        out.delays_ms
            .push((*flushed_at - item.added_at).num_milliseconds().max(0) as u64);
    }
    let r = out.received(user);
    if digest.is_some() {
        r.digests += 1;
        r.digested += count;
    } else {
        r.notifications += count;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::batching::{Cadence, Every, Schedule};
    use crate::domain::local_time::LocalTime;
    use crate::domain::{Body, Category, Channel, Priority, Title};

    fn utc(s: &str) -> Timestamp {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn past(n: u128, user: &str, at: &str, zone: &str) -> Past {
        Past {
            id: NotificationId(uuid::Uuid::from_u128(n)),
            content: NewNotification {
                recipient: UserId::parse(user).unwrap(),
                category: Category::parse("comments").unwrap(),
                title: Title::parse("Reply").unwrap(),
                body: Body::parse("").unwrap(),
                data: Default::default(),
                priority: Priority::Normal,
                channels: vec![Channel::InApp],
                group_key: None,
                deliver_at: None,
                tenant: None,
                template: None,
                experiment: None,
            },
            created_at: utc(at),
            time_zone: TimeZone::parse(zone).unwrap(),
        }
    }

    /// Given a daily 09:00 digest, items at 10:00 local the day before each
    /// 2026 DST change in Berlin and New York, and in Kolkata (no DST): each
    /// recipient's digest goes at 09:00 local, 23 local hours later, which
    /// is 22 h when the clocks spring forward and 24 h when they fall back.
    #[test]
    fn a_daily_schedule_flushes_at_each_recipients_local_time_across_dst() {
        let cadence = Cadence::Schedule(Schedule {
            every: Every::Day,
            at: LocalTime::parse("09:00").unwrap(),
            weekday: None,
        });
        let policy = BatchPolicy::new(cadence, 100, None, false, None).unwrap();
        let cases = [
            // 10:00 CET; next 09:00 is CEST (UTC+2): 07:00Z, 22 h later.
            ("berlin", "2026-03-28T09:00:00Z", "Europe/Berlin", 22 * 3600),
            // 10:00 EDT; next 09:00 is EST (UTC-5): 14:00Z, 24 h later.
            (
                "new-york",
                "2026-10-31T14:00:00Z",
                "America/New_York",
                24 * 3600,
            ),
            // 10:00 IST; 09:00 IST next day: 23 h later.
            ("kolkata", "2026-03-28T04:30:00Z", "Asia/Kolkata", 23 * 3600),
        ];
        for (user, at, zone, held_s) in cases {
            let out = simulate(
                &policy,
                1,
                &[past(1, user, at, zone), past(2, user, at, zone)],
            );
            let r = out.recipients[&UserId::parse(user).unwrap()];
            assert_eq!(
                (r.digests, r.digested, r.notifications),
                (1, 2, 0),
                "{user}"
            );
            assert_eq!(out.delays_ms, vec![held_s * 1000; 2], "{user}");
        }
    }

    #[test]
    fn urgent_and_unkeyed_notifications_are_never_held() {
        let cadence = Cadence::Window(crate::domain::batching::Window::Fixed { seconds: 60 });
        let key =
            crate::domain::batching::KeyTemplate::parse("{{ data.thread }}", |_| Ok(())).unwrap();
        let policy = BatchPolicy::new(cadence, 10, Some(key), false, None).unwrap();
        let mut urgent = past(1, "u", "2026-12-01T00:00:00Z", "UTC");
        urgent.content.priority = Priority::Urgent;
        urgent.content.data.insert("thread".into(), "t".into());
        let unkeyed = past(2, "u", "2026-12-01T00:00:01Z", "UTC");
        let out = simulate(&policy, 1, &[urgent, unkeyed]);
        let r = out.recipients[&UserId::parse("u").unwrap()];
        assert_eq!((r.notifications, r.digests), (2, 0));
        assert_eq!(out.delays_ms, vec![0, 0]);
    }
}
