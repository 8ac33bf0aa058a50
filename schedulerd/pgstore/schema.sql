-- schedulerd's PostgreSQL schema, whole: what `bin/console store:migrate` makes of a database
-- by running migrations/NNNN_*.sql in order (one file per change; this file is kept equal to
-- their result, which a test checks). Times that decide something shared (due times, claims,
-- retention) are the database's own clock (now()), never a node's.

-- one row per applied migration; the highest is the schema's version
CREATE TABLE schema_version (
    version integer PRIMARY KEY,
    applied timestamptz NOT NULL DEFAULT now()
);

-- the state store: each task's wanted state and counters, its run history, small values
CREATE TABLE tasks (
    name text PRIMARY KEY,
    wanted text CHECK (wanted IN ('started', 'stopped', 'disabled')),
    crashes integer NOT NULL DEFAULT 0,
    runs bigint NOT NULL DEFAULT 0,
    failures bigint NOT NULL DEFAULT 0
);

CREATE TABLE runs (
    id bigserial PRIMARY KEY,
    task text NOT NULL,
    started timestamptz NOT NULL,
    ended timestamptz NOT NULL,
    outcome text NOT NULL,
    error text,
    summary text,
    source text NOT NULL DEFAULT 'daemon',
    node text,           -- the node that ran it (PostgreSQL only)
    generation bigint    -- the task lease's generation it ran under (fencing token)
);
CREATE INDEX runs_task ON runs (task, id);
CREATE INDEX runs_ended ON runs (ended);

CREATE TABLE kv (
    key text PRIMARY KEY,
    value text NOT NULL
);

-- the job queue
CREATE TABLE jobs (
    id bigserial PRIMARY KEY,
    type text NOT NULL,
    queue text NOT NULL,
    payload jsonb NOT NULL,
    title text NOT NULL DEFAULT '',
    priority integer NOT NULL DEFAULT 0,
    attempts integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL DEFAULT 1,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    state text NOT NULL DEFAULT 'waiting'
        CHECK (state IN ('waiting', 'running', 'finished', 'failed', 'interrupted', 'cancelled')),
    done bigint,
    total bigint,
    summary text,
    error text,
    created timestamptz NOT NULL DEFAULT now(),
    started timestamptz,
    finished timestamptz,
    node text,
    add_key text  -- the idempotency key of the add that made it (migration 0006)
);
-- an add retried after its commit was lost finds its job by its key (migration 0006)
CREATE UNIQUE INDEX jobs_add_key ON jobs (add_key) WHERE add_key IS NOT NULL;
-- what a claim scans: the ready jobs of one queue in priority order
CREATE INDEX jobs_ready ON jobs (queue, priority DESC, id) WHERE state IN ('waiting', 'interrupted');
-- when a queue's next job becomes due (next_due; migration 0005)
CREATE INDEX jobs_due ON jobs (queue, next_attempt_at) WHERE state IN ('waiting', 'interrupted');
-- a deferred add's look-up of a deferred twin still waiting (waiting_twin; migration 0009)
CREATE INDEX jobs_twin ON jobs USING hash (payload)
    WHERE state = 'waiting' AND attempts = 0 AND next_attempt_at > created;
CREATE INDEX jobs_state ON jobs (state, finished);
CREATE INDEX jobs_running_node ON jobs (node) WHERE state = 'running';

CREATE TABLE job_deps (
    job bigint NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    dep bigint NOT NULL,
    PRIMARY KEY (job, dep)
);
CREATE INDEX job_deps_dep ON job_deps (dep);

CREATE TABLE job_logs (
    id bigserial PRIMARY KEY,
    job bigint NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    ts double precision NOT NULL,
    level text NOT NULL,
    line text NOT NULL
);
CREATE INDEX job_logs_job ON job_logs (job, id);

CREATE TABLE queues (
    name text PRIMARY KEY,
    paused boolean NOT NULL DEFAULT false
);

