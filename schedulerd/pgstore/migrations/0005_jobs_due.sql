-- 0005: the ready jobs of a queue by due time, for next_due (when the queue's next job becomes
-- due): one index seek instead of reading every ready job of the queue (100,000 queued: ~1,300
-- blocks per call, which the dispatcher makes whenever it finds nothing to claim). The same
-- partial index as the SQLite job store's jobs_due. Built inside store:migrate's transaction
-- (no CONCURRENTLY): jobs are not added while it is built.

CREATE INDEX jobs_due ON jobs (queue, next_attempt_at) WHERE state IN ('waiting', 'interrupted');
