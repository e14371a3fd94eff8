//! Where every aggregate's events live: one backend, and an event store per
//! aggregate type made from it on demand, so a new aggregate costs startup
//! nothing but `stores.of::<A>()`.

use cqrs_es::Aggregate;

use super::runner::EventStore;
use crate::storage::memory::MemoryEventStore;
use crate::storage::postgres::PgPools;

#[derive(Clone)]
pub enum EventStores {
    Memory(MemoryEventStore),
    Postgres(Box<PgPools>),
}

impl EventStores {
    /// The event store of aggregate type `A` on this backend.
    pub fn of<A: Aggregate>(&self) -> EventStore<A> {
        match self {
            Self::Memory(events) => EventStore::memory(events.clone()),
            Self::Postgres(pools) => EventStore::postgres(pools),
        }
    }
}