-- a job as the program reads it: times as seconds since the epoch, its dependencies as an array
CREATE VIEW job_rows AS
SELECT j.id, j.type, j.queue, j.payload, j.title, j.priority,
       ARRAY(SELECT d.dep FROM job_deps d WHERE d.job = j.id ORDER BY d.dep) AS deps,
       j.attempts, j.max_attempts, extract(epoch FROM j.next_attempt_at)::float8 AS next_attempt_at,
       j.state, j.done, j.total, j.summary, j.error, extract(epoch FROM j.created)::float8 AS created,
       extract(epoch FROM j.started)::float8 AS started, extract(epoch FROM j.finished)::float8 AS finished,
       j.node
FROM jobs j;

-- the cluster (migration 0002): one row per node; `heartbeat` is renewed by the node in the
-- database's time (now()); a node whose heartbeat is older than its `lease` seconds is dead: its
-- task leases and running jobs may be taken over by the others
CREATE TABLE nodes (
    id text PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    version text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('daemon', 'worker')),
    started timestamptz NOT NULL DEFAULT now(),
    heartbeat timestamptz NOT NULL DEFAULT now(),
    lease double precision NOT NULL DEFAULT 15,
    config_hash text NOT NULL DEFAULT '',
    tasks_held integer NOT NULL DEFAULT 0,
    jobs_running integer NOT NULL DEFAULT 0
);

-- one row per periodic task: the node holding it until `expires` (database time), the lease's
-- generation (raised at every takeover: a write carrying an older one is refused), and the
-- scheduled start of the task's last iteration, which keeps its period across nodes
CREATE TABLE task_leases (
    task text PRIMARY KEY,
    node text,
    generation bigint NOT NULL DEFAULT 0,
    expires timestamptz NOT NULL DEFAULT now(),
    last_start timestamptz
);

-- pipeline runs (migration 0003, schedulerd.pipelinestore): a run, one row per step started, one part
-- per job of a step (the jobs are rows of `jobs`, inserted with the step)
CREATE TABLE pipeline_runs (
    id bigserial PRIMARY KEY,
    pipeline text NOT NULL,
    trigger text NOT NULL,
    state text NOT NULL CHECK (state IN ('running', 'finished', 'failed')),
    step integer NOT NULL DEFAULT 0,
    steps text NOT NULL,
    input text NOT NULL,
    created double precision NOT NULL,
    finished double precision,
    error text,
    due double precision  -- a scheduled run's due time (migration 0004): one run per due time cluster-wide
);
CREATE INDEX pipeline_runs_state ON pipeline_runs (state);
CREATE UNIQUE INDEX pipeline_runs_due ON pipeline_runs (pipeline, due);

CREATE TABLE pipeline_steps (
    run bigint NOT NULL REFERENCES pipeline_runs (id) ON DELETE CASCADE,
    step integer NOT NULL,
    name text NOT NULL,
    state text NOT NULL CHECK (state IN ('running', 'finished', 'failed')),
    items_in integer NOT NULL,
    items_out integer,
    parts integer NOT NULL DEFAULT 0,
    started double precision NOT NULL,
    finished double precision,
    error text,
    output text,
    part_items integer,  -- items per part (1: parallel), NULL: one part holds every item (migration 0007)
    PRIMARY KEY (run, step)
);

CREATE TABLE pipeline_parts (
    run bigint NOT NULL,
    step integer NOT NULL,
    part integer NOT NULL,
    job bigint NOT NULL,
    output text,
    job_state text,  -- the state and error its job had when deleted (migration 0008: the trigger below)
    job_error text,
    PRIMARY KEY (run, step, part),
    FOREIGN KEY (run, step) REFERENCES pipeline_steps (run, step) ON DELETE CASCADE
);
CREATE INDEX pipeline_parts_job ON pipeline_parts (job);

-- a deleted job's end stays with its part: a part whose job is gone is finished only if its job was
CREATE FUNCTION pipeline_parts_job_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE pipeline_parts p SET job_state = gone.state, job_error = gone.error FROM gone WHERE p.job = gone.id;
    RETURN NULL;
END $$;
CREATE TRIGGER pipeline_parts_job_deleted AFTER DELETE ON jobs REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION pipeline_parts_job_deleted();
