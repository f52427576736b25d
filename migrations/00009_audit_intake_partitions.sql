-- +goose Up

-- The audit log at scale (issues 14 and 17, designed as one):
--
-- * Durability and chaining are separated. A request's events are committed
--   to audit_intake (no lock: commits overlap); a single sequencer at a time
--   numbers and links them into the hash chain shortly after, through
--   audit_integrate(), which moves them from the intake into audit_events in
--   one transaction. An intake row leaves only by becoming a chained event:
--   the service role may not delete it.
-- * audit_events is range-partitioned by sequenced_at, the time the
--   sequencer chained the event. The sequencer assigns it non-decreasing in
--   sequence order, so every partition holds one contiguous run of the
--   chain and can be archived and dropped as one segment. The hashed event
--   time stays the time the event happened. sequenced_at is not hashed: it
--   only says where a row is stored.
-- * Partitions are created ahead by the service through
--   audit_ensure_partitions() (SECURITY DEFINER: the service role has no
--   CREATE), recorded in audit_partitions.

CREATE TABLE audit_intake (
    id         bigserial   PRIMARY KEY,
    time       timestamptz NOT NULL DEFAULT now(),
    actor      text        NOT NULL,
    action     text        NOT NULL,
    key        text        NOT NULL DEFAULT '',
    version    bigint      NOT NULL DEFAULT 0,
    outcome    text        NOT NULL,
    request_id text        NOT NULL DEFAULT '',
    peer       text        NOT NULL DEFAULT '',
    revision   bigint      NOT NULL DEFAULT 0,
    detail     text        NOT NULL DEFAULT '',
    value_hmac bytea
);

-- The chain head also remembers when it last moved: sequenced_at only
-- grows, and never runs ahead of the clock (a head set into the future
-- would make every later event land past the partitions, or let retention
-- take a partition that can still receive events). The service role may
-- update only sequence and hash (a previous release moves them); only
-- audit_integrate moves sequenced_at.
ALTER TABLE audit_head ADD COLUMN sequenced_at timestamptz NOT NULL DEFAULT '-infinity';
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION audit_head_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
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
    IF NEW.sequenced_at < OLD.sequenced_at
            OR (NEW.sequenced_at <> OLD.sequenced_at AND NEW.sequenced_at > clock_timestamp() + interval '1 minute') THEN
        RAISE EXCEPTION 'audit_head sequencing time only moves forward, and not past the clock';
    END IF;
    RETURN NEW;
END
$$;
-- +goose StatementEnd

CREATE TABLE audit_partitions (
    name         text        PRIMARY KEY,
    from_time    timestamptz NOT NULL,
    to_time      timestamptz NOT NULL CHECK (to_time > from_time),
    -- live: attached and holding events; archived: exported and read back
    -- (first_seq..last_seq, archive, archive_hash say where); dropped.
    state        text        NOT NULL DEFAULT 'live' CHECK (state IN ('live', 'archived', 'dropped')),
    first_seq    bigint,
    last_seq     bigint,
    archive      text,
    archive_hash bytea,
    archived_at  timestamptz,
    dropped_at   timestamptz
);
CREATE UNIQUE INDEX audit_partitions_from ON audit_partitions (from_time);

CREATE TABLE audit_partitioning (
    singleton     boolean  PRIMARY KEY DEFAULT true CHECK (singleton),
    period        interval NOT NULL CHECK (period >= interval '1 second' AND period <= interval '366 days'),
    -- Retention can archive and drop only partitions at least this old,
    -- whatever its caller asks: the owner's floor (UPDATE it as the owner).
    min_retention interval NOT NULL DEFAULT interval '1 day' CHECK (min_retention >= interval '0')
);
INSERT INTO audit_partitioning (period) VALUES (interval '1 day');

-- The partitioned table replaces the plain one; its events are copied, not
-- re-hashed.
ALTER TABLE audit_events RENAME TO audit_events_legacy;
ALTER INDEX audit_events_pkey RENAME TO audit_events_legacy_pkey;
ALTER INDEX audit_events_key RENAME TO audit_events_legacy_key;
ALTER INDEX audit_events_actor RENAME TO audit_events_legacy_actor;
ALTER INDEX audit_events_time RENAME TO audit_events_legacy_time;
ALTER INDEX audit_events_value_hmac RENAME TO audit_events_legacy_value_hmac;

