-- Every statement schedulerd sends to PostgreSQL, by name (`-- name: NAME`, then its comment
-- lines, then the SQL). Loaded once by schedulerd.pgstore.queries; `%(x)s` are parameters.
-- A statement that changes a job's state guards it with `state = ANY(%(from)s)`: the Python
-- side fills `from` from states.JOB_TRANSITIONS (PgJobStore._move), so no arrow outside the
-- table is ever taken, even by two nodes racing on one job.

-- ---- schema ---------------------------------------------------------------------------------

-- name: schema_table
SELECT to_regclass('schema_version') IS NOT NULL;

-- name: schema_version
SELECT coalesce(max(version), 0) FROM schema_version;

-- name: record_version
INSERT INTO schema_version (version) VALUES (%(version)s);

-- name: migration_lock
-- one migrator at a time (two `store:migrate` started together): held to the transaction's end
SELECT pg_advisory_xact_lock(%(key)s);

-- ---- state store ----------------------------------------------------------------------------

-- name: task_wanted
SELECT wanted FROM tasks WHERE name = %(task)s;

-- name: set_wanted
INSERT INTO tasks (name, wanted) VALUES (%(task)s, %(wanted)s)
ON CONFLICT (name) DO UPDATE SET wanted = excluded.wanted;

-- name: set_crashes
-- a task's consecutive failures as `node` counted them: refused (no row) while another node
-- holds the task's lease, so that a node frozen past its lease cannot overwrite its successor's
-- count (the fence of the crash counters; no node: written)
INSERT INTO tasks (name, crashes) SELECT %(task)s, %(crashes)s
WHERE %(node)s::text IS NULL OR NOT EXISTS (
    SELECT 1 FROM task_leases WHERE task = %(task)s AND node <> %(node)s AND expires > clock_timestamp())
ON CONFLICT (name) DO UPDATE SET crashes = excluded.crashes
RETURNING name;

-- name: count_runs
-- the counters of a batch's tasks in one statement (one per task, even pipelined, was ~20 us a task)
INSERT INTO tasks (name, runs, failures)
SELECT * FROM unnest(%(task)s::text[], %(runs)s::bigint[], %(failures)s::bigint[])
ON CONFLICT (name) DO UPDATE SET runs = tasks.runs + excluded.runs, failures = tasks.failures + excluded.failures;

-- name: task_record
SELECT wanted, crashes, runs, failures FROM tasks WHERE name = %(task)s;

-- name: task_records
SELECT n.name, t.wanted, t.crashes, t.runs, t.failures, r.task, extract(epoch FROM r.started)::float8,
       extract(epoch FROM r.ended)::float8, r.outcome, r.error, r.summary, r.source, r.node, r.generation
FROM unnest(%(names)s::text[]) AS n(name)
LEFT JOIN tasks t ON t.name = n.name
LEFT JOIN LATERAL (SELECT * FROM runs WHERE runs.task = n.name ORDER BY id DESC LIMIT 1) r ON true;

-- name: history
SELECT task, extract(epoch FROM started)::float8, extract(epoch FROM ended)::float8, outcome, error, summary, source
FROM runs WHERE task = %(task)s ORDER BY id DESC LIMIT %(limit)s;

-- name: purge_runs_by_age
-- clean (ok = true) or failed runs that ended more than `age` seconds ago, by the database's clock
DELETE FROM runs
WHERE (outcome = ANY(%(clean)s)) = %(ok)s AND ended < now() - make_interval(secs => %(age)s);

-- name: purge_runs_by_count
-- all but the newest `keep` clean (ok = true) or failed runs of each task
DELETE FROM runs WHERE id IN (
    SELECT id FROM (
        SELECT id, row_number() OVER (PARTITION BY task ORDER BY id DESC) AS rn
        FROM runs WHERE (outcome = ANY(%(clean)s)) = %(ok)s) ranked
    WHERE rn > %(keep)s);

