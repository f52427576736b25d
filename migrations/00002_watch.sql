-- +goose Up

-- Service instances that consume secrets, for restart tracking: the revision
-- whose values each runs with, and when it was last seen.
CREATE TABLE consumers (
    service         text        NOT NULL,
    instance        text        NOT NULL,
    loaded_revision bigint      NOT NULL,
    keys            text[]      NOT NULL DEFAULT '{}',
    categories      text[]      NOT NULL DEFAULT '{}',
    first_seen      timestamptz NOT NULL,
    last_seen       timestamptz NOT NULL,
    PRIMARY KEY (service, instance)
);

CREATE INDEX change_log_time ON change_log (time);

-- +goose Down
DROP INDEX change_log_time;
DROP TABLE consumers;
