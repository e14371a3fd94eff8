//! A reaction's command has exactly one effect however often it is sent:
//! senders racing one command id on an aggregate whose command is not
//! idempotent (a counter), on both backends, one command at a time and in
//! batches, as dispatchers on several instances would send it.

use std::sync::Arc;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use tidings::commands::{CommandError, CommandMetadata, Commands, EventStore, Named, Target};
use tidings::storage::memory::MemoryEventStore;
use tidings::storage::AppendSignal;

use crate::helpers::{limits, postgres_server_url, skipped, TestDb};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Counter {
    count: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum CounterEvent {
    Counted { to: u32 },
}

impl DomainEvent for CounterEvent {
    fn event_type(&self) -> String {
        "Counted".into()
    }
    fn event_version(&self) -> String {
        "1.0".into()
    }
}

struct Count;

impl Named for Count {
    fn name(&self) -> &'static str {
        "Count"
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Counter {
    const TYPE: &'static str = "Counter";
    type Command = Count;
    type Event = CounterEvent;
    type Error = Never;
    type Services = ();

    async fn handle(&mut self, _: Count, _: &(), sink: &EventSink<Self>) -> Result<(), Never> {
        let to = self.count + 1;
        sink.write(CounterEvent::Counted { to }, self).await;
        Ok(())
    }

    fn apply(&mut self, event: CounterEvent) {
        let CounterEvent::Counted { to } = event;
        self.count = to;
    }
}

fn sent_as(id: &str) -> CommandMetadata {
    CommandMetadata {
        command_id: Some(id.to_owned()),
        ..CommandMetadata::default()
    }
}

/// 20 counters, each counted once without an id (so its stream exists);
/// then 8 senders race to send every counter's reaction "tick/{counter}",
/// half one command at a time, half as one batch. Each counter ends at 2.
async fn racing_senders_count_each_reaction_once(commands: Arc<Commands<Counter>>) {
    let none = CommandMetadata::default();
    let ids: Vec<String> = (0..20).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    for id in &ids {
        commands.execute(id, |_| Count, &none, false).await.unwrap();
    }
    let racers: Vec<_> = (0..8)
        .map(|n| {
            let commands = commands.clone();
            let ids = ids.clone();
            tokio::spawn(async move {
                let mut changed = 0;
                if n % 2 == 0 {
                    for id in &ids {
                        let meta = sent_as(&format!("tick/{id}"));
                        let one = commands.execute(id, |_| Count, &meta, false).await?;
                        changed += u64::from(one.changed);
                    }
                } else {
                    let targets: Vec<Target> = ids
                        .iter()
                        .map(|id| Target {
                            aggregate_id: id.clone(),
                            command_id: Some(format!("tick/{id}")),
                        })
                        .collect();
                    let none = CommandMetadata::default();
                    let many = commands.execute_many(&targets, |_, _| Count, &none).await?;
                    changed += many.changed;
                }
                Ok::<_, CommandError<Never>>(changed)
            })
        })
        .collect();
    let mut changed = 0;
    for r in racers {
        changed += r.await.unwrap().expect("a repeat is not an error");
    }
    assert_eq!(changed, 20, "each reaction was recorded by one sender");
    for id in &ids {
        let meta = sent_as(&format!("tick/{id}"));
        let again = commands.execute(id, |_| Count, &meta, false).await.unwrap();
        assert!(!again.changed);
        assert_eq!(again.state, Counter { count: 2 }, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_racing_senders_count_each_reaction_once() {
    let signal = AppendSignal::default();
    let store = EventStore::memory(MemoryEventStore::new(signal.clone()));
    racing_senders_count_each_reaction_once(Arc::new(Commands::new(store, (), signal, 50))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_racing_senders_count_each_reaction_once() {
    let test = "reactions::postgres_racing_senders_count_each_reaction_once";
    let Some(server) = postgres_server_url() else {
        skipped(test, "DATABASE_URL is not set (PostgreSQL tests need it)");
        return;
    };
    let db = TestDb::create(&server).await;
    db.migrate().await;
    let pools = tidings::storage::postgres::connect(&db.url, limits())
        .await
        .expect("connect");
    let store = EventStore::postgres(&pools);
    let commands = Arc::new(Commands::new(store, (), AppendSignal::default(), 50));
    racing_senders_count_each_reaction_once(commands).await;
    drop(pools);
    db.drop_database().await;
}
