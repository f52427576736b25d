-- +goose Up

-- One row holding the last committed revision. Every change updates it first
-- inside its own transaction, which serializes writers and makes revision order
-- equal commit order (a sequence would not: a later number can commit first).
CREATE TABLE revision_counter (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    revision  bigint  NOT NULL CHECK (revision >= 0)
);
INSERT INTO revision_counter (singleton, revision) VALUES (true, 0);

CREATE TABLE secrets (
    key              text        PRIMARY KEY,
    category         text        NOT NULL,
    description      text        NOT NULL DEFAULT '',
    restart_required boolean     NOT NULL,
    -- Highest version number ever created (versions are never renumbered).
    current_version  bigint      NOT NULL DEFAULT 0,
    -- Revision of the last change to this secret: its etag.
    revision         bigint      NOT NULL,
    create_time      timestamptz NOT NULL,
    update_time      timestamptz NOT NULL,
    updated_by       text        NOT NULL DEFAULT ''
);
CREATE INDEX secrets_category_key ON secrets (category, key);

CREATE TABLE secret_versions (
    key         text        NOT NULL REFERENCES secrets (key) ON DELETE CASCADE,
    version     bigint      NOT NULL CHECK (version > 0),
    -- 1 enabled, 2 disabled, 3 destroyed (matches the API enum).
    state       smallint    NOT NULL CHECK (state IN (1, 2, 3)),
    -- AES-256-GCM ciphertext under the version's data key; NULL once destroyed.
    ciphertext  bytea,
    -- The data key wrapped by the KEK named in kek_id; NULL once destroyed.
    wrapped_dek bytea,
    -- Fingerprint of the KEK that wrapped the data key (never the KEK URL).
    kek_id      text        NOT NULL,
    create_time timestamptz NOT NULL,
    destroy_time timestamptz,
    created_by  text        NOT NULL DEFAULT '',
    PRIMARY KEY (key, version),
    CHECK ((state = 3) = (ciphertext IS NULL AND wrapped_dek IS NULL))
);
CREATE INDEX secret_versions_kek ON secret_versions (kek_id) WHERE state <> 3;

-- The change log behind WatchChanges: one row per committed revision, written
-- in the same transaction as the change. Never a value.
CREATE TABLE change_log (
    revision         bigint      PRIMARY KEY,
    time             timestamptz NOT NULL,
    kind             smallint    NOT NULL,
    key              text        NOT NULL,
    version          bigint      NOT NULL DEFAULT 0,
    category         text        NOT NULL DEFAULT '',
    restart_required boolean     NOT NULL DEFAULT false,
    -- Extra context without values, e.g. "chat=anthropic/claude-sonnet-4-5".
    detail           text        NOT NULL DEFAULT ''
);

CREATE TABLE audit_events (
    sequence    bigserial   PRIMARY KEY,
    time        timestamptz NOT NULL,
    actor       text        NOT NULL,
    action      text        NOT NULL,
    key         text        NOT NULL DEFAULT '',
    version     bigint      NOT NULL DEFAULT 0,
    outcome     text        NOT NULL,
    request_id  text        NOT NULL DEFAULT '',
    peer        text        NOT NULL DEFAULT '',
    revision    bigint      NOT NULL DEFAULT 0,
    detail      text        NOT NULL DEFAULT ''
);
CREATE INDEX audit_events_key ON audit_events (key, sequence DESC);
CREATE INDEX audit_events_actor ON audit_events (actor, sequence DESC);
CREATE INDEX audit_events_time ON audit_events (time);

-- Idempotency records (AIP-155): the first result of a write, replayed for a
-- retry carrying the same request id. The response holds metadata only.
CREATE TABLE idempotency (
    request_id   text        PRIMARY KEY,
    method       text        NOT NULL,
    request_hash bytea       NOT NULL,
    response     bytea       NOT NULL,
    create_time  timestamptz NOT NULL
);
CREATE INDEX idempotency_time ON idempotency (create_time);

CREATE TABLE provider_defaults (
    use_case    text        PRIMARY KEY,
    provider    text        NOT NULL,
    model       text        NOT NULL,
    revision    bigint      NOT NULL,
    update_time timestamptz NOT NULL,
    updated_by  text        NOT NULL DEFAULT ''
);

-- +goose Down
DROP TABLE provider_defaults;
DROP TABLE idempotency;
DROP TABLE audit_events;
DROP TABLE change_log;
DROP TABLE secret_versions;
DROP TABLE secrets;
DROP TABLE revision_counter;
