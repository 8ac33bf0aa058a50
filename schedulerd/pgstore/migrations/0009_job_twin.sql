-- 0009: a deferred add (coalesce) looks for a deferred twin still waiting for its first attempt:
-- same type, queue and payload (queries.sql waiting_twin). Without an index on the payload that
-- look-up read every waiting job of the queue: at 20,000 waiting, 9 ms an add (50 us with it), so
-- 10,000 deferred jobs added then took over a minute. A hash index: a payload of any size can be
-- a key (a b-tree entry is limited to about 2.7 kB). Deferred: added to wait before the first
-- attempt (next_attempt_at > created: a type's `defer`, or an add's own delay); the others stay out
-- of the index, and their adds pay no entry.

CREATE INDEX jobs_twin ON jobs USING hash (payload)
    WHERE state = 'waiting' AND attempts = 0 AND next_attempt_at > created;
