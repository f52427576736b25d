-- +goose Up

-- Expiry events (issue 16 item 3): when a secret's expire_time passes, one
-- SECRET_EXPIRED change is published so clients drop a cached value and
-- watchers learn of it. expiry_notified_for is the expire_time whose event
-- has been published: a replica publishes only by moving it, in a
-- conditional UPDATE inside the event's write transaction (as
-- rotation_notified_for in 00010), so one expiry gives exactly one event
-- however many replicas look for it. A later, different expire_time that
-- passes is published again.
ALTER TABLE secrets ADD COLUMN expiry_notified_for timestamptz;
-- Secrets that had already expired before this migration are published by
-- the first check after it: clients may still hold their values.

-- +goose Down
ALTER TABLE secrets DROP COLUMN expiry_notified_for;
