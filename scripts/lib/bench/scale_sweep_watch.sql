-- scripts/bench scale: watches the executor's retention sweep. Every 50 ms it records the sessions of this
-- database waiting for a lock (pg_stat_activity, wait_event_type = 'Lock'); every 250 ms it counts the
-- executions still due (finished, created before now() - their job's retention, default :days days). It ends
-- when none is left or after :timeout seconds, and prints one JSON line.
\set ON_ERROR_STOP on
SET client_min_messages = warning;
SELECT set_config('bench.days', :'days', false), set_config('bench.timeout', :'timeout', false) \gset
CREATE TEMP TABLE lock_samples (at timestamptz, pid integer, wait_event text, query text, waiting_ms double precision);
CREATE TEMP TABLE sweep_end (at timestamptz, remaining bigint, samples integer);
DO $$
DECLARE
    i integer := 0;
    remaining bigint;
    deadline timestamptz := clock_timestamp() + make_interval(secs => current_setting('bench.timeout')::integer);
    days integer := current_setting('bench.days')::integer;
BEGIN
    LOOP
        PERFORM pg_stat_clear_snapshot();
        INSERT INTO lock_samples
        SELECT clock_timestamp(), a.pid, a.wait_event, left(a.query, 120),
               1000 * extract(epoch FROM clock_timestamp() - a.state_change)
        FROM pg_stat_activity a WHERE a.wait_event_type = 'Lock' AND a.datname = current_database();
        i := i + 1;
        IF i % 5 = 1 THEN
            SELECT count(*) INTO remaining FROM executions e LEFT JOIN jobs j ON j.id = e.job_id
            WHERE e.created_at < now() - make_interval(days => days)
              AND e.created_at < now() - make_interval(days => coalesce(j.retention_days, days))
              AND e.status IN ('succeeded', 'failed', 'cancelled', 'timed_out');
            EXIT WHEN remaining = 0 OR clock_timestamp() > deadline;
        END IF;
        COMMIT;
        PERFORM pg_sleep(0.05);
    END LOOP;
    INSERT INTO sweep_end VALUES (clock_timestamp(), remaining, i);
END $$;
SELECT json_build_object(
    'end_epoch', (SELECT extract(epoch FROM at) FROM sweep_end),
    'remaining', (SELECT remaining FROM sweep_end),
    'samples', (SELECT samples FROM sweep_end),
    'lock_samples', (SELECT count(*) FROM lock_samples),
    'lock_sample_times', (SELECT count(DISTINCT at) FROM lock_samples),
    'lock_waiters_max', (SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM lock_samples GROUP BY at) s),
    'lock_waiting_ms_max', (SELECT round(coalesce(max(waiting_ms), 0)::numeric, 1) FROM lock_samples),
    'lock_waits', (SELECT coalesce(json_agg(x), '[]') FROM (
        SELECT wait_event, left(query, 80) AS query, count(*) AS samples FROM lock_samples GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 5) x)
)::text;
