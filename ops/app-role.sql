-- The role `tidings serve` runs as: least privilege.
--
-- It reads and appends events, but can neither change nor delete one, nor
-- drop or disable the trigger that keeps the log append-only: only the
-- tables' owner can, and the owner is the role that runs `tidings migrate`
-- (and `tidings replay`). It writes the read models, checkpoints, parked
-- events and stream updates it maintains, and creates nothing.
--
-- Run as the owner, in the tidings database, after `tidings migrate`:
--   psql "$OWNER_DATABASE_URL" -v ON_ERROR_STOP=1 -f ops/app-role.sql
-- Replace tidings_app and its password with your own. Then serve with
--   DATABASE_URL=postgres://tidings_app:...@host/db tidings serve
-- Roles are cluster-wide; the grants are this database's.

CREATE ROLE tidings_app LOGIN PASSWORD 'change-me';

GRANT USAGE ON SCHEMA public TO tidings_app;

-- The log: read and append, nothing else (no UPDATE, DELETE, TRUNCATE).
GRANT SELECT, INSERT ON events TO tidings_app;
GRANT USAGE ON SEQUENCE events_global_position_seq TO tidings_app;

-- Which migrations the database has (serve checks; only the owner migrates).
GRANT SELECT ON _sqlx_migrations TO tidings_app;

-- What the projectors maintain. A rebuild (run as the owner) gives the
-- table it builds the grants of the one it replaces.
GRANT SELECT, INSERT, UPDATE ON projection_checkpoints TO tidings_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON inbox_notifications TO tidings_app;
GRANT SELECT ON inbox_live, projection_versions TO tidings_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON parked_events TO tidings_app;
GRANT SELECT, INSERT ON skipped_events TO tidings_app;
GRANT SELECT, INSERT, DELETE ON stream_updates TO tidings_app;
GRANT SELECT, UPDATE ON stream_update_counter TO tidings_app;
