-- Poison events. An event a projection cannot apply is retried, then parked
-- here with its error so the projector goes on; later events of the same
-- stream are parked behind it ("held"), so a stream is never applied out of
-- order. Parked events belong to one version of the read model: a rebuild
-- parks what it cannot apply in its own version, and the old version's rows
-- go when it is dropped.
CREATE TABLE parked_events (
    projection      text        NOT NULL,
    version         integer     NOT NULL,
    -- The event's global position.
    tx              bigint      NOT NULL,
    seq             bigint      NOT NULL,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    sequence        bigint      NOT NULL,
    event_type      text        NOT NULL,
    -- Why the projection refused it (for a held event: which one it waits behind).
    error           text        NOT NULL,
    attempts        integer     NOT NULL,
    -- The parked event of the same stream this one waits behind; NULL when
    -- this event failed itself.
    held_tx         bigint,
    held_seq        bigint,
    parked_at       timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, version, tx, seq)
);

-- The projector asks, for each page, which of its streams are held.
CREATE INDEX parked_events_stream ON parked_events (projection, version, aggregate_id);

-- Events an operator gave up on for good. Not per version: a rebuild passes
-- them over as the live projection did.
CREATE TABLE skipped_events (
    projection      text        NOT NULL,
    tx              bigint      NOT NULL,
    seq             bigint      NOT NULL,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    event_type      text        NOT NULL,
    -- The error it was parked with.
    error           text        NOT NULL,
    -- Who asked (the request id of the skip).
    skipped_by      text        NOT NULL,
    skipped_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, tx, seq)
);
