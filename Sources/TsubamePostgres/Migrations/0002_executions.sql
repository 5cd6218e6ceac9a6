-- 0002_executions: executions, their per-server targets, log chunks, executors.
-- breaking: no

-- Executor processes announce themselves and heartbeat here.
CREATE TABLE executors (
    id         text PRIMARY KEY,
    host       text NOT NULL,
    pid        integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE executions (
    id                bigserial PRIMARY KEY,
    -- SET NULL: history outlives the job; job_name keeps what it was called.
    job_id            bigint REFERENCES jobs (id) ON DELETE SET NULL,
    job_name          text NOT NULL,
    status            text NOT NULL DEFAULT 'queued'
                      CONSTRAINT executions_status_known CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'timed_out')),
    trigger           text NOT NULL CONSTRAINT executions_trigger_known CHECK (trigger IN ('manual', 'schedule', 'api', 'dependency', 'retry')),
    triggered_by      bigint REFERENCES users (id) ON DELETE SET NULL,
    triggered_by_name text,
    parent_id         bigint REFERENCES executions (id) ON DELETE SET NULL,
    -- A snapshot of the job at enqueue time, so an edit never changes a run in flight.
    script            text NOT NULL,
    env               jsonb NOT NULL DEFAULT '{}',
    secret_env        bytea,
    secret_key_id     text,
    timeout_seconds   integer NOT NULL,
    max_parallel      integer NOT NULL,
    retries           integer NOT NULL DEFAULT 0,
    cancel_requested  boolean NOT NULL DEFAULT false,
    -- The last log seq handed out; chunks take seq from here under the row lock, so seq order is commit order.
    last_seq          bigint NOT NULL DEFAULT 0,
    output_bytes      bigint NOT NULL DEFAULT 0,
    output_truncated  boolean NOT NULL DEFAULT false,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    exit_code         integer,
    CONSTRAINT executions_finished_when_final CHECK ((finished_at IS NOT NULL) = (status IN ('succeeded', 'failed', 'cancelled', 'timed_out')))
);
CREATE INDEX executions_job_id_idx ON executions (job_id, id DESC);
CREATE INDEX executions_status_idx ON executions (status) WHERE status IN ('queued', 'running');
CREATE INDEX executions_created_at_idx ON executions (created_at);

CREATE TABLE execution_targets (
    id               bigserial PRIMARY KEY,
    execution_id     bigint NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    server_id        bigint,
    server_name      text NOT NULL,
    position         integer NOT NULL,
    status           text NOT NULL DEFAULT 'queued'
                     CONSTRAINT execution_targets_status_known CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'timed_out')),
    attempt          integer NOT NULL DEFAULT 0,
    -- Not before this time (retry backoff).
    run_at           timestamptz NOT NULL DEFAULT now(),
    executor_id      text,
    lease_expires_at timestamptz,
    started_at       timestamptz,
    finished_at      timestamptz,
    exit_code        integer,
    error            text,
    CONSTRAINT execution_targets_lease_when_running CHECK (status <> 'running' OR (executor_id IS NOT NULL AND lease_expires_at IS NOT NULL))
);
CREATE INDEX execution_targets_execution_id_idx ON execution_targets (execution_id, position);
-- The claim scans only queued targets, oldest first.
CREATE INDEX execution_targets_queued_idx ON execution_targets (run_at, id) WHERE status = 'queued';
-- The reaper scans only running targets by lease.
CREATE INDEX execution_targets_running_idx ON execution_targets (lease_expires_at) WHERE status = 'running';
CREATE INDEX execution_targets_server_id_idx ON execution_targets (server_id, execution_id DESC);

CREATE TABLE log_chunks (
    execution_id bigint NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    seq          bigint NOT NULL,
    server_id    bigint,
    stream       text NOT NULL CONSTRAINT log_chunks_stream_known CHECK (stream IN ('stdout', 'stderr', 'system')),
    data         text NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (execution_id, seq)
);
