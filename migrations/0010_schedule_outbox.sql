-- The schedule became the outbox of a reactor: its rows are pending
-- commands (`Pending`: aggregate_id, due_at, urgent, order) where they were
-- due deliveries (notification, deliver_at, priority). Old rows do not
-- read as new ones, so the schedule starts over from the beginning of the
-- log: its rows, parked events and checkpoint go, and the projector folds
-- the log again when the service starts. Deliveries already made are
-- settled by their own events, so none is made twice; those still owed are
-- owed again once the projector has caught up (until then they wait).
-- Skipped events stay skipped.
DELETE FROM projection_rows WHERE projection = 'schedule';
DELETE FROM parked_events WHERE projection = 'schedule';
UPDATE projection_checkpoints SET tx = 0, seq = 0, updated_at = now()
 WHERE projection = 'schedule';
