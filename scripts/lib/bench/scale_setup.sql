-- scripts/bench scale, step 1 of 3: what the history will be made of, in a scratch schema `bench` (dropped by
-- scale_finish.sql). The product's tables are only read here; scale_fill.sql writes them.
--
-- psql variables: executions, chunks (totals), anchor (the newest execution's created_at, an ISO time).
--
-- History shape (README of the benchmark: docs/benchmarks.md, "scale"):
--   - created_at: the oldest day [anchor - 31 d, anchor - 30 d) holds executions/31 of them; then nothing for
--     12 h; the rest evenly in [anchor - 29.5 d, anchor). With TSUBAME_RETENTION_DAYS=30 exactly the oldest day
--     is due for 12 h after the anchor (the gap), whatever the generation took.
--   - job: 200-ish jobs (whatever the API created), picked with a skewed frequency (job k ~ 1/k^0.7);
--     targets = the job's servers (1-5).
--   - status: 90% succeeded, 7% failed, 2% cancelled, 1% timed_out; the newest 20: 10 running, 10 queued.
--     trigger: 75% schedule, 10% manual, 10% api, 3% retry and 2% dependency (these two with a parent_id).
--   - output: `chunks` log chunks in all, at least one per started execution, apportioned by a per-job factor
--     (lognormal) times 0.5-1.5 per run; a chunk is one of 4,096 bodies of realistic ~80-byte lines (1-40 lines,
--     mean ~4; 0.2% of bodies are bursts of 200-800 lines, which lz4 compresses).
\set ON_ERROR_STOP on
SET client_min_messages = warning;
SET work_mem = '256MB';
DROP SCHEMA IF EXISTS bench CASCADE;
CREATE SCHEMA bench;
SELECT setseed(0.20261130);

CREATE TABLE bench.meta AS
SELECT :executions::bigint AS executions, :chunks::bigint AS chunks, :'anchor'::timestamptz AS anchor,
       (:executions::bigint / 31) AS oldest_day;
ANALYZE bench.meta;

-- One line of output, about 80 bytes on average (measured by the bench: bench.bodies).
CREATE FUNCTION bench.line() RETURNS text LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    apps text[] := '{shop,billing,search,auth,media,analytics,mail,docs,api,cms,payments,reports}';
    app text := apps[1 + floor(random() * 12)::int];
    n int := floor(random() * 100000)::int;
    t text := to_char(timestamp '2026-11-01' + random() * interval '30 days', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');
BEGIN
    CASE floor(random() * 12)::int
    WHEN 0 THEN RETURN t || ' INFO  [worker-' || n % 16 || '] ' || app || ': processed batch ' || n % 12000 || ' of 12000 ('
                || round((random() * 90)::numeric, 1) || ' MB/s, ' || n % 977 || ' rows)';
    WHEN 1 THEN RETURN '+ rsync -a --delete /srv/' || app || '/shared/ backup@10.0.' || n % 250 || '.' || n % 97 || ':/backup/' || app || '/';
    WHEN 2 THEN RETURN 'Get:' || n % 300 || ' http://deb.debian.org/debian bookworm/main amd64 lib' || app || n % 9 || ' 2.' || n % 40
                || '.' || n % 7 || '-1+deb12u' || n % 3 || ' [' || n % 4000 || ' kB]';
    WHEN 3 THEN RETURN '  inflating: vendor/bundle/ruby/3.2.0/gems/' || app || '-' || n % 12 || '.' || n % 30 || '.0/lib/' || app || '/'
                || substr(md5(n::text), 1, 12) || '.rb';
    WHEN 4 THEN RETURN t || ' ' || app || ': migrating 2026' || lpad((n % 1231)::text, 4, '0') || '_add_index_on_' || app || '_orders_' || n % 50
                || ' ... ok (' || round((random() * 3)::numeric, 2) || 's)';
    WHEN 5 THEN RETURN t || ' WARN  connection pool exhausted, waiting ' || n % 500 || ' ms (active=' || n % 64 || ', idle=0, queue='
                || n % 17 || ')';
    WHEN 6 THEN RETURN t || ' INFO  health check of ' || app || '-' || n % 40 || ': ok';
    WHEN 7 THEN RETURN n % 999 || 'M' || E'\t' || '/srv/' || app || '/releases/2026' || lpad((n % 1231)::text, 4, '0') || '-' || n;
    WHEN 8 THEN RETURN 'commit ' || md5(n::text || app) || ' ' || app || ': bump version to 3.' || n % 50;
    WHEN 9 THEN RETURN '[' || lpad((n % 101)::text, 3) || '%] Building CXX object src/' || app || '/CMakeFiles/' || app || '.dir/module_'
                || n % 300 || '.cpp.o';
    WHEN 10 THEN RETURN 'HTTP/1.1 200 OK  GET http://localhost:8080/' || app || '/health  ' || n % 90 || ' ms';
    ELSE RETURN 'done on ' || app || '-' || lpad((n % 40)::text, 2, '0') || '.prod.example.com at ' || substr(t, 12, 8)
                || ' (exit status 0, ' || n % 600 || ' s)';
    END CASE;
END $$;

CREATE TABLE bench.bodies AS
WITH spec AS (
    SELECT idx, CASE WHEN idx % 512 = 0 THEN 200 + floor(random() * 601)
                     ELSE least(40, 1 + floor(-ln(1 - random()) * 3.2)) END::int AS lines
    FROM generate_series(0, 4095) idx
)
SELECT s.idx, s.lines, string_agg(bench.line(), E'\n' ORDER BY l) || E'\n' AS data
FROM spec s CROSS JOIN LATERAL generate_series(1, s.lines) l
GROUP BY s.idx, s.lines;
ALTER TABLE bench.bodies ADD COLUMN bytes integer;
UPDATE bench.bodies SET bytes = octet_length(data);
ALTER TABLE bench.bodies ADD PRIMARY KEY (idx);

-- Per job: its servers in order, how often it runs (cumulative share, for bench.jobpick), how much it prints and
-- how long it runs.
CREATE TABLE bench.jobprof AS
WITH j AS (
    SELECT j.id AS job_id, j.name, row_number() OVER (ORDER BY j.id) AS k,
           array_agg(js.server_id ORDER BY js.position) AS servers, array_agg(s.name ORDER BY js.position) AS server_names
    FROM jobs j JOIN job_servers js ON js.job_id = j.id JOIN servers s ON s.id = js.server_id
    GROUP BY j.id
), w AS (
    SELECT *, 1 / (k ^ 0.7) AS freq,
           exp(1.2 * sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random())) AS output_factor,
           exp(ln(5) + random() * ln(120)) AS duration_s
    FROM j
)
SELECT *, sum(freq) OVER (ORDER BY k) / sum(freq) OVER () AS cum FROM w;
ALTER TABLE bench.jobprof ADD PRIMARY KEY (job_id);
ANALYZE bench.jobprof;

-- Which job a random number in [0, 1) picks: 10,000 buckets, each the job whose share of the runs covers it.
CREATE TABLE bench.jobpick AS
SELECT b AS bucket, (SELECT job_id FROM bench.jobprof WHERE cum > (b + 0.5) / 10000 ORDER BY cum LIMIT 1) AS job_id
FROM generate_series(0, 9999) b;
ALTER TABLE bench.jobpick ADD PRIMARY KEY (bucket);
ANALYZE bench.jobpick;

-- Every execution: when, which job, its fate and its number of chunks.
CREATE TABLE bench.plan AS
WITH m AS (SELECT * FROM bench.meta),
g AS (
    SELECT id, random() AS r_job, random() AS r_status, random() AS r_trigger, random() AS r_out, random() AS r_dur,
           random() AS r_parent
    FROM generate_series(1, (SELECT executions FROM bench.meta)) id
), p AS (
    SELECT g.id, pick.job_id,
           CASE WHEN g.id <= m.oldest_day
                THEN m.anchor - interval '31 days' + (g.id - 0.5) * (interval '1 day' / greatest(m.oldest_day, 1))
                ELSE m.anchor - interval '29.5 days' + (g.id - m.oldest_day - 0.5)
                     * ((interval '29.5 days' - interval '1 minute') / greatest(m.executions - m.oldest_day, 1)) END AS created_at,
           CASE WHEN g.id > m.executions - 10 THEN 'queued'
                WHEN g.id > m.executions - 20 THEN 'running'
                WHEN g.r_status < 0.90 THEN 'succeeded' WHEN g.r_status < 0.97 THEN 'failed'
                WHEN g.r_status < 0.99 THEN 'cancelled' ELSE 'timed_out' END AS status,
           CASE WHEN g.r_trigger < 0.75 THEN 'schedule' WHEN g.r_trigger < 0.85 THEN 'manual' WHEN g.r_trigger < 0.95 THEN 'api'
                WHEN g.r_trigger < 0.98 THEN 'retry' ELSE 'dependency' END AS trigger,
           g.r_out, g.r_dur, g.r_parent
    FROM g CROSS JOIN m JOIN bench.jobpick pick ON pick.bucket = floor(g.r_job * 10000)::integer
), w AS (
    SELECT p.*, CASE WHEN p.status = 'queued' THEN 0 ELSE jp.output_factor * (0.5 + p.r_out) END AS weight,
           jp.duration_s * (0.5 + p.r_dur) AS duration_s
    FROM p JOIN bench.jobprof jp USING (job_id)
), c AS (
    SELECT w.*, sum(weight) OVER (ORDER BY id) AS cum, sum(weight) OVER () AS total,
           (SELECT chunks FROM bench.meta) - count(*) FILTER (WHERE status <> 'queued') OVER () AS spread
    FROM w
)
SELECT id, job_id, created_at, status, trigger,
       CASE WHEN trigger = 'retry' THEN nullif(greatest(id - 1 - floor(r_parent * 50)::bigint, 0), 0)
            WHEN trigger = 'dependency' THEN nullif(id - 1, 0) END AS parent_id,
       CASE WHEN status = 'queued' THEN NULL ELSE created_at + interval '0.05 s' + r_dur * interval '1 s' END AS started_at,
       duration_s,
       (CASE WHEN status = 'queued' THEN 0 ELSE 1 END
        + floor(greatest(spread, 0) * cum / total) - floor(greatest(spread, 0) * (cum - weight) / total))::int AS n_chunks
FROM c;
ALTER TABLE bench.plan ADD PRIMARY KEY (id);

-- What each batch wrote (scale_fill.sql).
CREATE TABLE bench.progress (lo bigint PRIMARY KEY, chunks bigint, lines bigint, bytes bigint, at timestamptz DEFAULT clock_timestamp());

-- One session's share of the batches (scale_fill.sql); a NOTICE about every 5% of its batches.
CREATE PROCEDURE bench.fill(part integer, parts integer, batch integer) LANGUAGE plpgsql AS $$
DECLARE
    total bigint := (SELECT executions FROM bench.meta);
    nbatches integer := ceil(total::numeric / batch);
    b integer := part;
    done integer := 0;
    mine integer := (nbatches - part + parts - 1) / parts;
    lo bigint;
    hi bigint;
    admin_id bigint := (SELECT id FROM users WHERE username = 'admin');
BEGIN
    WHILE b < nbatches LOOP
        lo := b::bigint * batch + 1;
        hi := least(total, (b + 1)::bigint * batch);
        WITH p AS (
            SELECT p.*, jp.servers, jp.server_names, cardinality(jp.servers) AS nservers
            FROM bench.plan p JOIN bench.jobprof jp USING (job_id) WHERE p.id BETWEEN lo AND hi
        ), c AS MATERIALIZED (
            SELECT p.id AS execution_id, s AS seq, p.servers[1 + s % p.nservers] AS server_id,
                   CASE WHEN (p.id * 7919 + s * 31) % 100 < 90 THEN 'stdout' WHEN (p.id * 7919 + s * 31) % 100 < 98 THEN 'stderr'
                        ELSE 'system' END AS stream,
                   ((p.id * 2654435761 + s * 40503) % 4096)::integer AS body,
                   p.started_at + p.duration_s * interval '1 s' * ((s - 0.5) / p.n_chunks) AS at
            FROM p CROSS JOIN LATERAL generate_series(1, p.n_chunks) s
        ), cb AS MATERIALIZED (
            SELECT c.*, b.bytes, b.lines FROM c JOIN bench.bodies b ON b.idx = c.body
        ), out AS (
            SELECT execution_id, sum(bytes) FILTER (WHERE stream <> 'system') AS bytes FROM cb GROUP BY execution_id
        ), ins_e AS (
            INSERT INTO executions (id, job_id, job_name, status, trigger, triggered_by, triggered_by_name, parent_id, script, env,
                                    secret_env, secret_key_id, timeout_seconds, max_parallel, retries, cancel_requested, last_seq,
                                    output_bytes, created_at, started_at, finished_at, exit_code, schedule_slot)
            SELECT p.id, p.job_id, j.name, p.status, p.trigger,
                   CASE WHEN p.trigger IN ('manual', 'api', 'retry') THEN admin_id END,
                   CASE WHEN p.trigger IN ('manual', 'api', 'retry') THEN 'admin' END,
                   p.parent_id, j.script, j.env, j.secret_env, j.secret_key_id, j.timeout_seconds, j.max_parallel, j.retries,
                   p.status = 'cancelled', p.n_chunks, coalesce(o.bytes, 0), p.created_at, p.started_at,
                   CASE WHEN p.status NOT IN ('queued', 'running') THEN p.started_at + p.duration_s * interval '1 s' END,
                   CASE p.status WHEN 'succeeded' THEN 0 WHEN 'failed' THEN 1 END,
                   CASE WHEN p.trigger = 'schedule' THEN p.created_at END
            FROM p JOIN jobs j ON j.id = p.job_id LEFT JOIN out o ON o.execution_id = p.id
            ORDER BY p.id
        ), ins_t AS (
            INSERT INTO execution_targets (execution_id, server_id, server_name, position, status, attempt, run_at, executor_id,
                                           lease_expires_at, started_at, finished_at, exit_code, error)
            SELECT p.id, p.servers[k], p.server_names[k], k,
                   CASE WHEN p.status IN ('failed', 'timed_out') AND k > 1 THEN 'succeeded' ELSE p.status END,
                   CASE WHEN p.status = 'queued' THEN 0 ELSE 1 END, p.created_at,
                   CASE WHEN p.status = 'running' THEN 'bench-elsewhere' END,
                   CASE WHEN p.status = 'running' THEN now() + interval '1 day' END,
                   p.started_at,
                   CASE WHEN p.status NOT IN ('queued', 'running') THEN p.started_at + p.duration_s * interval '1 s' END,
                   CASE WHEN p.status = 'failed' AND k = 1 THEN 1 WHEN p.status IN ('succeeded', 'failed', 'timed_out') THEN 0 END,
                   CASE WHEN p.status = 'timed_out' AND k = 1 THEN 'timed out' END
            FROM p CROSS JOIN LATERAL generate_series(1, p.nservers) k
            ORDER BY p.id, k
        ), ins_c AS (
            INSERT INTO log_chunks (execution_id, seq, server_id, stream, data, at)
            SELECT cb.execution_id, cb.seq, cb.server_id, cb.stream, b.data, cb.at
            FROM cb JOIN bench.bodies b ON b.idx = cb.body
            ORDER BY cb.at
        )
        INSERT INTO bench.progress (lo, chunks, lines, bytes)
        SELECT lo, count(*), coalesce(sum(lines), 0), coalesce(sum(bytes), 0) FROM cb;
        COMMIT;
        done := done + 1;
        IF done % greatest(mine / 20, 1) = 0 OR done = mine THEN
            RAISE NOTICE 'part %: % of % batches (% executions each)', part, done, mine, batch;
        END IF;
        b := b + parts;
    END LOOP;
END $$;

SELECT json_build_object(
    'executions', (SELECT count(*) FROM bench.plan), 'chunks_planned', (SELECT sum(n_chunks) FROM bench.plan),
    'oldest_day', (SELECT oldest_day FROM bench.meta), 'jobs', (SELECT count(*) FROM bench.jobprof),
    'body_line_bytes_avg', (SELECT round(avg(octet_length(l)), 1) FROM bench.bodies, unnest(string_to_array(rtrim(data, E'\n'), E'\n')) l),
    'body_lines_avg', (SELECT round(avg(lines), 2) FROM bench.bodies))::text;
