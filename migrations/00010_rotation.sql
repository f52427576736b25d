-- +goose Up

-- Rotation reminders and expiry, modelled on GCP Secret Manager's
-- Secret.rotation (rotation_period, next_rotation_time) and expire_time.
-- rotation_notified_for is the next_rotation_time whose ROTATION_DUE event
-- has been published: a replica publishes only by moving it, in a
-- conditional UPDATE inside the event's write transaction, so one due
-- rotation gives exactly one event however many replicas look for it.
ALTER TABLE secrets
    ADD COLUMN rotation_period_seconds bigint CHECK (rotation_period_seconds > 0),
    ADD COLUMN next_rotation_time timestamptz,
    ADD COLUMN expire_time timestamptz,
    ADD COLUMN rotation_notified_for timestamptz;
CREATE INDEX secrets_next_rotation_time ON secrets (next_rotation_time) WHERE next_rotation_time IS NOT NULL;
CREATE INDEX secrets_expire_time ON secrets (expire_time) WHERE expire_time IS NOT NULL;

-- +goose Down
DROP INDEX secrets_expire_time;
DROP INDEX secrets_next_rotation_time;
ALTER TABLE secrets
    DROP COLUMN rotation_notified_for,
    DROP COLUMN expire_time,
    DROP COLUMN next_rotation_time,
    DROP COLUMN rotation_period_seconds;
