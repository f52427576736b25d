-- +goose Up

-- The principal (token or certificate identity name) that first reported a
-- consumer instance owns it: only it may report its state from then on. Rows
-- from before have no owner and are adopted by their next reporter.
ALTER TABLE consumers ADD COLUMN owner text NOT NULL DEFAULT '';
CREATE INDEX consumers_owner ON consumers (owner);

-- +goose Down
DROP INDEX consumers_owner;
ALTER TABLE consumers DROP COLUMN owner;
