-- +goose Up

-- The service role keeps INSERT on audit_events for replicas of the
-- previous release (they chain their events themselves, under the head
-- lock). Nothing checked the sequence it wrote: events numbered 0, -7,
-- head+1000 or a duplicate of a chained one were stored, listed by
-- ListAudit, and never walked by a verification (which reads (from, head]).
-- From now on every insert must extend the chain from its head, gap-free and
-- in order, and no event may stay past the head at commit. Both writers do
-- exactly that, in one of two orders:
--
-- * audit_integrate and the previous release's locked path lock the head,
--   insert the events head+1..head+n, then move the head to head+n;
-- * the previous release's one-trip path moves the head from S to S+n and
--   inserts S+1..S+n in the same statement (a data-modifying CTE), the head
--   first.
--
-- audit_append_state remembers, for the one transaction appending at a time
-- (appenders hold the head's row lock), the sequence its next event must
-- have: set by the head's trigger when a transaction moves the head before
-- inserting (the one-trip path), and by the events' trigger after each
-- insert statement. Its row is written only by these SECURITY DEFINER
-- triggers: the service role may only read it (migrations.EnsureServiceRole).
CREATE TABLE audit_append_state (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    xact      xid8    NOT NULL,
    next      bigint  NOT NULL
);
INSERT INTO audit_append_state (xact, next) VALUES ('0', 0);
REVOKE ALL ON audit_append_state FROM PUBLIC;

-- Events are numbered from 1. Checked at insert, by the trigger below,
-- rather than as a CHECK constraint: the owner's tests of tampering
-- (reordering events through a negative sequence, with the triggers off)
-- must keep working, and the owner could drop a constraint anyway.

-- A transaction that moves the head before it inserts: its events start
-- right after the head it moved from.
-- +goose StatementBegin
CREATE FUNCTION audit_head_append_state() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    IF NEW.sequence <> OLD.sequence
            AND (SELECT xact FROM audit_append_state) IS DISTINCT FROM pg_current_xact_id() THEN
        UPDATE audit_append_state SET xact = pg_current_xact_id(), next = OLD.sequence + 1;
    END IF;
    RETURN NEW;
END
$$;
-- +goose StatementEnd
CREATE TRIGGER audit_head_append_state BEFORE UPDATE ON audit_head
    FOR EACH ROW EXECUTE FUNCTION audit_head_append_state();

-- After each insert statement: its events are exactly the next ones, each
-- once. The head's row lock serializes appenders (a writer that did not
-- take it waits here for the one that did, then sees the head it moved).
-- +goose StatementBegin
CREATE FUNCTION audit_events_extend_chain() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_head   bigint;
    v_state  audit_append_state%ROWTYPE;
    v_expect bigint;
    v_first  bigint;
    v_last   bigint;
    v_n      bigint;
    v_unique bigint;
BEGIN
    SELECT min(sequence), max(sequence), count(*), count(DISTINCT sequence)
    INTO v_first, v_last, v_n, v_unique FROM inserted;
    IF v_n = 0 THEN
        RETURN NULL;
    END IF;
    SELECT sequence INTO v_head FROM audit_head FOR UPDATE;
    SELECT * INTO v_state FROM audit_append_state FOR UPDATE;
    v_expect := CASE WHEN v_state.xact = pg_current_xact_id() THEN v_state.next ELSE v_head + 1 END;
    IF v_first < 1 OR v_first <> v_expect OR v_last - v_first + 1 <> v_n OR v_unique <> v_n THEN
        RAISE EXCEPTION 'audit_events: events % to % (% rows) do not extend the chain: the next event is %',
            v_first, v_last, v_n, v_expect USING ERRCODE = '23514';
    END IF;
    UPDATE audit_append_state SET xact = pg_current_xact_id(), next = v_last + 1;
    RETURN NULL;
END
$$;
-- +goose StatementEnd
CREATE TRIGGER audit_events_extend_chain AFTER INSERT ON audit_events
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION audit_events_extend_chain();

-- At commit, the head covers every event the transaction inserted (an
-- event left past the head would be numbered again by the next appender).
-- +goose StatementBegin
CREATE FUNCTION audit_append_within_head() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_state audit_append_state%ROWTYPE;
    v_head  bigint;
BEGIN
    SELECT * INTO v_state FROM audit_append_state;
    SELECT sequence INTO v_head FROM audit_head;
    IF v_state.xact = pg_current_xact_id() AND v_state.next - 1 > v_head THEN
        RAISE EXCEPTION 'audit_events: events after % are past the chain head at commit (move the head with them)', v_head
            USING ERRCODE = '23514';
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd
CREATE CONSTRAINT TRIGGER audit_append_within_head AFTER INSERT OR UPDATE ON audit_append_state
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION audit_append_within_head();
CREATE TRIGGER audit_append_state_no_delete BEFORE DELETE ON audit_append_state
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_append_state_no_truncate BEFORE TRUNCATE ON audit_append_state
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

REVOKE ALL ON FUNCTION audit_head_append_state() FROM PUBLIC;
REVOKE ALL ON FUNCTION audit_events_extend_chain() FROM PUBLIC;
REVOKE ALL ON FUNCTION audit_append_within_head() FROM PUBLIC;

-- +goose Down
DROP TRIGGER audit_events_extend_chain ON audit_events;
DROP TRIGGER audit_head_append_state ON audit_head;
DROP TABLE audit_append_state;
DROP FUNCTION audit_append_within_head();
DROP FUNCTION audit_events_extend_chain();
DROP FUNCTION audit_head_append_state();
