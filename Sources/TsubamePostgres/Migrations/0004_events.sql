-- The live feed of execution changes (GET /api/v1/events) and its wake-up.
--
-- Every status change of an execution (and its creation) adds one row here
-- and a NOTIFY on tsubame_events with payload "EVENT_ID:EXECUTION_ID". The
-- pool's listeners use it to answer long-polls: the events feed itself and
-- the log of that execution (whose answer carries the status).
--
-- A reader pages with `id > after`, so ids must become visible in id order:
-- a smaller id committing after a larger one was read would be skipped for
-- good. Hence the row is written by a deferred trigger (it runs at commit,
-- after every row lock the transaction takes) that serialises on an
-- advisory lock, held until the commit is visible, before taking its id.
-- Only execution-level changes pay for this (a few per run), never output.

CREATE TABLE execution_events (
    id           bigint PRIMARY KEY,
    -- No foreign key: the feed is a log; readers skip executions deleted since.
    execution_id bigint NOT NULL,
    type         text NOT NULL CONSTRAINT execution_events_type_known
                 CHECK (type IN ('execution.created', 'execution.updated', 'execution.finished')),
    at           timestamptz NOT NULL DEFAULT now()
);
CREATE SEQUENCE execution_events_id_seq OWNED BY execution_events.id;
-- Pruning by age (Queue.reap keeps a day).
CREATE INDEX execution_events_at ON execution_events (at);

CREATE FUNCTION tsubame_execution_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    kind   text;
    new_id bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        kind := 'execution.created';
    ELSIF NEW.status IN ('succeeded', 'failed', 'cancelled', 'timed_out') THEN
        kind := 'execution.finished';
    ELSE
        kind := 'execution.updated';
    END IF;
    PERFORM pg_advisory_xact_lock(7458221);
    new_id := nextval('execution_events_id_seq');
    INSERT INTO execution_events (id, execution_id, type) VALUES (new_id, NEW.id, kind);
    PERFORM pg_notify('tsubame_events', new_id::text || ':' || NEW.id::text);
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER executions_event_created AFTER INSERT ON executions
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION tsubame_execution_event();
CREATE CONSTRAINT TRIGGER executions_event_status AFTER UPDATE OF status ON executions
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION tsubame_execution_event();
