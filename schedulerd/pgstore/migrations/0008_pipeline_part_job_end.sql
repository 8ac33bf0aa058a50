-- 0008: a pipeline part keeps the state and error its job had when the job was deleted (the
-- retention or job:purge deletes done jobs, maybe before the pipelines' driver looked at them): a
-- part whose job is gone counts as finished only if its job finished, a failed one fails the step
-- with the job's error, and one whose job went without this record (deleted before this
-- migration) fails the step saying so. One UPDATE per DELETE statement, from its deleted rows.

ALTER TABLE pipeline_parts ADD COLUMN job_state text, ADD COLUMN job_error text;

CREATE FUNCTION pipeline_parts_job_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE pipeline_parts p SET job_state = gone.state, job_error = gone.error FROM gone WHERE p.job = gone.id;
    RETURN NULL;
END $$;

CREATE TRIGGER pipeline_parts_job_deleted AFTER DELETE ON jobs REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION pipeline_parts_job_deleted();
