-- +goose Up

-- The audit log becomes a hash chain in one order across replicas: every
-- insert takes the chain head row, numbers its events from the head's
-- sequence (gap-free: a deleted event leaves a hole) and links each event's
-- hash to the previous one.
ALTER TABLE audit_events ALTER COLUMN sequence DROP DEFAULT;
DROP SEQUENCE IF EXISTS audit_events_sequence_seq;
ALTER TABLE audit_events
    ADD COLUMN prev_hash  bytea,
    ADD COLUMN hash       bytea,
    -- HMAC of the value written (never the value), under a service key the
    -- database does not hold in clear.
    ADD COLUMN value_hmac bytea;

CREATE TABLE audit_head (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- Events up to chain_start were written before the chain existed.
    chain_start bigint  NOT NULL,
    sequence    bigint  NOT NULL,
    hash        bytea   NOT NULL
);
INSERT INTO audit_head (singleton, chain_start, sequence, hash)
SELECT true, COALESCE(max(sequence), 0), COALESCE(max(sequence), 0), '\x'::bytea FROM audit_events;

-- Signed checkpoints of the chain head: the signing key is outside the
-- database, so even a rewrite of the whole chain is detected.
CREATE TABLE audit_checkpoints (
    sequence  bigint      PRIMARY KEY,
    hash      bytea       NOT NULL,
    time      timestamptz NOT NULL,
    key_id    text        NOT NULL,
    signature bytea       NOT NULL
);

-- Defence in depth: the log is append-only for the service's role.
-- +goose StatementBegin
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only';
END
$$;
-- +goose StatementEnd
CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
REVOKE UPDATE, DELETE, TRUNCATE ON audit_events FROM CURRENT_USER;

-- +goose Down
GRANT UPDATE, DELETE, TRUNCATE ON audit_events TO CURRENT_USER;
DROP TRIGGER audit_events_no_truncate ON audit_events;
DROP TRIGGER audit_events_no_change ON audit_events;
DROP FUNCTION audit_events_append_only();
DROP TABLE audit_checkpoints;
DROP TABLE audit_head;
ALTER TABLE audit_events DROP COLUMN value_hmac, DROP COLUMN hash, DROP COLUMN prev_hash;
