-- 0012_executions_parent_idx: an index on executions.parent_id, for deleting executions.
-- breaking: no
--
-- Deleting an execution sets parent_id to NULL in the runs it started (retries and dependency runs: ON DELETE
-- SET NULL), and PostgreSQL finds those by parent_id. Without an index that was a sequential scan of executions
-- for every execution deleted: with a million executions one retention batch of 200 took 55 s (of which 0.2 s
-- for the targets and output), blocking the executor's loop meanwhile (scripts/bench scale,
-- docs/benchmarks.md). Only the few runs that have a parent are indexed.
CREATE INDEX executions_parent_id_idx ON executions (parent_id) WHERE parent_id IS NOT NULL;
