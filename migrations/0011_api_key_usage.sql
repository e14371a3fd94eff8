-- When each API key last authenticated a request. Not an event: a fact that
-- changes on every request would flood the log. Each instance keeps it in
-- memory and writes what changed every few seconds; the newest time wins,
-- so instances writing at once never move it backwards. Keys themselves
-- (created, scopes, revoked) are events of the `ApiKey` streams.
CREATE TABLE api_key_usage (
    key_id        text        PRIMARY KEY,
    last_used_at  timestamptz NOT NULL
);
