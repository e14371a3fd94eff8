-- A recipient's, a tenant's or a category's state is its last event of each
-- type (domain::superseding): a send reads those few events, however many
-- changes came before. This index finds the last event of a type in a
-- stream without walking back through the others. Notification streams,
-- the bulk of the log, are never read this way and are left out, so
-- appending a notification's events costs no more than before; the
-- queries repeat the predicate so that a prepared statement's generic plan
-- can still use the index.
CREATE INDEX events_latest_of_type
    ON events (aggregate_type, aggregate_id, event_type, sequence DESC)
    WHERE aggregate_type <> 'Notification';
