-- +goose Up

-- Audit retention (issue 17): a partition of audit_events older than the
-- retention is exported as a signed archive segment, read back, recorded
-- here as archived, and only then detached and dropped. The service role
-- cannot do either: the two SECURITY DEFINER functions below are granted
-- (by secretsd migrate --retention-role) to a NOLOGIN group role only,
-- which an operator grants to the role that runs retention. Each function
-- checks the partition's rows itself, so even that role can only drop a
-- partition whose exact sequence range was recorded as archived, and the
-- drop is itself an audit event.

-- audit_partition_rows reports a partition's rows as the parent sees them:
-- count and sequence range.
-- +goose StatementBegin
CREATE FUNCTION audit_partition_rows(p_from timestamptz, p_to timestamptz, OUT n bigint, OUT first_seq bigint, OUT last_seq bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, public, pg_temp AS $$
    SELECT count(*), min(sequence), max(sequence) FROM audit_events WHERE sequenced_at >= p_from AND sequenced_at < p_to
$$;
-- +goose StatementEnd

-- audit_sequenced_through is the time up to which the chain is complete:
-- every event sequenced before it is committed (appenders are serialized by
-- the head lock and take their time under it, so the head event's time
-- bounds every event before it and every later one sequences after it).
-- +goose StatementBegin
CREATE FUNCTION audit_sequenced_through() RETURNS timestamptz
LANGUAGE sql STABLE SET search_path = pg_catalog, public, pg_temp AS $$
    SELECT greatest(h.sequenced_at,
        (SELECT max(e.sequenced_at) FROM audit_events e WHERE e.sequence = h.sequence))
    FROM audit_head h
$$;
-- +goose StatementEnd

-- audit_record_archive records that partition p_name was exported to
-- p_archive (an object name in the archive bucket) with segment hash
-- p_archive_hash, holding events p_first_seq..p_last_seq (both NULL for an
-- empty partition, which has no archive). It refuses a partition that is
-- not fully sequenced yet or whose rows are not exactly that range.
-- Recording the same archive again is a no-op (a retried run).
-- +goose StatementBegin
CREATE FUNCTION audit_record_archive(p_name text, p_archive text, p_archive_hash bytea, p_first_seq bigint, p_last_seq bigint)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp SET lock_timeout = '5s' AS $$
DECLARE
    v_p    audit_partitions%ROWTYPE;
    v_rows record;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('orient.secrets.audit_partitions'));
    SELECT * INTO v_p FROM audit_partitions WHERE name = p_name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'audit partition % does not exist', p_name USING ERRCODE = '22023';
    END IF;
    IF v_p.state <> 'live' THEN
        IF v_p.archive IS NOT DISTINCT FROM p_archive AND v_p.archive_hash IS NOT DISTINCT FROM p_archive_hash
                AND v_p.first_seq IS NOT DISTINCT FROM p_first_seq AND v_p.last_seq IS NOT DISTINCT FROM p_last_seq THEN
            RETURN;
        END IF;
        RAISE EXCEPTION 'audit partition % is already % with another archive', p_name, v_p.state USING ERRCODE = '55000';
    END IF;
    IF (p_archive IS NULL) <> (p_first_seq IS NULL) OR (p_first_seq IS NULL) <> (p_last_seq IS NULL)
            OR (p_archive IS NULL) <> (p_archive_hash IS NULL)
            OR length(p_archive) > 1024 OR length(p_archive_hash) <> 32 OR p_last_seq < p_first_seq THEN
        RAISE EXCEPTION 'audit partition %: malformed archive record', p_name USING ERRCODE = '22023';
    END IF;
    IF v_p.to_time > audit_sequenced_through() THEN
        RAISE EXCEPTION 'audit partition % is not fully sequenced yet', p_name USING ERRCODE = '55000';
    END IF;
    -- A floor the service cannot lower: whoever holds the retention
    -- privilege can only archive (and so drop) partitions at least this old.
    IF v_p.to_time > now() - (SELECT min_retention FROM audit_partitioning) THEN
        RAISE EXCEPTION 'audit partition % is younger than the minimum retention (%)', p_name,
            (SELECT min_retention FROM audit_partitioning) USING ERRCODE = '55000';
    END IF;
    -- No insert in flight or to come: the rows are counted under the lock,
    -- and from now on the partition refuses rows (an insert naming its
    -- time, or a clock stepped back, fails instead of being dropped
    -- unarchived).
    EXECUTE format('LOCK TABLE %I IN ACCESS EXCLUSIVE MODE', p_name);
    v_rows := audit_partition_rows(v_p.from_time, v_p.to_time);
    IF v_rows.first_seq IS DISTINCT FROM p_first_seq OR v_rows.last_seq IS DISTINCT FROM p_last_seq
            OR v_rows.n <> coalesce(p_last_seq - p_first_seq + 1, 0) THEN
        RAISE EXCEPTION 'audit partition % holds % events (% to %), not the archived % to %',
            p_name, v_rows.n, v_rows.first_seq, v_rows.last_seq, p_first_seq, p_last_seq USING ERRCODE = '55000';
    END IF;
    EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (false) NOT VALID', p_name, p_name || '_archived');
    UPDATE audit_partitions SET state = 'archived', archive = p_archive, archive_hash = p_archive_hash,
        first_seq = p_first_seq, last_seq = p_last_seq, archived_at = now()
    WHERE name = p_name;
