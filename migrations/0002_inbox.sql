-- Projector checkpoints: the last global position each projector has applied.
-- A read-model change and its checkpoint commit in one transaction, so a
-- restart resumes exactly where the last commit left off (exactly-once).
CREATE TABLE projection_checkpoints (
    projection  text        PRIMARY KEY,
    tx          bigint      NOT NULL,
    seq         bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The inbox read model: one row per notification that exists (deleted ones
-- leave), holding its folded state. The columns the inbox queries filter and
-- sort on are real, indexed columns; `state` is what the API renders.
CREATE TABLE inbox_notifications (
    id          uuid    PRIMARY KEY,
    recipient   text    NOT NULL,
    category    text    NOT NULL,
    lifecycle   text    NOT NULL,
    -- Delivered on the in-app channel: visible in the recipient's inbox.
    in_inbox    boolean NOT NULL,
    read        boolean NOT NULL,
    seen        boolean NOT NULL,
    archived    boolean NOT NULL,
    -- Global position of the in-app delivery: the inbox's newest-first order.
    -- Positions grow in commit order, so a page boundary never moves under
    -- concurrent inserts.
    inbox_tx    bigint,
    inbox_seq   bigint,
    state       jsonb   NOT NULL,
    -- Global position of the last event folded into this row.
    last_tx     bigint  NOT NULL,
    last_seq    bigint  NOT NULL
);

-- Inbox pages: WHERE recipient = $1 AND archived = $2 [AND (inbox_tx, inbox_seq) < cursor]
-- ORDER BY inbox_tx DESC, inbox_seq DESC.
CREATE INDEX inbox_page ON inbox_notifications (recipient, archived, inbox_tx DESC, inbox_seq DESC)
    WHERE in_inbox;

-- The badge counts, exact by construction (counted, not maintained).
CREATE INDEX inbox_unread ON inbox_notifications (recipient)
    WHERE in_inbox AND NOT read AND NOT archived;
CREATE INDEX inbox_unseen ON inbox_notifications (recipient)
    WHERE in_inbox AND NOT seen AND NOT archived;
