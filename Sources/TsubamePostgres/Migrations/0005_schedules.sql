-- Schedules: the next slot per job, and at most one execution per (job, slot).
--
-- jobs.next_run_at is the next slot the scheduler has not handled yet; NULL
-- means "compute it from now" (a new schedule, a changed schedule or time
-- zone, a job enabled again: none of these fires slots from the past).
ALTER TABLE jobs ADD COLUMN next_run_at timestamptz;
CREATE INDEX jobs_next_run_at ON jobs (next_run_at) WHERE enabled AND schedule IS NOT NULL;

CREATE FUNCTION tsubame_job_schedule_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.schedule IS DISTINCT FROM OLD.schedule OR NEW.timezone IS DISTINCT FROM OLD.timezone
       OR (NEW.enabled AND NOT OLD.enabled) THEN
        NEW.next_run_at := NULL;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER jobs_schedule_changed BEFORE UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION tsubame_job_schedule_changed();

-- The slot a scheduled execution was made for: two schedulers racing for one slot make one execution.
ALTER TABLE executions ADD COLUMN schedule_slot timestamptz;
CREATE UNIQUE INDEX executions_schedule_slot ON executions (job_id, schedule_slot) WHERE schedule_slot IS NOT NULL;
