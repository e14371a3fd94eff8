//! PostgreSQL: events, the global log and read models through
//! deadpool-postgres; migrations through sqlx's migrator on a connection of
//! their own.

mod append;
mod connect;
mod json;
mod log;
pub mod tls;

pub use append::{AppendError, PgAppender};
pub use connect::{
    connect, deployment_channel, migrate, migrate_if_needed, redact, require_schema, PgConnector,
    PgPools, SessionLimits, MIGRATOR,
};
pub use json::{check_json, unreadable_metadata, RawJson};
pub use log::{row_to_event, PgEventLog};
