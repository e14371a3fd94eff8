-- Time travel (the inbox as it was at a time or cursor) starts from the
-- notifications ever created for a recipient: this index finds them without
-- reading the whole log.
CREATE INDEX events_created_recipient
    ON events ((payload -> 'NotificationCreated' ->> 'recipient'))
    WHERE event_type = 'NotificationCreated';
