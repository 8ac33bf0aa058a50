-- 0004: a scheduled pipeline run's due time (seconds since the epoch, to the millisecond), unique per
-- pipeline: every node of a cluster runs the schedule, and the first to insert a due time's run makes
-- it (INSERT ... ON CONFLICT DO NOTHING), so one due time gives one run cluster-wide. Runs of other
-- triggers, and scheduled runs made before this migration, have none (NULLs never conflict).

ALTER TABLE pipeline_runs ADD COLUMN due double precision;
CREATE UNIQUE INDEX pipeline_runs_due ON pipeline_runs (pipeline, due);