CREATE TABLE audit_events (
    sequence     bigint      NOT NULL,
    time         timestamptz NOT NULL,
    actor        text        NOT NULL,
    action       text        NOT NULL,
    key          text        NOT NULL DEFAULT '',
    version      bigint      NOT NULL DEFAULT 0,
    outcome      text        NOT NULL,
    request_id   text        NOT NULL DEFAULT '',
    peer         text        NOT NULL DEFAULT '',
    revision     bigint      NOT NULL DEFAULT 0,
    detail       text        NOT NULL DEFAULT '',
    prev_hash    bytea,
    hash         bytea,
    value_hmac   bytea,
    -- A replica of the previous release inserts without it: the insert's
    -- clock, taken under the head lock that release holds, keeps the order.
    sequenced_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (sequence, sequenced_at)
) PARTITION BY RANGE (sequenced_at);
CREATE INDEX audit_events_key ON audit_events (key, sequence DESC);
CREATE INDEX audit_events_actor ON audit_events (actor, sequence DESC);
CREATE INDEX audit_events_time ON audit_events (time);
CREATE INDEX audit_events_value_hmac ON audit_events (value_hmac) WHERE value_hmac IS NOT NULL;

-- audit_ensure_partitions creates the partitions that cover up to p_until
-- (and, on an empty catalog, from p_from), each one period long, aligned
-- to the period from the Unix epoch. A new period applies to partitions
-- created from now on. It reports how many it created.
-- +goose StatementBegin
CREATE FUNCTION audit_ensure_partitions(p_until timestamptz, p_period interval DEFAULT NULL, p_from timestamptz DEFAULT NULL)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp SET lock_timeout = '5s' AS $$
DECLARE
    v_period  interval;
    v_start   timestamptz;
    v_name    text;
    v_created integer := 0;
BEGIN
    IF p_period IS NOT NULL THEN
        IF p_period < interval '1 second' OR p_period > interval '366 days'
                OR date_part('month', p_period) <> 0 OR date_part('year', p_period) <> 0 THEN
            RAISE EXCEPTION 'audit partition period % is out of range (1 second to 366 days, in days, hours, minutes or seconds)', p_period
                USING ERRCODE = '22023';
        END IF;
        UPDATE audit_partitioning SET period = p_period WHERE period <> p_period;
    END IF;
    SELECT period INTO v_period FROM audit_partitioning;
    -- One creator at a time (replicas race to create the same partition).
    PERFORM pg_advisory_xact_lock(hashtext('orient.secrets.audit_partitions'));
    SELECT max(to_time) INTO v_start FROM audit_partitions;
    IF v_start IS NULL THEN
        v_start := date_bin(v_period, COALESCE(least(p_from, now()), now()), timestamptz '1970-01-01 00:00:00+00');
    END IF;
    IF p_until > now() + v_period * 1000 THEN
        RAISE EXCEPTION 'audit partitions: % is too far ahead', p_until USING ERRCODE = '22023';
    END IF;
    WHILE v_start <= p_until LOOP
        v_name := 'audit_events_' || to_char(v_start AT TIME ZONE 'UTC', 'YYYYMMDD"t"HH24MISS');
        EXECUTE format('CREATE TABLE public.%I PARTITION OF public.audit_events FOR VALUES FROM (%L) TO (%L)',
            v_name, v_start, v_start + v_period);
        EXECUTE format('REVOKE ALL ON %I FROM PUBLIC', v_name);
        INSERT INTO audit_partitions (name, from_time, to_time) VALUES (v_name, v_start, v_start + v_period);
        v_start := v_start + v_period;
        v_created := v_created + 1;
    END LOOP;
    RETURN v_created;
END
$$;
-- +goose StatementEnd

