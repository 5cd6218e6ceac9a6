-- scripts/bench scale, step 2 of 3: writes the planned history (scale_setup.sql) into the product's tables,
-- in batches of executions, each its own transaction. Run as `part` of `parts` concurrent psql sessions
-- (batch b is done by the session with b % parts = part).
--
-- psql variables: part, parts, batch (executions per batch).
--
-- Rows are as the product writes them: executions with the job's snapshot (script, env, sealed secrets,
-- limits), last_seq = the number of chunks and output_bytes their stdout/stderr bytes; one target per job
-- server; log_chunks with seq 1..last_seq, the target's server_id, a stream and `at` spread over the run.
-- Within a batch (about 40 minutes of history at the default sizes) the chunks are inserted in `at` order,
-- so the chunks of runs that overlap in time interleave in the heap as the executor's writes do.
--
-- Bulk-load shortcut: session_replication_role = replica, so the product's triggers do not fire for these
-- rows (foreign-key checks: the rows are consistent by construction, and scale_finish.sql checks them; the
-- execution_events / metric_counters / notification rows that a live run would add and prune).
-- The indexes are all maintained as usual.
\set ON_ERROR_STOP on
SET client_min_messages = notice;
SET session_replication_role = replica;
SET work_mem = '128MB';
SET synchronous_commit = off;
CALL bench.fill(:part, :parts, :batch);
