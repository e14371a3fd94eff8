//! The projections a deployment runs, by name: what the engine drives and
//! what the operations endpoints, readiness and the CLI find.
//!
//! `ReadModels` is the one list of read models per backend: a new read model
//! is one line in each constructor (plus its field, for its queries).

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;

use super::analytics::{self, Analytics};
use super::batches::{self, Batches};
use super::engine::ProjectorHandle;
use super::inbox::memory::MemoryInbox;
use super::inbox::postgres::PostgresInbox;
use super::inbox::{self, InboxReader, RowView};
use super::outcomes::{self, Outcomes};
use super::parked::Parking;
use super::rebuild::{RebuildTuning, Rebuildable};
use super::sends::{self, Sends};
use super::store::memory::{MemoryRows, MemoryStore};
use super::store::postgres::{PgModel, PgStore, Publisher};
use super::store::postgres_rows::PgRows;
use super::store::RowReader;
use super::topics::{self, Topics};
use super::Projection;
use crate::reactors::batcher::{self, BatchOrder, Batcher};
use crate::reactors::digests::{self, DigestOrder, Digests};
use crate::reactors::fanout::{self, FanOut};
use crate::reactors::scheduled::{self as schedule, Due, ScheduledDelivery};
use crate::reactors::{Outbox, Pending};
use crate::storage::postgres::PgConnector;
use crate::streams::feed::Feed;
use crate::streams::updates::MemoryUpdateLog;

/// Every projection's name, in the order they are listed.
pub const NAMES: [&str; 10] = [
    inbox::NAME,
    schedule::NAME,
    analytics::NAME,
    topics::NAME,
    sends::NAME,
    fanout::NAME,
    batcher::NAME,
    digests::NAME,
    batches::NAME,
    outcomes::NAME,
];

/// One projection, as the engine and the operations see it.
#[derive(Clone)]
pub struct Registered {
    pub projection: Arc<dyn Projection>,
    pub rebuild: Arc<dyn Rebuildable>,
    pub parking: Arc<dyn Parking>,
    /// How long its projector lets appends gather before a page
    /// (`EngineConfig::settle`).
    pub settle: Duration,
    /// Events per page, where the read model wants more than the setting.
    pub page_size: Option<usize>,
}

impl Registered {
    pub fn of<T: Projection + Rebuildable + Parking + 'static>(store: &Arc<T>) -> Self {
        Self {
            projection: store.clone(),
            rebuild: store.clone(),
            parking: store.clone(),
            settle: Duration::ZERO,
            page_size: None,
        }
    }

    /// With pages of at least `events` events: fewer, larger transactions
    /// for a read model whose rows many events share (counters).
    pub fn paging(mut self, events: usize) -> Self {
        self.page_size = Some(events);
        self
    }

    /// With its projector gathering appends for `settle` before a page.
    pub fn settling(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    pub fn name(&self) -> &'static str {
        self.projection.name()
    }
}

/// The read models of one backend: their queries, and each as a projection.
pub struct ReadModels {
    pub inbox: Arc<dyn InboxReader>,
    pub schedule: Arc<dyn RowReader<Due>>,
    pub analytics: Arc<dyn RowReader<analytics::Row>>,
    /// Topics' subscribers.
    pub topics: Arc<dyn RowReader<topics::Row>>,
    /// Sends to many, and how far each has got.
    pub sends: Arc<dyn RowReader<sends::Row>>,
    /// The pages of sends still to fan out.
    pub fanout: Arc<dyn RowReader<Pending<u64>>>,
    /// Held notifications to add to their batches, and batches to flush.
    pub batcher: Arc<dyn RowReader<Pending<BatchOrder>>>,
    /// Flushed batches' digests, marks and releases.
    pub digests: Arc<dyn RowReader<Pending<DigestOrder>>>,
    /// Every batch, open or flushed.
    pub batches: Arc<dyn RowReader<batches::Row>>,
    /// Experiments' assignments and exposed notifications.
    pub outcomes: Arc<dyn RowReader<outcomes::Row>>,
    /// Each read model as a projection (the inbox first).
    pub registered: Vec<Registered>,
}

impl ReadModels {
    /// `view` renders the inbox rows its stream updates carry.
    pub fn memory(updates: Arc<MemoryUpdateLog>, feed: &Feed, view: RowView) -> Self {
        let inbox = Arc::new(MemoryStore::new(MemoryInbox { view }, updates.clone()));
        inbox.set_feed(feed.clone());
        let schedule = Arc::new(MemoryStore::new(
            MemoryRows(Outbox(ScheduledDelivery)),
            updates.clone(),
        ));
        schedule.set_feed(feed.clone());
        let analytics = Arc::new(MemoryStore::new(MemoryRows(Analytics), updates.clone()));
        analytics.set_feed(feed.clone());
        let topics = Arc::new(MemoryStore::new(MemoryRows(Topics), updates.clone()));
        let sends = Arc::new(MemoryStore::new(MemoryRows(Sends), updates.clone()));
        let fanout = Arc::new(MemoryStore::new(
            MemoryRows(Outbox(FanOut)),
            updates.clone(),
        ));
        let batcher = Arc::new(MemoryStore::new(
            MemoryRows(Outbox(Batcher)),
            updates.clone(),
        ));
        let digests = Arc::new(MemoryStore::new(
            MemoryRows(Outbox(Digests)),
            updates.clone(),
        ));
        let batches = Arc::new(MemoryStore::new(MemoryRows(Batches), updates.clone()));
        batches.set_feed(feed.clone());
        let outcomes = Arc::new(MemoryStore::new(MemoryRows(Outcomes), updates));
        outcomes.set_feed(feed.clone());
        Self {
            registered: tuned([
                Registered::of(&inbox),
                Registered::of(&schedule),
                Registered::of(&analytics),
                Registered::of(&topics),
                Registered::of(&sends),
                Registered::of(&fanout),
                Registered::of(&batcher),
                Registered::of(&digests),
                Registered::of(&batches),
                Registered::of(&outcomes),
            ]),
            inbox,
            schedule,
            analytics,
            topics,
            sends,
            fanout,
            batcher,
            digests,
            batches,
            outcomes,
        }
    }

