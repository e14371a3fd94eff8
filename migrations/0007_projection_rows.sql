-- Rows of the read models kept by the shared projection store (see
-- src/projections/store): one document per key and version, with one integer
-- sort column (a due time, a bucket start) for range queries. A rebuild
-- writes the next version beside the live one; projection_versions says which
-- one is live.
CREATE TABLE projection_rows (
    projection  text    NOT NULL,
    version     integer NOT NULL,
    key         text    NOT NULL,
    sort        bigint  NOT NULL,
    doc         jsonb   NOT NULL,
    PRIMARY KEY (projection, version, key)
);

CREATE INDEX projection_rows_by_sort ON projection_rows (projection, version, sort, key);
