//! Live streams of projection updates.
//!
//! The inbox projection records, in the same transaction as its read model, one
//! update per changed row and topic (`inbox:{user}`, `notification:{id}`),
//! numbered 1, 2, 3, ... with no gaps. That numbered log is what makes streams
//! resumable: a subscriber that reconnects with the last cursor it saw gets
//! every later update of its topics from the log, then live ones, with nothing
//! missing and nothing twice at the seam.
//!
//! - [`updates`]: the update record, topics and cursors, and the update log
//!   (memory ring or PostgreSQL table).
//! - [`feed`]: brings each instance's copy of the numbered sequence up to date,
//!   in order, from the local projector, from Redis, or by reading the log
//!   where something was missed, and hands it to the router.
//! - [`router`]: routes each update to the bounded queues of the connections
//!   subscribed to its topic; a queue that is full marks its connection slow.
//! - [`socket`]: one WebSocket connection: subscribe, replay, live, heartbeat.
//! - [`credential`]: what a connection acts as, as the API decided.
//! - [`fanout`]: Redis pub/sub between instances (fred).

pub mod addresses;
pub mod credential;
pub mod fanout;
pub mod feed;
pub mod router;
pub mod socket;
pub mod updates;
