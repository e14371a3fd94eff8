//! Topics: who subscribes to each, paged by user, and how many. The
//! fan-out of a send to a topic reads its subscribers here, a page at a
//! time, so a topic of any size costs the fan-out one page of memory.
//!
//! Rows: `{topic}/{user}` per subscriber, under the topic's sort value (a
//! stable hash of its name, so one topic is one sort range, by user within
//! it), and `#{topic}` with the topic's count.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::store::{Fold, Rows};
use crate::domain::topic::{membership_id, MembershipEvent, TopicName};
use crate::domain::{Timestamp, UserId};
use crate::storage::LoggedEvent;

pub const NAME: &str = "topics";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "row", rename_all = "snake_case")]
pub enum Row {
    Member { user: UserId, since: Timestamp },
    Count { subscribers: u64 },
}

/// The sort value of `topic`'s rows: the first 62 bits of its name's
/// SHA-256, the same on every instance and release. Topics that share one
/// are told apart by their keys.
pub fn sort_of(topic: &TopicName) -> i64 {
    let digest = Sha256::digest(topic.as_str().as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) >> 2) as i64
}

pub fn count_key(topic: &TopicName) -> String {
    format!("#{}", topic.as_str())
}

pub struct Topics;

impl Fold for Topics {
    const NAME: &'static str = NAME;
    type Input = MembershipEvent;
    type Row = Row;

    fn read(&self, event: &LoggedEvent) -> Result<Option<MembershipEvent>, String> {
        if event.aggregate_type != "TopicMembership" {
            return Ok(None);
        }
        event.decode().map(Some)
    }

    fn keys(&self, input: &MembershipEvent, _: &LoggedEvent) -> Vec<String> {
        let (MembershipEvent::TopicSubscribed { topic, user, .. }
        | MembershipEvent::TopicUnsubscribed { topic, user, .. }) = input;
        vec![membership_id(topic, user), count_key(topic)]
    }

    fn fold(
        &self,
        input: MembershipEvent,
        _: &LoggedEvent,
        rows: &mut Rows<Row>,
    ) -> Result<(), String> {
        let (topic, user, change) = match input {
            MembershipEvent::TopicSubscribed {
                topic,
                user,
                subscribed_at,
            } => (topic, user, Some(subscribed_at)),
            MembershipEvent::TopicUnsubscribed { topic, user, .. } => (topic, user, None),
        };
        let key = membership_id(&topic, &user);
        let had = rows.get(&key).is_some();
        let count = match rows.get(&count_key(&topic)) {
            Some(Row::Count { subscribers }) => *subscribers,
            _ => 0,
        };
        let count = match (change, had) {
            (Some(since), _) => {
                rows.put(&key, sort_of(&topic), Row::Member { user, since });
                count + u64::from(!had)
            }
            (None, true) => {
                rows.remove(&key);
                count.saturating_sub(1)
            }
            (None, false) => count,
        };
        rows.put(
            &count_key(&topic),
            i64::MIN,
            Row::Count { subscribers: count },
        );
        Ok(())
    }
}
