//! Integration tests through the real HTTP surface: the app on port 0,
//! against memory and against PostgreSQL (a fresh database per test, from
//! DATABASE_URL; those tests say loudly that they were skipped when it is unset).

#[macro_use]
mod helpers;

mod access;
mod analytics;
mod batching;
mod bulk;
mod cli;
mod concurrency;
mod digests;
mod errors;
mod events;
mod experiments;
mod fanout;
mod global_log;
mod health;
mod hostile;
mod hostile_credentials;
mod hostile_recipients;
mod hostile_templates;
mod idempotency;
mod inbox;
mod instances;
mod layout;
mod lifecycle;
mod limits;
mod matrix;
mod metrics;
mod operations;
mod outages;
mod parked;
mod preferences;
mod privilege;
mod rate_limits;
mod reactions;
mod read_all;
mod rebuild;
mod rebuild_equivalence;
mod recipients;
mod redis_cluster;
mod restart;
mod scheduled;
mod spec;
mod stream_client;
mod stream_limits;
mod streams;
mod suppression;
mod templates;
mod tenants;
mod tls;
mod tokens;
mod unreadable;
