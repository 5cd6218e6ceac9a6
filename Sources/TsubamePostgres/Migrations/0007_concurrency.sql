-- 0007_concurrency: a per-server limit on concurrent targets, and the choice of claimable targets that honours
-- every limit at once (the execution's max_parallel, the server's max_concurrent, a job's concurrency = queue,
-- run_after dependencies still running), plus the words that say why a queued target waits.
-- breaking: no

ALTER TABLE servers ADD COLUMN max_concurrent integer NOT NULL DEFAULT 4
    CONSTRAINT servers_max_concurrent_range CHECK (max_concurrent BETWEEN 1 AND 1000);

-- "Is an older run of this job (or of a job it runs after) unfinished?" without walking the job's history.
CREATE INDEX executions_unfinished_job_idx ON executions (job_id, id) WHERE status IN ('queued', 'running');
-- "How many targets run on this server?"
CREATE INDEX execution_targets_running_server_idx ON execution_targets (server_id) WHERE status = 'running';

-- Runnable queued targets, oldest first, before the per-call counting: not backing off, not cancelled, not behind an
-- older run of the same job (concurrency = queue) nor behind an older unfinished run of a job it runs after.
CREATE VIEW tsubame_claim_candidates AS
    SELECT t.id, t.execution_id, t.server_id, t.run_at, e.max_parallel, coalesce(s.max_concurrent, 1000) AS max_concurrent
    FROM execution_targets t
    JOIN executions e ON e.id = t.execution_id
    LEFT JOIN jobs j ON j.id = e.job_id
    LEFT JOIN servers s ON s.id = t.server_id
    WHERE t.status = 'queued' AND t.run_at <= now() AND NOT e.cancel_requested
      AND NOT (j.concurrency = 'queue' AND EXISTS (
              SELECT 1 FROM executions o WHERE o.job_id = e.job_id AND o.id < e.id AND o.status IN ('queued', 'running')))
      AND NOT (cardinality(j.run_after) > 0 AND EXISTS (
              SELECT 1 FROM executions o WHERE o.job_id = ANY (j.run_after) AND o.id < e.id AND o.status IN ('queued', 'running')));

-- Up to p_limit target ids that may start now: greedy in queue order, counting what is running and what this call
-- already picked, per execution (max_parallel) and per server (max_concurrent). The caller holds the claim lock.
CREATE FUNCTION tsubame_claimable(p_limit integer) RETURNS bigint[] LANGUAGE plpgsql STABLE AS $$
DECLARE
    r record;
    picked bigint[] := '{}';
    used jsonb := '{}';
    ne integer;
    ns integer;
BEGIN
    IF p_limit <= 0 THEN
        RETURN picked;
    END IF;
    FOR r IN
        WITH by_execution AS (
            SELECT execution_id, count(*) AS n FROM execution_targets WHERE status = 'running' GROUP BY execution_id
        ), by_server AS (
            SELECT server_id, count(*) AS n FROM execution_targets WHERE status = 'running' AND server_id IS NOT NULL GROUP BY server_id
        )
        SELECT c.id, c.execution_id, c.server_id,
               c.max_parallel - coalesce(be.n, 0) AS execution_free,
               c.max_concurrent - coalesce(bs.n, 0) AS server_free
        FROM tsubame_claim_candidates c
        LEFT JOIN by_execution be ON be.execution_id = c.execution_id
        LEFT JOIN by_server bs ON bs.server_id = c.server_id
        WHERE c.max_parallel > coalesce(be.n, 0) AND c.max_concurrent > coalesce(bs.n, 0)
        ORDER BY c.run_at, c.id
    LOOP
        ne := coalesce((used ->> ('e' || r.execution_id))::integer, 0);
        ns := coalesce((used ->> ('s' || coalesce(r.server_id, 0)))::integer, 0);
        CONTINUE WHEN ne >= r.execution_free OR ns >= r.server_free;
        picked := picked || r.id;
        EXIT WHEN cardinality(picked) >= p_limit;
        used := used || jsonb_build_object('e' || r.execution_id, ne + 1, 's' || coalesce(r.server_id, 0), ns + 1);
    END LOOP;
    RETURN picked;
END $$;

-- Why a queued target has not started, in words for people; NULL when it is not queued. The first reason that
-- applies wins, in the order an operator would look: nobody to run it, a deliberate pause, then the limits.
CREATE FUNCTION tsubame_waiting_reason(p_target bigint) RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
    t record;
    o record;
    n bigint;
BEGIN
    SELECT x.id, x.execution_id, x.server_id, x.server_name, x.status, x.run_at, e.job_id, e.max_parallel,
           e.cancel_requested, j.concurrency, j.run_after, s.max_concurrent
    INTO t
    FROM execution_targets x JOIN executions e ON e.id = x.execution_id
    LEFT JOIN jobs j ON j.id = e.job_id LEFT JOIN servers s ON s.id = x.server_id
    WHERE x.id = p_target;
    IF NOT FOUND OR t.status <> 'queued' THEN
        RETURN NULL;
    END IF;
    IF t.cancel_requested THEN
        RETURN 'cancelling: it will not start';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM executors WHERE last_seen > now() - interval '30 seconds') THEN
        RETURN 'no executor alive: start tsubame-executor';
    END IF;
    IF t.run_at > now() THEN
        RETURN 'retry backoff: waiting before the next attempt';
    END IF;
    IF cardinality(t.run_after) > 0 THEN
        SELECT u.id, u.job_name INTO o FROM executions u
        WHERE u.job_id = ANY (t.run_after) AND u.id < t.execution_id AND u.status IN ('queued', 'running')
        ORDER BY u.id LIMIT 1;
        IF FOUND THEN
            RETURN format('dependency pending: runs after job %s, whose execution #%s is unfinished', o.job_name, o.id);
        END IF;
    END IF;
    IF t.concurrency = 'queue' THEN
        SELECT u.id INTO o FROM executions u
        WHERE u.job_id = t.job_id AND u.id < t.execution_id AND u.status IN ('queued', 'running')
        ORDER BY u.id LIMIT 1;
        IF FOUND THEN
            RETURN format('job concurrency: queued behind execution #%s of this job (concurrency: queue)', o.id);
        END IF;
    END IF;
    SELECT count(*) INTO n FROM execution_targets WHERE execution_id = t.execution_id AND status = 'running';
    IF n >= t.max_parallel THEN
        RETURN format('job concurrency: max_parallel (%s) servers of this run are already running', t.max_parallel);
    END IF;
    IF t.server_id IS NOT NULL THEN
        SELECT count(*) INTO n FROM execution_targets WHERE server_id = t.server_id AND status = 'running';
        IF n >= t.max_concurrent THEN
            RETURN format('server busy: %s already runs %s targets (its max_concurrent)', t.server_name, n);
        END IF;
    END IF;
    RETURN 'waiting for an executor to pick it up';
END $$;
