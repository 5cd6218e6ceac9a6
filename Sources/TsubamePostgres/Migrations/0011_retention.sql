-- 0011_retention: how long a job's history is kept (NULL: TSUBAME_RETENTION_DAYS), and the index the sweep walks:
-- per job, its oldest executions first, so a job that keeps a year never slows down the sweep of one that keeps a week.
-- breaking: no

ALTER TABLE jobs ADD COLUMN retention_days integer
    CONSTRAINT jobs_retention_days_range CHECK (retention_days BETWEEN 1 AND 36500);

CREATE INDEX executions_job_created_idx ON executions (job_id, created_at);
