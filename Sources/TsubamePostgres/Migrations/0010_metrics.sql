-- 0010_metrics: counters for /metrics that only go up (kept by the database, so every worker reports the same),
-- and what each executor reports about itself at its heartbeat.
-- breaking: no

CREATE TABLE metric_counters (
    name  text NOT NULL,
    label text NOT NULL DEFAULT '',
    value bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (name, label)
);

-- Executions by final status, and their stored output bytes, counted once as each finishes.
CREATE FUNCTION tsubame_count_finished() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IN ('succeeded', 'failed', 'cancelled', 'timed_out') AND OLD.status IN ('queued', 'running') THEN
        INSERT INTO metric_counters (name, label, value)
        VALUES ('executions_finished', NEW.status, 1), ('log_bytes', '', NEW.output_bytes)
        ON CONFLICT (name, label) DO UPDATE SET value = metric_counters.value + EXCLUDED.value;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER executions_count_finished AFTER UPDATE OF status ON executions
    FOR EACH ROW EXECUTE FUNCTION tsubame_count_finished();

-- What finished before this migration counts too.
INSERT INTO metric_counters (name, label, value)
SELECT 'executions_finished', status, count(*) FROM executions WHERE status IN ('succeeded', 'failed', 'cancelled', 'timed_out') GROUP BY status;
INSERT INTO metric_counters (name, label, value) SELECT 'log_bytes', '', coalesce(sum(output_bytes), 0) FROM executions;

-- {"capacity", "running", "targets_run", "ssh_connect_seconds": histogram}: see Executor.stats.
ALTER TABLE executors ADD COLUMN stats jsonb NOT NULL DEFAULT '{}';
