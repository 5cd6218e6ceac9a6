-- When a job whose run_after lists another runs: after that job's run succeeded (the default), failed (failed or
-- timed out), or whatever its outcome (always, cancelled included).
ALTER TABLE jobs ADD COLUMN run_after_condition text NOT NULL DEFAULT 'success'
    CONSTRAINT jobs_run_after_condition_known CHECK (run_after_condition IN ('success', 'failure', 'always'));
