-- +goose Up

-- Keys the service generates for itself (e.g. the MAC key that fingerprints
-- values in idempotency records), sealed by the KEK like any secret value:
-- a database reader cannot use them.
CREATE TABLE service_keys (
    name        text        PRIMARY KEY,
    ciphertext  bytea       NOT NULL,
    wrapped_dek bytea       NOT NULL,
    kek_id      text        NOT NULL,
    create_time timestamptz NOT NULL
);

-- +goose Down
DROP TABLE service_keys;
