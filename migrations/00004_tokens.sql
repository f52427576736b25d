-- +goose Up

-- Bearer tokens. Only the SHA-256 of a token is stored (tokens carry 256
-- bits of randomness, so no slow hash is needed); the name is the actor the
-- audit log records.
CREATE TABLE tokens (
    name          text        PRIMARY KEY,
    token_hash    bytea       NOT NULL UNIQUE,
    prefix        text        NOT NULL,
    role          text        NOT NULL CHECK (role IN ('admin', 'writer', 'reader', 'auditor')),
    key_patterns  text[]      NOT NULL DEFAULT '{}',
    categories    text[]      NOT NULL DEFAULT '{}',
    expire_time   timestamptz,
    create_time   timestamptz NOT NULL,
    created_by    text        NOT NULL,
    last_use_time timestamptz,
    revoke_time   timestamptz
);

-- +goose Down
DROP TABLE tokens;