-- audit_integrate chains intake events: p_ids in chain order, p_hashes
-- their hashes as the sequencer computed them (EventHash over the intake
-- row's content, linked from the head p_after_seq/p_after_hash). It moves
-- the rows from the intake into audit_events, numbered after the head, and
-- moves the head, in the caller's transaction. If the head is no longer the
-- one the caller chained after, it changes nothing and returns no row; if
-- an id is not (or no longer) in the intake it fails. A wrong hash is not
-- checked here: it breaks the chain, which verification reports.
-- +goose StatementBegin
CREATE FUNCTION audit_integrate(p_ids bigint[], p_hashes bytea[], p_after_seq bigint, p_after_hash bytea)
RETURNS TABLE (head_sequence bigint, head_hash bytea, head_sequenced_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_head audit_head%ROWTYPE;
    v_n    integer := coalesce(array_length(p_ids, 1), 0);
    v_at   timestamptz;
    v_rows integer;
BEGIN
    IF v_n = 0 OR v_n <> coalesce(array_length(p_hashes, 1), 0) THEN
        RAISE EXCEPTION 'audit_integrate: % ids and % hashes', v_n, coalesce(array_length(p_hashes, 1), 0)
            USING ERRCODE = '22023';
    END IF;
    -- An id twice would chain one intake event twice (the join below
    -- would match both).
    IF (SELECT count(DISTINCT u) FROM unnest(p_ids) AS u) <> v_n THEN
        RAISE EXCEPTION 'audit_integrate: an intake id appears more than once' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO v_head FROM audit_head FOR UPDATE;
    IF v_head.sequence IS DISTINCT FROM p_after_seq OR v_head.hash IS DISTINCT FROM p_after_hash THEN
        RETURN;
    END IF;
    v_at := greatest(v_head.sequenced_at, clock_timestamp());
    IF NOT EXISTS (SELECT FROM audit_partitions WHERE state = 'live' AND from_time <= v_at AND v_at < to_time) THEN
        PERFORM audit_ensure_partitions(v_at);
    END IF;
    WITH moved AS (
        DELETE FROM audit_intake i WHERE i.id = ANY (p_ids) RETURNING i.*
    ), chained AS (
        SELECT u.id, u.hash, u.ord, coalesce(lag(u.hash) OVER (ORDER BY u.ord), v_head.hash) AS prev
        FROM unnest(p_ids, p_hashes) WITH ORDINALITY AS u(id, hash, ord)
    )
    INSERT INTO audit_events (sequence, time, actor, action, key, version, outcome, request_id, peer, revision, detail,
        prev_hash, hash, value_hmac, sequenced_at)
    SELECT v_head.sequence + c.ord, m.time, m.actor, m.action, m.key, m.version, m.outcome, m.request_id, m.peer,
        m.revision, m.detail, c.prev, c.hash, m.value_hmac, v_at
    FROM chained c JOIN moved m ON m.id = c.id
    ORDER BY c.ord;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    IF v_rows <> v_n THEN
        RAISE EXCEPTION 'audit_integrate: % of % intake events found', v_rows, v_n USING ERRCODE = '40001';
    END IF;
    UPDATE audit_head SET sequence = v_head.sequence + v_n, hash = p_hashes[v_n], sequenced_at = v_at;
    RETURN QUERY SELECT v_head.sequence + v_n, p_hashes[v_n], v_at;
END
$$;
-- +goose StatementEnd

REVOKE ALL ON FUNCTION audit_ensure_partitions(timestamptz, interval, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION audit_integrate(bigint[], bytea[], bigint, bytea) FROM PUBLIC;

-- Copy the existing events: sequenced_at is the running maximum of their
-- times, so it is non-decreasing in sequence order as the sequencer keeps
-- it from now on.
SELECT audit_ensure_partitions(now(), NULL, (SELECT min(time) FROM audit_events_legacy));
INSERT INTO audit_events (sequence, time, actor, action, key, version, outcome, request_id, peer, revision, detail,
    prev_hash, hash, value_hmac, sequenced_at)
SELECT sequence, time, actor, action, key, version, outcome, request_id, peer, revision, detail,
    prev_hash, hash, value_hmac, max(time) OVER (ORDER BY sequence)
FROM audit_events_legacy;
UPDATE audit_head SET sequenced_at = coalesce((SELECT max(time) FROM audit_events_legacy), '-infinity');
DROP TABLE audit_events_legacy;

CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_intake_no_update BEFORE UPDATE ON audit_intake
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_intake_no_truncate BEFORE TRUNCATE ON audit_intake
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

REVOKE ALL ON audit_events, audit_intake, audit_partitions, audit_partitioning FROM PUBLIC;

-- +goose Down
CREATE TABLE audit_events_plain (
    sequence    bigint      PRIMARY KEY,
    time        timestamptz NOT NULL,
    actor       text        NOT NULL,
    action      text        NOT NULL,
    key         text        NOT NULL DEFAULT '',
    version     bigint      NOT NULL DEFAULT 0,
    outcome     text        NOT NULL,
    request_id  text        NOT NULL DEFAULT '',
    peer        text        NOT NULL DEFAULT '',
    revision    bigint      NOT NULL DEFAULT 0,
    detail      text        NOT NULL DEFAULT '',
    prev_hash   bytea,
    hash        bytea,
    value_hmac  bytea
);
INSERT INTO audit_events_plain
SELECT sequence, time, actor, action, key, version, outcome, request_id, peer, revision, detail, prev_hash, hash, value_hmac
FROM audit_events;
DROP TABLE audit_events;
DROP FUNCTION audit_integrate(bigint[], bytea[], bigint, bytea);
DROP FUNCTION audit_ensure_partitions(timestamptz, interval, timestamptz);
DROP TABLE audit_partitioning;
DROP TABLE audit_partitions;
DROP TABLE audit_intake;
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION audit_head_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
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
ALTER TABLE audit_head DROP COLUMN sequenced_at;
ALTER TABLE audit_events_plain RENAME TO audit_events;
ALTER INDEX audit_events_plain_pkey RENAME TO audit_events_pkey;
CREATE INDEX audit_events_key ON audit_events (key, sequence DESC);
CREATE INDEX audit_events_actor ON audit_events (actor, sequence DESC);
CREATE INDEX audit_events_time ON audit_events (time);
CREATE INDEX audit_events_value_hmac ON audit_events (value_hmac) WHERE value_hmac IS NOT NULL;
CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
REVOKE ALL ON audit_events FROM PUBLIC;