END
$$;
-- +goose StatementEnd

-- audit_drop_partition detaches and drops an archived partition, after
-- checking it still holds exactly the archived range, and audits the act
-- (through the intake, like every event; actor: the session's role).
-- +goose StatementBegin
CREATE FUNCTION audit_drop_partition(p_name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp SET lock_timeout = '5s' AS $$
DECLARE
    v_p    audit_partitions%ROWTYPE;
    v_rows record;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('orient.secrets.audit_partitions'));
    SELECT * INTO v_p FROM audit_partitions WHERE name = p_name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'audit partition % does not exist', p_name USING ERRCODE = '22023';
    END IF;
    IF v_p.state = 'dropped' THEN
        RETURN;
    END IF;
    IF v_p.state <> 'archived' THEN
        RAISE EXCEPTION 'audit partition % is not archived: it cannot be dropped', p_name USING ERRCODE = '55000';
    END IF;
    IF v_p.to_time > now() - (SELECT min_retention FROM audit_partitioning) THEN
        RAISE EXCEPTION 'audit partition % is younger than the minimum retention', p_name USING ERRCODE = '55000';
    END IF;
    EXECUTE format('LOCK TABLE %I IN ACCESS EXCLUSIVE MODE', p_name);
    v_rows := audit_partition_rows(v_p.from_time, v_p.to_time);
    IF v_rows.first_seq IS DISTINCT FROM v_p.first_seq OR v_rows.last_seq IS DISTINCT FROM v_p.last_seq
            OR v_rows.n <> coalesce(v_p.last_seq - v_p.first_seq + 1, 0) THEN
        RAISE EXCEPTION 'audit partition % holds % events (% to %), not the archived % to %',
            p_name, v_rows.n, v_rows.first_seq, v_rows.last_seq, v_p.first_seq, v_p.last_seq USING ERRCODE = '55000';
    END IF;
    EXECUTE format('ALTER TABLE audit_events DETACH PARTITION %I', p_name);
    EXECUTE format('DROP TABLE %I', p_name);
    UPDATE audit_partitions SET state = 'dropped', dropped_at = now() WHERE name = p_name;
    INSERT INTO audit_intake (actor, action, outcome, detail)
    VALUES (session_user, 'audit.partition.drop', 'OK',
        format('partition %s (%s to %s), events %s to %s, archive %s', p_name, v_p.from_time, v_p.to_time,
            coalesce(v_p.first_seq::text, 'none'), coalesce(v_p.last_seq::text, 'none'), coalesce(v_p.archive, 'none (empty)')));
END
$$;
-- +goose StatementEnd

REVOKE ALL ON FUNCTION audit_record_archive(text, text, bytea, bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION audit_drop_partition(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION audit_partition_rows(timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION audit_sequenced_through() FROM PUBLIC;

-- Verifier progress: a signed statement "the chain verified through this
-- event, whose hash is this", written by a verifier that holds the audit
-- signing key, so a later verification starts from it instead of from the
-- beginning. Append-only; the signature (key outside the database) is
-- what makes a row trustworthy, not the table.
CREATE TABLE audit_verified (
    sequence    bigint      NOT NULL,
    hash        bytea       NOT NULL,
    verified_at timestamptz NOT NULL,
    key_id      text        NOT NULL,
    signature   bytea       NOT NULL,
    PRIMARY KEY (sequence, verified_at)
);
CREATE TRIGGER audit_verified_no_change BEFORE UPDATE OR DELETE ON audit_verified
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_verified_no_truncate BEFORE TRUNCATE ON audit_verified
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
REVOKE ALL ON audit_verified FROM PUBLIC;

-- +goose Down
DROP TABLE audit_verified;
DROP FUNCTION audit_drop_partition(text);
DROP FUNCTION audit_record_archive(text, text, bytea, bigint, bigint);
DROP FUNCTION audit_sequenced_through();
DROP FUNCTION audit_partition_rows(timestamptz, timestamptz);
