-- The event log: every accepted command's facts, never changed afterwards.
--
-- postgres-es (cqrs-es) writes the first seven columns and names them in its
-- INSERT, so the extra columns below are filled by their defaults.
CREATE TABLE events (
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    -- Position within the aggregate's own stream, from 1. The primary key makes
    -- two writers racing on one aggregate collide: one commits, the other gets a
    -- unique violation that postgres-es reports as a conflict (optimistic concurrency).
    sequence        bigint      NOT NULL CHECK (sequence >= 1),
    event_type      text        NOT NULL,
    event_version   text        NOT NULL,
    payload         jsonb       NOT NULL,
    -- request id, correlation id, causation, actor, command: who and why.
    metadata        jsonb       NOT NULL,
    -- Global order. A bigserial alone is not commit order: a transaction can take
    -- a lower number and commit after a higher one. Readers order by
    -- (transaction_id, global_position) and read only below the oldest running
    -- transaction (pg_snapshot_xmin), so nothing that commits later can land
    -- behind a position they have already passed.
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    global_position bigserial   NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

-- Serves the projectors' page query: WHERE (transaction_id, global_position) > (...)
-- ORDER BY transaction_id, global_position LIMIT n.
CREATE INDEX events_global_order ON events (transaction_id, global_position);

-- Append-only is enforced by the database, not just by convention.
CREATE FUNCTION events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the event log is append-only: % on events is refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER events_no_update_or_delete
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_append_only();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_are_append_only();
