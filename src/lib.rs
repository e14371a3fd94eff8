//! tidings: an event-sourced CQRS notification service.
//!
//! How a request flows, and where each step lives:
//!
//! - [`access`]: who is asking (API keys, user tokens) and how fast they may.
//! - [`api`]: poem-openapi endpoints, behind the gate that enforces each
//!   operation's access rule. Parses strictly, validates into domain
//!   value types, maps every error to `application/problem+json`.
//! - [`commands`]: loads a notification's stream, lets the aggregate decide,
//!   appends with an expected-version check (retrying conflicts), answers with
//!   the cursor of the last event.
//! - [`domain`]: pure rules: value types, commands, events, the aggregate.
//! - [`storage`]: the event store (memory, or PostgreSQL through postgres-es)
//!   and the global log reader, in commit order.
//! - [`projections`]: the projector engine, the projection store and the
//!   read models on it (the inbox, the schedule, analytics), by name in the
//!   registry; each page of events and its checkpoint commit together. With
//!   PostgreSQL one instance at a time runs each projector (advisory-lock
//!   election).
//! - [`reactors`]: the timers, which turn what the schedule says is due into
//!   commands.
//! - [`streams`]: WebSocket subscribers of projection updates, resumable from
//!   a cursor; Redis carries updates between instances.
//! - [`operate`]: the operator commands (`tidings replay`, `tidings parked`).
//!
//! [`Application::build`] (in [`startup`]) wires these together; `main` and
//! the tests share it.

pub mod access;
pub mod api;
pub mod commands;
pub mod config;
pub mod domain;
pub mod memory_limit;
pub mod operate;
pub mod projections;
pub mod reactors;
pub mod render;
pub mod server;
pub mod startup;
pub mod storage;
pub mod streams;
pub mod telemetry;
pub mod transfer;

pub use api::state::{AppState, Streams};
pub use startup::{openapi_json, Application, Service};
