//! Reading states their last events make whole (`domain::superseding`):
//! the last event of each type per stream, for many streams in one read. A
//! stream whose last events predate their numbering (recorded by an
//! earlier release) is folded whole instead, so the answer is the same
//! either way; only its cost differs.

use std::collections::HashMap;

use cqrs_es::Aggregate;

use super::runner::Current;
use crate::domain::superseding::Superseding;
use crate::storage::repository::UnreadableEvent;
use crate::storage::{EventLog, Position, SharedEvent, StorageError};

/// A stream as read: its state, or the first of its events this release
/// cannot read.
pub type Read<A> = Result<Current<A>, Box<UnreadableEvent>>;

/// The states of the streams `ids`, each as its whole history leaves it;
/// a stream with no events is the default state. Only the streams that
/// hold an event recorded before numbering are read whole.
pub async fn states<A>(
    log: &dyn EventLog,
    ids: &[String],
) -> Result<HashMap<String, Read<A>>, StorageError>
where
    A: Aggregate + Superseding<Event = <A as Aggregate>::Event>,
{
    let last = log.latest(A::TYPE, Some(ids), A::EVENT_TYPES, 0).await?;
    let mut states = from_last::<A>(log, &last).await?;
    for id in ids {
        states.entry(id.clone()).or_insert_with(|| Ok(empty()));
    }
    Ok(states)
}

/// The state of every stream of `A` that has one (at most `limit` last
/// events read), as [`states`].
pub async fn every<A>(
    log: &dyn EventLog,
    limit: usize,
) -> Result<HashMap<String, Read<A>>, StorageError>
where
    A: Aggregate + Superseding<Event = <A as Aggregate>::Event>,
{
    let last = log.latest(A::TYPE, None, A::EVENT_TYPES, limit).await?;
    from_last::<A>(log, &last).await
}

fn empty<A: Default>() -> Current<A> {
    Current {
        state: A::default(),
        version: 0,
        position: Position::START,
    }
}

/// The states the last events make whole; a stream with an event among
/// them that has no number (or cannot be read: the whole read says which)
/// is read whole.
async fn from_last<A>(
    log: &dyn EventLog,
    last: &[SharedEvent],
) -> Result<HashMap<String, Read<A>>, StorageError>
where
    A: Aggregate + Superseding<Event = <A as Aggregate>::Event>,
{
    let mut states = HashMap::new();
    let mut unnumbered = Vec::new();
    for (id, events) in by_stream(last) {
        let decoded: Option<Vec<<A as Aggregate>::Event>> = events
            .iter()
            .map(|e| e.decode().ok().filter(A::numbered))
            .collect();
        match decoded {
            Some(decoded) => {
                let mut current = empty::<A>();
                for (event, payload) in events.iter().zip(decoded) {
                    applied(&mut current, event, payload);
                }
                states.insert(id.to_owned(), Ok(current));
            }
            None => unnumbered.push(id.to_owned()),
        }
    }
    if !unnumbered.is_empty() {
        let whole = log.streams(A::TYPE, &unnumbered).await?;
        for (id, events) in by_stream(&whole) {
            states.insert(id.to_owned(), fold::<A>(events));
        }
    }
    Ok(states)
}

/// Consecutive events of one stream at a time (the reads answer stream
/// after stream).
fn by_stream(events: &[SharedEvent]) -> impl Iterator<Item = (&str, &[SharedEvent])> {
    events
        .chunk_by(|a, b| a.aggregate_id == b.aggregate_id)
        .map(|chunk| (chunk[0].aggregate_id.as_str(), chunk))
}

fn applied<A: Aggregate>(current: &mut Current<A>, event: &SharedEvent, payload: A::Event) {
    current.state.apply(payload);
    current.version = event.sequence.max(0) as u64;
    current.position = event.position;
}

