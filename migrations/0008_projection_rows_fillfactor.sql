-- Room on every page of projection_rows for a row's next version. A
-- counter row (an analytics bucket) is rewritten by every projector page
-- while new rows (one per notification) fill the pages around it; without
-- free space beside it each rewrite is a new index entry in both indexes,
-- and a lookup walks every dead one. With room, the rewrite is a
-- heap-only update that later reads skip in place. Pages written from now
-- on keep 30% free.
ALTER TABLE projection_rows SET (fillfactor = 70);
