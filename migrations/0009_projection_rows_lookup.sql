-- A page's row lookups (projection, version, key) belong to the primary key.
-- The sort index holds the same leading columns and the key too, so a
-- planner with no statistics for a version yet (a young database, a
-- rebuild's next version) took it for lookups and walked every row of the
-- version, about a millisecond per key at 20,000 rows. As a partial index
-- that only a query constraining `sort` can use (any comparison on it
-- implies `sort IS NOT NULL`; the column is NOT NULL, so every row is in
-- it), range queries keep it and lookups cannot take it.
DROP INDEX projection_rows_by_sort;
CREATE INDEX projection_rows_by_sort ON projection_rows (projection, version, sort, key)
    WHERE sort IS NOT NULL;
