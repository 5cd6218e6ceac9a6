-- scripts/bench scale, step 3 of 3: after scale_fill.sql. Sets the id sequence, checks the rows, prints
-- what was written as one JSON line, and drops the scratch schema. VACUUM ANALYZE follows (separately:
-- it cannot run in a transaction block), then the bench counts log_chunks itself.
\set ON_ERROR_STOP on
SET client_min_messages = warning;
-- The id sequence; the consistency the skipped foreign-key checks would have enforced, and the totals the plan promised.
DO $$
DECLARE
    n bigint;
BEGIN
    PERFORM setval(pg_get_serial_sequence('executions', 'id'), (SELECT max(id) FROM executions));
    SELECT count(*) INTO n FROM execution_targets t WHERE NOT EXISTS (SELECT 1 FROM executions e WHERE e.id = t.execution_id);
    IF n > 0 THEN RAISE EXCEPTION '% targets without their execution', n; END IF;
    SELECT count(*) INTO n FROM executions e WHERE parent_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM executions p WHERE p.id = e.parent_id);
    IF n > 0 THEN RAISE EXCEPTION '% executions with a missing parent', n; END IF;
    SELECT count(*) INTO n FROM executions e WHERE job_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = e.job_id);
    IF n > 0 THEN RAISE EXCEPTION '% executions with a missing job', n; END IF;
    IF (SELECT count(*) FROM executions) <> (SELECT executions FROM bench.meta) THEN
        RAISE EXCEPTION 'executions: % written, % planned', (SELECT count(*) FROM executions), (SELECT executions FROM bench.meta);
    END IF;
END $$;

SELECT json_build_object(
    'executions', (SELECT count(*) FROM executions),
    'targets', (SELECT count(*) FROM execution_targets),
    'chunks', (SELECT sum(chunks) FROM bench.progress),
    'lines', (SELECT sum(lines) FROM bench.progress),
    'data_bytes', (SELECT sum(bytes) FROM bench.progress),
    'jobs', (SELECT count(*) FROM bench.jobprof),
    'servers', (SELECT count(DISTINCT s) FROM bench.jobprof, unnest(servers) s),
    'oldest_day', (SELECT oldest_day FROM bench.meta),
    'anchor', (SELECT anchor FROM bench.meta),
    'first_created', (SELECT min(created_at) FROM executions),
    'line_bytes_avg', (SELECT round(sum(bytes)::numeric / nullif(sum(lines), 0), 1) FROM bench.progress),
    'chunk_lines_avg', (SELECT round(sum(lines)::numeric / nullif(sum(chunks), 0), 2) FROM bench.progress),
    'chunks_per_execution', (SELECT json_build_object('p50', percentile_disc(0.5) WITHIN GROUP (ORDER BY last_seq),
                                                      'p99', percentile_disc(0.99) WITHIN GROUP (ORDER BY last_seq),
                                                      'max', max(last_seq)) FROM executions),
    'status', (SELECT json_object_agg(status, n) FROM (SELECT status, count(*) AS n FROM executions GROUP BY status) s)
)::text;

DROP SCHEMA bench CASCADE;
