-- Rebuilds without downtime. A projection's read model lives in a versioned
-- table; readers go through a view that names the live version, so switching
-- versions is one CREATE OR REPLACE VIEW, atomic for every instance.
CREATE TABLE projection_versions (
    projection  text    PRIMARY KEY,
    version     integer NOT NULL,
    -- The table the live projector writes and `inbox_live` reads.
    read_table  text    NOT NULL
);
INSERT INTO projection_versions (projection, version, read_table)
VALUES ('inbox', 1, 'inbox_notifications');

CREATE VIEW inbox_live AS SELECT * FROM inbox_notifications;