-- name: take_history_purge
-- the history retention is one node's at a time for the whole cluster, once per `every` seconds
-- (the database's clock): the node that moves this mark forward purges, the others find it recent
INSERT INTO kv (key, value) VALUES ('schedulerd.history_purged', extract(epoch FROM now())::text)
ON CONFLICT (key) DO UPDATE SET value = excluded.value
    WHERE kv.value::float8 < extract(epoch FROM now()) - %(every)s
RETURNING 1;

-- name: get_value
SELECT value FROM kv WHERE key = %(key)s;

-- name: set_value
INSERT INTO kv (key, value) VALUES (%(key)s, %(value)s) ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: delete_value
DELETE FROM kv WHERE key = %(key)s;

-- ---- job store: adding and reading --------------------------------------------------------------

-- name: lock_deps
-- the jobs a new job waits for, held until it is in (a dependency cannot fail unseen meanwhile)
SELECT id, state FROM jobs WHERE id = ANY(%(ids)s) FOR SHARE;

-- name: lock_twins
-- add(coalesce=True), before its waiting_twin look-ups: an advisory lock on the type and queue,
-- held to the transaction's end, keeps two nodes adding the same job at once from both inserting
-- it. One lock per transaction, not one per payload: a batch of thousands would fill the
-- server's lock table (max_locks_per_transaction), and two batches could deadlock.
SELECT pg_advisory_xact_lock(hashtext(%(type)s || chr(31) || %(queue)s));

-- name: waiting_twin
-- add(coalesce=True): a deferred job of the same type, queue and payload still waiting for its
-- first attempt (index jobs_twin, migration 0009)
SELECT id FROM jobs WHERE type = %(type)s AND queue = %(queue)s AND payload = %(payload)s
  AND state = 'waiting' AND attempts = 0 AND next_attempt_at > created ORDER BY id LIMIT 1;

-- name: insert_job
-- a new job; with an idempotency key (`key`) that a job already has (the add is a retry of one
-- whose commit was lost, or runs beside it), nothing: no row returned (then job_by_add_key)
INSERT INTO jobs (type, queue, payload, title, priority, max_attempts, next_attempt_at, add_key)
VALUES (%(type)s, %(queue)s, %(payload)s, %(title)s, %(priority)s, %(max_attempts)s,
        now() + make_interval(secs => %(delay)s), %(key)s)
ON CONFLICT (add_key) WHERE add_key IS NOT NULL DO NOTHING
RETURNING id;

-- name: job_by_add_key
SELECT id FROM jobs WHERE add_key = %(key)s;

-- name: jobs_by_add_keys
SELECT add_key, id FROM jobs WHERE add_key = ANY(%(keys)s);

-- name: insert_deps
INSERT INTO job_deps (job, dep) SELECT %(job)s, unnest(%(deps)s::bigint[]);

-- name: job_by_id
SELECT * FROM job_rows WHERE id = %(id)s;

-- name: jobs_by_ids
SELECT * FROM job_rows WHERE id = ANY(%(ids)s) ORDER BY priority DESC, id;

-- name: lock_job
SELECT state, attempts, max_attempts FROM jobs WHERE id = %(id)s FOR UPDATE;

-- name: list_jobs
SELECT * FROM job_rows
WHERE (%(state)s::text IS NULL OR state = %(state)s) AND (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(before)s::bigint IS NULL OR id < %(before)s)
ORDER BY id DESC LIMIT %(limit)s;

-- name: count_by_state
SELECT state, count(*) FROM jobs GROUP BY state;

-- name: running_on_node
SELECT id FROM jobs WHERE state = 'running' AND node = %(node)s ORDER BY id FOR UPDATE;

-- name: next_due
-- when the next job of the queue becomes due that was not due `since` seconds ago (when the
-- dispatcher's claim looked); NULL when none is or the queue is paused (see jobstore.NEXT_DUE).
-- One seek in jobs_due (queue, next_attempt_at) of the ready jobs, whose predicate is written out
-- as in claim_jobs, not a read of every ready job of the queue
SELECT CASE WHEN EXISTS (SELECT 1 FROM queues WHERE name = %(queue)s AND paused) THEN NULL ELSE
    (SELECT extract(epoch FROM min(next_attempt_at))::float8 FROM jobs
     WHERE queue = %(queue)s AND state IN ('waiting', 'interrupted')
       AND next_attempt_at > now() - make_interval(secs => %(since)s)) END;

-- name: queue_names
SELECT DISTINCT queue FROM jobs;

-- name: queues_with_work
-- the daemon asks this every few seconds: one seek per queue in jobs_ready (from one queue name to
-- the next, a loose index scan), not a read of every ready job (100,000 queued: ~1,300 blocks);
-- running jobs are few (the workers' slots) and found through jobs_running_node
WITH RECURSIVE ready (name) AS (
    SELECT (SELECT min(queue) FROM jobs WHERE state IN ('waiting', 'interrupted'))
    UNION ALL
    SELECT (SELECT min(queue) FROM jobs WHERE state IN ('waiting', 'interrupted') AND queue > ready.name)
    FROM ready WHERE ready.name IS NOT NULL)
SELECT name FROM ready WHERE name IS NOT NULL
UNION SELECT queue FROM jobs WHERE state = 'running';

-- name: settled_queues
-- the queues that may have work once these jobs ended: their own and their dependents'
-- (each dependent's queue looked up by its id: never a join that may read all of jobs)
SELECT queue FROM jobs WHERE id = ANY(%(ids)s)
UNION SELECT (SELECT j.queue FROM jobs j WHERE j.id = d.job) FROM job_deps d WHERE d.dep = ANY(%(ids)s);

-- name: queues_after_settle
-- after attempts ended: the queues that may have work now, and whether the other nodes should
-- look (`others`): a job due again (a retry, an interrupted attempt, ids `again`) or a waiting
-- dependent may start on any node; a job that finished or failed only freed a slot of the node
-- that ran it, which fills it itself (notifying every node at every job's end would wake them
-- all for nothing: each would claim in vain)
SELECT queue, bool_or(others) FROM (
    SELECT queue, id = ANY(%(again)s) AS others FROM jobs WHERE id = ANY(%(ids)s)
    UNION ALL
    SELECT (SELECT j.queue FROM jobs j WHERE j.id = d.job), true FROM job_deps d WHERE d.dep = ANY(%(ids)s)
) settled GROUP BY queue;

-- ---- job store: state changes (PgJobStore._move runs each) -------------------------------------

-- name: claim_jobs
-- up to `limit` ready jobs of an unpaused queue whose dependencies all finished, in priority
-- order; rows another node is claiming right now are skipped, not waited for. The pause is read
-- once (an uncorrelated subquery: a one-time filter before the scan), not for every waiting job.
-- `state IN ('waiting', 'interrupted')` is written out (it is jobs_ready's predicate) so that the
-- plan walks that index in priority order even once psycopg prepared the statement: with
-- `state = ANY(%(from)s)` alone a generic plan cannot use the partial index and reads every row
-- of the table, done jobs included, at every claim (10,000 jobs: quadratic). `= ANY(from)` stays
-- the transition guard. It returns the claimed jobs as job_rows shows them (one round trip, no
-- second read by id).
WITH picked AS (
    SELECT id FROM jobs j
    WHERE queue = %(queue)s AND state IN ('waiting', 'interrupted') AND state = ANY(%(from)s)
      AND next_attempt_at <= now()
      AND NOT EXISTS (SELECT 1 FROM queues q WHERE q.name = %(queue)s AND q.paused)
      AND NOT EXISTS (SELECT 1 FROM job_deps d JOIN jobs p ON p.id = d.dep
                      WHERE d.job = j.id AND p.state <> 'finished')
    ORDER BY priority DESC, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED)
UPDATE jobs SET state = %(to)s, attempts = attempts + 1, started = now(), node = %(node)s, done = NULL,
                total = NULL
FROM picked WHERE jobs.id = picked.id
RETURNING jobs.id, jobs.type, jobs.queue, jobs.payload, jobs.title, jobs.priority,
          ARRAY(SELECT d.dep FROM job_deps d WHERE d.job = jobs.id ORDER BY d.dep) AS deps,
          jobs.attempts, jobs.max_attempts, extract(epoch FROM jobs.next_attempt_at)::float8 AS next_attempt_at,
          jobs.state, jobs.done, jobs.total, jobs.summary, jobs.error,
          extract(epoch FROM jobs.created)::float8 AS created, extract(epoch FROM jobs.started)::float8 AS started,
          extract(epoch FROM jobs.finished)::float8 AS finished, jobs.node;

-- name: finish_jobs
-- jobs `ids` finished, each with its summary (`summaries`, in the same order): one statement for a
-- batch of ended attempts. `node` (when given): only the node whose claim it is may settle it (a
-- node frozen past its heartbeat, whose job another node recovered and claimed again, changes nothing)
UPDATE jobs SET state = %(to)s, summary = s.summary, error = NULL, finished = now()
FROM unnest(%(ids)s::bigint[], %(summaries)s::text[]) AS s (id, summary)
WHERE jobs.id = s.id AND jobs.state = ANY(%(from)s)
  AND (%(node)s::text IS NULL OR jobs.node = %(node)s) RETURNING jobs.id;

-- name: retry_attempt
-- an attempt failed with attempts left: due again `delay` seconds from now
UPDATE jobs SET state = %(to)s, error = %(error)s, next_attempt_at = now() + make_interval(secs => %(delay)s)
WHERE id = %(id)s AND state = ANY(%(from)s)
  AND (%(node)s::text IS NULL OR node = %(node)s) RETURNING id;

-- name: interrupt_job
UPDATE jobs SET state = %(to)s, error = %(error)s, next_attempt_at = now()
WHERE id = %(id)s AND state = ANY(%(from)s) RETURNING id;

-- name: unclaim_lost
-- jobs the store says `node` runs that it does not (not in `keep`), claimed more than `grace`
-- seconds ago: a claim whose answer the node never got (its connection lost after the server ran
-- the UPDATE). Back to the queue as interrupted, the claim's attempt not counted (it never ran);
-- rows another node is changing right now are skipped
UPDATE jobs SET state = %(to)s, attempts = greatest(attempts - 1, 0), error = %(error)s, next_attempt_at = now()
WHERE id IN (SELECT id FROM jobs WHERE state = 'running' AND node = %(node)s
               AND started < now() - make_interval(secs => %(grace)s) AND NOT (id = ANY(%(keep)s::bigint[]))
             ORDER BY id FOR UPDATE SKIP LOCKED)
  AND state = ANY(%(from)s)
RETURNING id, queue;

-- name: fail_job
-- the job fails if still in one of `from`, and with it every waiting job that depends on it,
-- transitively (waiting/interrupted -> failed)
WITH RECURSIVE doomed (id, cause) AS (
    SELECT id, NULL::bigint FROM jobs WHERE id = %(id)s AND state = ANY(%(from)s)
      AND (%(node)s::text IS NULL OR node = %(node)s)
    UNION
    SELECT d.job, d.dep FROM job_deps d JOIN doomed ON d.dep = doomed.id JOIN jobs j ON j.id = d.job
    WHERE j.state IN ('waiting', 'interrupted')
), once AS (SELECT DISTINCT ON (id) id, cause FROM doomed ORDER BY id, cause)
UPDATE jobs SET state = %(to)s, finished = now(),
    error = CASE WHEN once.cause IS NULL THEN %(error)s
                 ELSE 'dependency #' || once.cause || ' failed or was cancelled' END
FROM once WHERE jobs.id = once.id
RETURNING jobs.id;

-- name: cancel_job
UPDATE jobs SET state = %(to)s, finished = now() WHERE id = %(id)s AND state = ANY(%(from)s) RETURNING id;

-- name: waiting_dependents
SELECT d.job FROM job_deps d JOIN jobs j ON j.id = d.job
WHERE d.dep = %(id)s AND j.state IN ('waiting', 'interrupted') ORDER BY d.job;

-- name: retry_job
-- job:retry: attempts start again from zero, due now
UPDATE jobs SET state = %(to)s, attempts = 0, next_attempt_at = now(), finished = NULL
WHERE id = %(id)s AND state = ANY(%(from)s) RETURNING id;

-- ---- job store: the rest --------------------------------------------------------------------

-- name: purge_jobs_by_age
-- done jobs finished more than `age` seconds ago (their logs and dependency rows go with them)
DELETE FROM jobs WHERE state = ANY(%(states)s) AND finished < now() - make_interval(secs => %(age)s);

-- name: purge_jobs_by_count
DELETE FROM jobs WHERE id IN (
    SELECT id FROM jobs WHERE state = ANY(%(states)s) ORDER BY finished DESC, id DESC OFFSET %(keep)s);

-- name: change_priority
UPDATE jobs SET priority = priority + %(delta)s WHERE id = %(id)s;

-- name: count_by_queue_state
SELECT queue, state, count(*) FROM jobs GROUP BY queue, state;

-- name: set_progress
UPDATE jobs SET done = %(done)s, total = %(total)s WHERE id = %(id)s;

-- name: append_log
INSERT INTO job_logs (job, ts, level, line)
SELECT %(job)s, %(ts)s, %(level)s, %(line)s WHERE EXISTS (SELECT 1 FROM jobs WHERE id = %(job)s);

-- name: log_lines
SELECT ts, level, line FROM job_logs WHERE job = %(job)s ORDER BY id DESC LIMIT %(limit)s;

-- name: set_paused
INSERT INTO queues (name, paused) VALUES (%(queue)s, %(paused)s)
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused;

-- name: paused_queues
SELECT name FROM queues WHERE paused;

-- ---- cluster: jobs across nodes (LISTEN/NOTIFY, dead nodes' jobs, cancel) ------------------------
-- Sent by PgJobStore; pg_notify is delivered at commit, to every node LISTENing
-- (schedulerd.pgstore.listen), and dropped with a rolled-back transaction.

-- name: notify_queues
-- these queues may have work now (a job added, due again, its dependency finished, resumed)
SELECT pg_notify('schedulerd_jobs', q) FROM unnest(%(queues)s::text[]) AS q;

-- name: notify_cancel
-- job:cancel of a running job: the node running it ends the attempt
SELECT pg_notify('schedulerd_cancel', %(id)s::text);

-- name: orphaned_jobs
-- running jobs of other nodes whose heartbeat expired (its `lease` seconds, database time), or
-- whose node row is gone and which started more than `grace` seconds ago; rows another node is
-- recovering right now are skipped
SELECT j.id FROM jobs j LEFT JOIN nodes n ON n.id = j.node
WHERE j.state = 'running' AND j.node IS DISTINCT FROM %(node)s
  AND CASE WHEN n.id IS NULL THEN j.started < now() - make_interval(secs => %(grace)s)
           ELSE n.heartbeat < now() - make_interval(secs => n.lease) END
ORDER BY j.id
FOR UPDATE OF j SKIP LOCKED;

-- name: lock_running_job
-- a running job's row, locked, with the node running it
SELECT attempts, max_attempts, node FROM jobs WHERE id = %(id)s AND state = 'running' FOR UPDATE;

-- name: cancelled_among
-- which of a node's running jobs were cancelled (by job:cancel on any node)
SELECT id FROM jobs WHERE id = ANY(%(ids)s) AND state = 'cancelled';

-- ---- cluster: nodes and task leases (schedulerd.pgstore.cluster; docs/cluster.md) -----------
-- Every lease decision compares with the database's clock, never a node's: clock_timestamp(),
-- the time the statement runs, not now() (the transaction's start, earlier by the wait between
-- BEGIN and the statement: an iteration's start recorded with it would let the next holder
-- start early by that wait).

-- name: node_lock
-- one registration of a node id at a time (two daemons started together with one id)
SELECT pg_advisory_xact_lock(hashtext('schedulerd node ' || %(id)s));

-- name: node_row
SELECT host, pid, heartbeat > now() - make_interval(secs => lease) FROM nodes WHERE id = %(id)s;

-- name: register_node
INSERT INTO nodes (id, host, pid, version, kind, lease, config_hash)
VALUES (%(id)s, %(host)s, %(pid)s, %(version)s, %(kind)s, %(lease)s, %(config_hash)s)
ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid, version = excluded.version,
    kind = excluded.kind, lease = excluded.lease, config_hash = excluded.config_hash, started = now(),
    heartbeat = now(), tasks_held = 0, jobs_running = 0;

-- name: node_beat
-- the node's heartbeat; no row: the id is no longer this process's (taken over meanwhile)
UPDATE nodes SET heartbeat = now(), tasks_held = %(tasks_held)s, jobs_running = %(jobs_running)s,
    config_hash = %(config_hash)s
WHERE id = %(id)s AND host = %(host)s AND pid = %(pid)s RETURNING id;

-- name: unregister_node
DELETE FROM nodes WHERE id = %(id)s AND host = %(host)s AND pid = %(pid)s;

-- name: list_nodes
SELECT id, host, pid, version, kind, extract(epoch FROM started)::float8, extract(epoch FROM heartbeat)::float8,
       extract(epoch FROM now() - heartbeat)::float8, heartbeat > now() - make_interval(secs => lease),
       config_hash, tasks_held, jobs_running
FROM nodes ORDER BY id;

-- name: lease_holders
SELECT task, node FROM task_leases WHERE node IS NOT NULL AND expires > now();

-- name: all_wanted
SELECT name, wanted FROM tasks WHERE wanted IS NOT NULL;

-- name: acquire_lease
-- the task's lease for `node` when nobody holds it, its holder's lease ran out, or it is this
-- node's own from a previous life; each take raises the generation (the fencing token).
-- Returns the generation and the seconds until the task's next start is due (none: at once)
INSERT INTO task_leases AS l (task, node, generation, expires)
VALUES (%(task)s, %(node)s, 1, clock_timestamp() + make_interval(secs => %(lease)s))
ON CONFLICT (task) DO UPDATE SET node = excluded.node, generation = l.generation + 1, expires = excluded.expires
WHERE l.node IS NULL OR l.expires <= clock_timestamp() OR l.node = excluded.node
RETURNING generation, extract(epoch FROM l.last_start + make_interval(secs => %(period)s) - clock_timestamp())::float8;

-- name: renew_lease
UPDATE task_leases SET expires = clock_timestamp() + make_interval(secs => %(lease)s)
WHERE task = %(task)s AND node = %(node)s AND generation = %(generation)s AND expires > clock_timestamp()
RETURNING generation;

-- name: begin_iteration
-- an iteration may start only while the lease still has `margin` seconds: its start is
-- recorded (database time) so that whichever node runs the task next keeps the period, and
-- returned: the run history's start of the iteration
UPDATE task_leases SET last_start = clock_timestamp()
WHERE task = %(task)s AND node = %(node)s AND generation = %(generation)s
  AND expires > clock_timestamp() + make_interval(secs => %(margin)s)
RETURNING extract(epoch FROM last_start)::float8;

-- name: release_lease
UPDATE task_leases SET node = NULL, expires = clock_timestamp()
WHERE task = %(task)s AND node = %(node)s AND generation = %(generation)s;

-- name: insert_runs_fenced
-- a batch of runs in one statement (a round trip per run was ~180 us of wall time a run: the
-- writer of 10,000 tasks every second fell behind), in their order; a run written under a lease
-- is refused when the task's lease has a newer generation (another node took it over: this
-- node's write is stale). No generation (a one-shot task:run): written. The runs written are
-- returned; a refusal depends on (task, generation) alone.
INSERT INTO runs (task, started, ended, outcome, error, summary, source, node, generation)
SELECT r.task, to_timestamp(r.started), to_timestamp(r.ended), r.outcome, r.error, r.summary, r.source, r.node,
       r.generation
FROM unnest(%(task)s::text[], %(started)s::float8[], %(ended)s::float8[], %(outcome)s::text[], %(error)s::text[],
            %(summary)s::text[], %(source)s::text[], %(node)s::text[], %(generation)s::bigint[])
     WITH ORDINALITY AS r(task, started, ended, outcome, error, summary, source, node, generation, i)
WHERE r.generation IS NULL
   OR NOT EXISTS (SELECT 1 FROM task_leases l WHERE l.task = r.task AND l.generation > r.generation)
ORDER BY r.i
RETURNING task, outcome, generation;

-- name: history_nodes
SELECT task, extract(epoch FROM started)::float8, extract(epoch FROM ended)::float8, outcome, error, summary, source,
       node, generation
FROM runs WHERE task = %(task)s ORDER BY id DESC LIMIT %(limit)s;