fn fold<A: Aggregate>(events: &[SharedEvent]) -> Read<A> {
    let mut current = empty::<A>();
    for event in events {
        let payload = event
            .decode::<A::Event>()
            .map_err(|reason| Box::new(UnreadableEvent::of(event, reason)))?;
        applied(&mut current, event, payload);
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use chrono::{DateTime, Utc};
    use cqrs_es::persist::SerializedEvent;
    use serde_json::{json, Value};

    use super::*;
    use crate::domain::recipient::Recipient;
    use crate::domain::Channel;
    use crate::storage::memory::MemoryEventStore;
    use crate::storage::AppendSignal;

    /// The memory log, counting the events its reads answer.
    struct Counting {
        log: MemoryEventStore,
        read: AtomicUsize,
    }

    impl Counting {
        fn counted(&self, events: Vec<SharedEvent>) -> Vec<SharedEvent> {
            self.read.fetch_add(events.len(), Ordering::Relaxed);
            events
        }
    }

    #[async_trait]
    impl EventLog for Counting {
        async fn read_after(
            &self,
            after: Position,
            limit: usize,
        ) -> Result<Vec<SharedEvent>, StorageError> {
            Ok(self.counted(self.log.read_after(after, limit).await?))
        }
        async fn position_of(
            &self,
            t: &str,
            id: &str,
            sequence: i64,
        ) -> Result<Option<Position>, StorageError> {
            self.log.position_of(t, id, sequence).await
        }
        async fn stream(
            &self,
            t: &str,
            id: &str,
            after: i64,
            limit: usize,
        ) -> Result<Vec<SharedEvent>, StorageError> {
            Ok(self.counted(self.log.stream(t, id, after, limit).await?))
        }
        async fn recipient_history(
            &self,
            r: &str,
            until: Position,
            by: DateTime<Utc>,
            limit: usize,
        ) -> Result<Vec<SharedEvent>, StorageError> {
            Ok(self.counted(self.log.recipient_history(r, until, by, limit).await?))
        }
        async fn streams(&self, t: &str, ids: &[String]) -> Result<Vec<SharedEvent>, StorageError> {
            Ok(self.counted(self.log.streams(t, ids).await?))
        }
        async fn latest(
            &self,
            t: &str,
            ids: Option<&[String]>,
            types: &[&str],
            limit: usize,
        ) -> Result<Vec<SharedEvent>, StorageError> {
            Ok(self.counted(self.log.latest(t, ids, types, limit).await?))
        }
        async fn streams_since(
            &self,
            t: &str,
            ids: &[String],
            resume_at: &str,
        ) -> Result<Vec<SharedEvent>, StorageError> {
            Ok(self.counted(self.log.streams_since(t, ids, resume_at).await?))
        }
        async fn of_type(&self, t: &str, limit: usize) -> Result<Vec<SharedEvent>, StorageError> {
            Ok(self.counted(self.log.of_type(t, limit).await?))
        }
        async fn behind(
            &self,
            after: Position,
        ) -> Result<(u64, Option<DateTime<Utc>>), StorageError> {
            self.log.behind(after).await
        }
        async fn reaches(&self, position: Position) -> Result<bool, StorageError> {
            self.log.reaches(position).await
        }
        async fn ping(&self) -> Result<(), StorageError> {
            self.log.ping().await
        }
    }

    fn log() -> Counting {
        Counting {
            log: MemoryEventStore::new(AppendSignal::default()),
            read: AtomicUsize::new(0),
        }
    }

    /// Appends event `sequence` of recipient `id`; `version: None` writes
    /// it as a release before numbering did.
    fn append(
        log: &Counting,
        id: &str,
        sequence: usize,
        event: &str,
        body: Value,
        version: Option<u64>,
    ) {
        let mut body = body;
        body["changed_at"] = json!("2026-01-01T00:00:00Z");
        if let Some(v) = version {
            body["version"] = json!(v);
        }
        log.log
            .append(vec![SerializedEvent::new(
                id.to_owned(),
                sequence,
                "Recipient".into(),
                event.into(),
                "1.0".into(),
                json!({ event: body }),
                json!({}),
            )])
            .expect("appended");
    }

    fn profile(name: &str) -> Value {
        json!({"profile": {"display_name": name}})
    }

    fn email_off() -> Value {
        json!({"preferences": {"channels": {"email": false}}})
    }

    async fn one(log: &Counting, id: &str) -> Current<Recipient> {
        states::<Recipient>(log, &[id.to_owned()])
            .await
            .expect("read")
            .remove(id)
            .expect("answered")
            .expect("readable")
    }

    #[tokio::test]
    async fn ten_thousand_changes_read_as_two_events_and_as_the_whole_fold() {
        let log = log();
        let mut sequence = 0;
        let mut next = || {
            sequence += 1;
            sequence
        };
        append(
            &log,
            "ann",
            next(),
            "RecipientPreferencesChanged",
            email_off(),
            Some(1),
        );
        for v in 1..=10_000 {
            append(
                &log,
                "ann",
                next(),
                "RecipientProfileChanged",
                profile(&format!("Ann {v}")),
                Some(v),
            );
        }
        log.read.store(0, Ordering::Relaxed);
        let read = one(&log, "ann").await;
        assert_eq!(
            log.read.load(Ordering::Relaxed),
            2,
            "the last change of each kind"
        );

        let whole = log.log.stream("Recipient", "ann", 0, 20_000).await.unwrap();
        let folded = fold::<Recipient>(&whole).unwrap();
        assert_eq!(read.state, folded.state);
        assert_eq!(
            (read.version, read.position),
            (folded.version, folded.position)
        );
        assert_eq!(
            (read.state.version, read.state.preferences_version),
            (10_000, 1)
        );
        assert_eq!(
            read.state.preferences.channels.get(&Channel::Email),
            Some(&false)
        );
        assert_eq!(read.version, 10_001, "the stream's last sequence");
    }

    #[tokio::test]
    async fn a_stream_recorded_before_numbering_is_folded_whole() {
        let log = log();
        append(
            &log,
            "old",
            1,
            "RecipientProfileChanged",
            profile("Old 1"),
            None,
        );
        append(
            &log,
            "old",
            2,
            "RecipientPreferencesChanged",
            email_off(),
            None,
        );
        append(
            &log,
            "old",
            3,
            "RecipientProfileChanged",
            profile("Old 2"),
            None,
        );
        // A newer release's change after them: numbered by the fold.
        append(
            &log,
            "old",
            4,
            "RecipientPreferencesChanged",
            json!({"preferences": {}}),
            Some(2),
        );
        append(
            &log,
            "new",
            1,
            "RecipientProfileChanged",
            profile("New"),
            Some(1),
        );

        let states = states::<Recipient>(&log, &["old".into(), "new".into(), "none".into()])
            .await
            .unwrap();
        let old = states["old"].as_ref().unwrap();
        assert_eq!((old.state.version, old.state.preferences_version), (2, 2));
        assert_eq!(old.version, 4);
        assert!(
            old.state.preferences.channels.is_empty(),
            "the last preferences"
        );
        let new = states["new"].as_ref().unwrap();
        assert_eq!((new.state.version, new.version), (1, 1));
        let none = states["none"].as_ref().unwrap();
        assert_eq!((none.version, &none.state), (0, &Recipient::default()));
        // Only the unnumbered stream was read whole: 3 last events, then its 4.
        assert_eq!(log.read.load(Ordering::Relaxed), 3 + 4);
    }

    #[tokio::test]
    async fn an_unreadable_last_event_is_named_and_an_old_one_is_not_read() {
        let log = log();
        append(
            &log,
            "x",
            1,
            "RecipientProfileChanged",
            json!({"profile": 7}),
            Some(1),
        );
        append(
            &log,
            "x",
            2,
            "RecipientProfileChanged",
            profile("X"),
            Some(2),
        );
        append(
            &log,
            "y",
            1,
            "RecipientProfileChanged",
            profile("Y"),
            Some(1),
        );
        append(
            &log,
            "y",
            2,
            "RecipientPreferencesChanged",
            json!({"preferences": 7}),
            Some(1),
        );
        let states = states::<Recipient>(&log, &["x".into(), "y".into()])
            .await
            .unwrap();
        assert_eq!(
            states["x"].as_ref().unwrap().state.version,
            2,
            "the unreadable first change is superseded"
        );
        let unreadable = states["y"]
            .as_ref()
            .expect_err("its preferences cannot be read");
        assert_eq!(unreadable.sequence, 2, "{unreadable}");
    }

    #[tokio::test]
    async fn notification_streams_are_refused() {
        let log = log();
        let err = log
            .latest("Notification", None, &["NotificationCreated"], 10)
            .await
            .expect_err("refused");
        let words = crate::storage::error_chain(&err);
        assert!(words.contains("Notification streams"), "{words}");
    }
}
