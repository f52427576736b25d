-- +goose Up

-- The chain head only moves forward, and the checkpoints are append-only:
-- together with the service role's grants (EnsureServiceRole: SELECT and
-- INSERT on the audit tables, UPDATE on the head only) the service cannot
-- rewrite, cut back or re-sign the log. Only the tables' owner or a
-- superuser can disable these triggers; the external checkpoints catch them.
-- +goose StatementBegin
CREATE FUNCTION audit_head_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' THEN
        RAISE EXCEPTION 'audit_head cannot be deleted or truncated';
    END IF;
    IF NEW.sequence < OLD.sequence OR NEW.chain_start <> OLD.chain_start OR NOT NEW.singleton THEN
        RAISE EXCEPTION 'audit_head only moves forward';
    END IF;
    IF NEW.sequence = OLD.sequence AND NEW.hash <> OLD.hash THEN
        RAISE EXCEPTION 'audit_head only moves forward';
    END IF;
    RETURN NEW;
END
$$;
-- +goose StatementEnd
CREATE TRIGGER audit_head_forward BEFORE UPDATE OR DELETE ON audit_head
    FOR EACH ROW EXECUTE FUNCTION audit_head_forward_only();
CREATE TRIGGER audit_head_no_truncate BEFORE TRUNCATE ON audit_head
    FOR EACH STATEMENT EXECUTE FUNCTION audit_head_forward_only();

-- +goose StatementBegin
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END
$$;
-- +goose StatementEnd
CREATE TRIGGER audit_checkpoints_no_change BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

REVOKE ALL ON audit_events, audit_head, audit_checkpoints FROM PUBLIC;

-- MatchValue (the leak check) finds writes by their value HMAC; only
-- writes carry one.
CREATE INDEX audit_events_value_hmac ON audit_events (value_hmac) WHERE value_hmac IS NOT NULL;

-- +goose Down
DROP INDEX audit_events_value_hmac;
DROP TRIGGER audit_checkpoints_no_truncate ON audit_checkpoints;
DROP TRIGGER audit_checkpoints_no_change ON audit_checkpoints;
DROP TRIGGER audit_head_no_truncate ON audit_head;
DROP TRIGGER audit_head_forward ON audit_head;
DROP FUNCTION audit_append_only();
DROP FUNCTION audit_head_forward_only();
