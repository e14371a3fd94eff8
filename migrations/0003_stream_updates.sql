-- Stream updates: what WebSocket subscribers receive, numbered 1, 2, 3, ...
-- without gaps, written by the inbox projector in the same transaction as the
-- read-model change that caused them. A subscriber that reconnects with the
-- number it saw last is brought up to date from here.
CREATE TABLE stream_updates (
    id          bigint      PRIMARY KEY,
    -- `inbox:{user}` or `notification:{id}`
    topic       text        NOT NULL,
    -- `created`, `changed`, `removed` or `counts`
    kind        text        NOT NULL,
    -- the read-model row as REST returns it (or the counts)
    data        jsonb       NOT NULL,
    -- the event that caused it
    tx          bigint      NOT NULL,
    seq         bigint      NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

-- Resume: WHERE topic = ANY($topics) AND id > $cursor ORDER BY id.
CREATE INDEX stream_updates_by_topic ON stream_updates (topic, id);

-- The last number handed out. A sequence would leave holes when a projector
-- transaction rolls back, and a hole is indistinguishable from a lost update;
-- this row is taken under the projector's checkpoint lock, so numbers stay
-- contiguous.
CREATE TABLE stream_update_counter (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    last_id  bigint  NOT NULL
);
INSERT INTO stream_update_counter (last_id) VALUES (0);
