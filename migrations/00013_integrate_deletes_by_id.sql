-- +goose Up

-- audit_integrate deletes the intake rows it chains in a statement planned
-- at each call, with the intake's size of the moment. PL/pgSQL keeps a
-- statement's generic plan for the session until the table's next analyze
-- or vacuum invalidates it: the sequencer's connection planned the DELETE
-- while the intake was small (a sequential scan of a few pages is the
-- cheapest there), kept that plan as a backlog grew the heap, and meanwhile
-- every round read the whole heap, dead rows included: 1,300 pages a round
-- of 22 events in the bench's put phase after its audited reads; 695 pages
-- to chain 3 events after a 40,000-event backlog in
-- TestIntegrateSkipsTheIntakeHeap. Only the DELETE is planned at each
-- call: planning the whole function at every call (plan_cache_mode =
-- force_custom_plan on it, tried first) cost a round of 60 events 0.3 ms,
-- a third of the round; and enable_seqscan = off made each round 50 ms,
-- the disabled scan's made-up cost pushing the statements past
-- jit_above_cost.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION audit_integrate(p_ids bigint[], p_hashes bytea[], p_after_seq bigint, p_after_hash bytea)
RETURNS TABLE (head_sequence bigint, head_hash bytea, head_sequenced_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_head audit_head%ROWTYPE;
    v_n    integer := coalesce(array_length(p_ids, 1), 0);
    v_at   timestamptz;
    v_rows integer;
    v_moved audit_intake[];
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
    -- The intake rows, deleted by id. EXECUTE plans the statement at
    -- each call, with the intake's size of the moment: a session keeps a
    -- PL/pgSQL statement's generic plan, and one made while the intake was
    -- small (a sequential scan) read the whole heap at every round once a
    -- backlog had grown it. The insert below scans no table and keeps its
    -- cached plan.
    EXECUTE 'WITH moved AS (DELETE FROM audit_intake i WHERE i.id = ANY ($1) RETURNING i) SELECT array_agg(moved.i) FROM moved'
        INTO v_moved USING p_ids;
    INSERT INTO audit_events (sequence, time, actor, action, key, version, outcome, request_id, peer, revision, detail,
        prev_hash, hash, value_hmac, sequenced_at)
    SELECT v_head.sequence + c.ord, m.time, m.actor, m.action, m.key, m.version, m.outcome, m.request_id, m.peer,
        m.revision, m.detail, c.prev, c.hash, m.value_hmac, v_at
    FROM (
        SELECT u.id, u.hash, u.ord, coalesce(lag(u.hash) OVER (ORDER BY u.ord), v_head.hash) AS prev
        FROM unnest(p_ids, p_hashes) WITH ORDINALITY AS u(id, hash, ord)
    ) c JOIN unnest(v_moved) m ON m.id = c.id
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


-- +goose Down

-- The function as 00009 made it.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION audit_integrate(p_ids bigint[], p_hashes bytea[], p_after_seq bigint, p_after_hash bytea)
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