    /// Queries read through `pool`; the projectors write through
    /// `projecting`, a pool of their own, so that they never wait for the
    /// requests' connections nor take them.
    pub fn postgres(
        pool: &Pool,
        projecting: &Pool,
        connector: &PgConnector,
        publisher: &Arc<Publisher>,
        tuning: RebuildTuning,
        view: RowView,
    ) -> Self {
        let inbox = Arc::new(
            PostgresInbox::new(pool.clone(), connector.clone(), view).with_rebuild_tuning(tuning),
        );
        let schedule = Arc::new(PgRows::new(
            Outbox(ScheduledDelivery),
            pool.clone(),
            connector.clone(),
        ));
        let analytics = Arc::new(PgRows::new(Analytics, pool.clone(), connector.clone()));
        let topics = Arc::new(PgRows::new(Topics, pool.clone(), connector.clone()));
        let sends = Arc::new(PgRows::new(Sends, pool.clone(), connector.clone()));
        let fanout = Arc::new(PgRows::new(Outbox(FanOut), pool.clone(), connector.clone()));
        let batcher = Arc::new(PgRows::new(
            Outbox(Batcher),
            pool.clone(),
            connector.clone(),
        ));
        let digests = Arc::new(PgRows::new(
            Outbox(Digests),
            pool.clone(),
            connector.clone(),
        ));
        let batches = Arc::new(PgRows::new(Batches, pool.clone(), connector.clone()));
        let outcomes = Arc::new(PgRows::new(Outcomes, pool.clone(), connector.clone()));
        let stored = PgStored {
            pool: projecting,
            connector,
            publisher,
        };
        Self {
            registered: tuned([
                stored.of(&inbox),
                stored.of(&schedule),
                stored.of(&analytics),
                stored.of(&topics),
                stored.of(&sends),
                stored.of(&fanout),
                stored.of(&batcher),
                stored.of(&digests),
                stored.of(&batches),
                stored.of(&outcomes),
            ]),
            inbox,
            schedule,
            analytics,
            topics,
            sends,
            fanout,
            batcher,
            digests,
            batches,
            outcomes,
        }
    }

    /// The projection named `name`, or an error that lists the names.
    pub fn find(&self, name: &str) -> Result<&Registered, UnknownProjection> {
        self.registered
            .iter()
            .find(|r| r.name() == name)
            .ok_or_else(|| UnknownProjection(name.to_owned()))
    }
}

/// Each read model with how its projector pages, on either backend.
fn tuned(registered: [Registered; NAMES.len()]) -> Vec<Registered> {
    registered
        .into_iter()
        .map(|r| match r.name() {
            schedule::NAME => r.settling(schedule::SETTLE),
            analytics::NAME => r.settling(analytics::SETTLE).paging(analytics::PAGE),
            _ => r,
        })
        .collect()
}

/// What every read model on the PostgreSQL projection store shares.
struct PgStored<'a> {
    pool: &'a Pool,
    connector: &'a PgConnector,
    publisher: &'a Arc<Publisher>,
}

impl PgStored<'_> {
    /// `model` on the store, as a projection.
    fn of<M: PgModel>(&self, model: &Arc<M>) -> Registered {
        Registered::of(&Arc::new(PgStore::new(
            model.clone(),
            self.pool.clone(),
            self.connector.clone(),
            self.publisher.clone(),
        )))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no projection `{0}`; the projections are: {names}", names = NAMES.join(", "))]
pub struct UnknownProjection(pub String);

/// A projection that runs: its engine handle beside its operations.
#[derive(Clone)]
pub struct Running {
    pub registered: Registered,
    pub projector: ProjectorHandle,
}

impl Running {
    pub fn name(&self) -> &'static str {
        self.registered.name()
    }
}

/// The running projections of this instance.
pub struct Projections {
    /// The inbox, which most queries read.
    inbox: Running,
    all: Vec<Running>,
}

impl Projections {
    /// From the projections as `ReadModels` lists them, each with its handle.
    pub fn new(all: Vec<Running>) -> Result<Self, UnknownProjection> {
        let inbox = all
            .iter()
            .find(|r| r.name() == inbox::NAME)
            .cloned()
            .ok_or_else(|| UnknownProjection(inbox::NAME.to_owned()))?;
        Ok(Self { inbox, all })
    }

    pub fn inbox(&self) -> &Running {
        &self.inbox
    }

    pub fn all(&self) -> &[Running] {
        &self.all
    }

    pub fn get(&self, name: &str) -> Result<&Running, UnknownProjection> {
        self.all
            .iter()
            .find(|r| r.name() == name)
            .ok_or_else(|| UnknownProjection(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::streams::router::Router;

    #[tokio::test]
    async fn the_names_the_api_accepts_are_the_read_models_that_run() {
        let updates = Arc::new(MemoryUpdateLog::new(10));
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        let (feed, _task) = crate::streams::feed::spawn(
            Arc::new(Router::new(16)),
            updates.clone(),
            Duration::from_secs(1),
            stopped,
        );
        let models = ReadModels::memory(updates, &feed, Arc::new(|_| None));
        let names: Vec<&str> = models.registered.iter().map(Registered::name).collect();
        assert_eq!(names, NAMES);
        assert!(models.find("nope").is_err());
    }
}
