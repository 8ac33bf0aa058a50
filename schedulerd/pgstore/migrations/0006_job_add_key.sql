-- 0006: the idempotency key of the add that made a job (a uuid the caller draws once per job it
-- adds). An add whose connection was lost after the server committed it is retried; the retry's
-- INSERT meets the key and yields (ON CONFLICT DO NOTHING), and the add reads the job's id
-- instead of making a second job. Jobs added without a key (the CLI, pipelines) have NULL, which
-- the partial unique index leaves out.

ALTER TABLE jobs ADD COLUMN add_key text;
CREATE UNIQUE INDEX jobs_add_key ON jobs (add_key) WHERE add_key IS NOT NULL;
