-- 0008_notifications: the notification outbox and its delivery log.
-- breaking: no
--
-- A job's `notify` items say where to send (webhook, Slack, e-mail) and on
-- which events. When an execution starts or finishes, a trigger on
-- executions expands the job's matching items into pending rows here, in the
-- transaction that changed the status (whoever changed it: an executor, the
-- API's cancel, the reaper), and NOTIFYs tsubame_notify. `running_long` rows
-- are added by the executors' delivery loop (Notifications.findRunningLong),
-- at most once per execution and receiver (a unique index). The delivery
-- loop claims due pending rows with FOR UPDATE SKIP LOCKED, sends them and
-- records each attempt; a failure is retried with backoff, then `failed`.
-- Rows of the API's "send test notification" (event `test`) are written
-- already sent or failed.
--
-- `target` (the URL or address) and `item` (the notify item as it was, the
-- sealed webhook secret included) are never shown: Slack URLs and query
-- strings carry tokens. `destination` is what people see
-- (tsubame_notify_destination).

CREATE FUNCTION tsubame_notify_destination(kind text, target text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    m text[];
BEGIN
    IF kind = 'email' THEN
        RETURN target;
    END IF;
    -- scheme://, userinfo@, host[:port], path, ?query, #fragment
    m := regexp_match(target, '^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*@)?([^/?#]*)([^?#]*)(\?[^#]*)?(#.*)?$');
    IF m IS NULL THEN
        RETURN '(hidden)';
    END IF;
    RETURN m[1] || CASE WHEN m[2] IS NOT NULL THEN '***@' ELSE '' END || m[3]
        -- A Slack incoming-webhook URL is a credential in its path.
        || CASE WHEN kind = 'slack' AND m[4] NOT IN ('', '/') THEN '/***' ELSE m[4] END
        || CASE WHEN m[5] IS NOT NULL THEN '?***' ELSE '' END;
END
$$;

CREATE TABLE notification_deliveries (
    id              bigserial PRIMARY KEY,
    -- SET NULL: the log outlives the job and the execution.
    job_id          bigint REFERENCES jobs (id) ON DELETE SET NULL,
    execution_id    bigint REFERENCES executions (id) ON DELETE SET NULL,
    event           text NOT NULL CONSTRAINT notification_deliveries_event_known
                    CHECK (event IN ('started', 'succeeded', 'failed', 'cancelled', 'timed_out', 'running_long', 'test')),
    type            text NOT NULL CONSTRAINT notification_deliveries_type_known CHECK (type IN ('webhook', 'slack', 'email')),
    target          text NOT NULL,
    destination     text NOT NULL,
    item            jsonb NOT NULL,
    -- For running_long: {median_ms, factor}.
    detail          jsonb,
    status          text NOT NULL DEFAULT 'pending'
                    CONSTRAINT notification_deliveries_status_known CHECK (status IN ('pending', 'sent', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    -- When pending: not before this time. A claimed row has it moved past its send (a lease): when its executor
    -- dies mid-send, the row is due again then.
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    response_code   integer,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz
);
CREATE INDEX notification_deliveries_due_idx ON notification_deliveries (next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX notification_deliveries_job_idx ON notification_deliveries (job_id, id DESC);
CREATE INDEX notification_deliveries_execution_idx ON notification_deliveries (execution_id, id DESC);
CREATE UNIQUE INDEX notification_deliveries_running_long_once ON notification_deliveries (execution_id, type, target)
    WHERE event = 'running_long';

CREATE FUNCTION tsubame_notify_execution() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ev text;
BEGIN
    IF NEW.job_id IS NULL THEN
        RETURN NULL;
    END IF;
    IF NEW.status = 'running' AND OLD.status = 'queued' THEN
        ev := 'started';
    ELSIF NEW.status IN ('succeeded', 'failed', 'cancelled', 'timed_out') THEN
        ev := NEW.status;
    ELSE
        RETURN NULL;
    END IF;
    INSERT INTO notification_deliveries (job_id, execution_id, event, type, target, destination, item)
    SELECT NEW.job_id, NEW.id, ev, n.item->>'type', coalesce(n.item->>'url', n.item->>'to'),
           tsubame_notify_destination(n.item->>'type', coalesce(n.item->>'url', n.item->>'to')), n.item
    FROM jobs j CROSS JOIN LATERAL jsonb_array_elements(j.notify) WITH ORDINALITY AS n(item, pos)
    WHERE j.id = NEW.job_id AND n.item->'on' ? ev
    ORDER BY n.pos;
    IF FOUND THEN
        PERFORM pg_notify('tsubame_notify', NEW.id::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER executions_notify AFTER UPDATE OF status ON executions
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION tsubame_notify_execution();

-- The event was called long_running before it was sent; it is running_long now (like execution.running_long).
UPDATE jobs SET notify = (
    SELECT jsonb_agg(CASE WHEN n.item->'on' ? 'long_running'
                          THEN jsonb_set(n.item, '{on}', (SELECT jsonb_agg(CASE WHEN o = '"long_running"' THEN '"running_long"'::jsonb ELSE o END)
                                                          FROM jsonb_array_elements(n.item->'on') AS o))
                          ELSE n.item END ORDER BY n.pos)
    FROM jsonb_array_elements(jobs.notify) WITH ORDINALITY AS n(item, pos))
WHERE jsonb_path_exists(notify, '$[*].on[*] ? (@ == "long_running")');
