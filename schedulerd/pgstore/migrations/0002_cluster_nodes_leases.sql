-- 0002: the cluster: nodes (one row per running daemon or worker:execute process), task leases
-- (which node runs each periodic task, with a generation number as fencing token), and the
-- lease generation and node on each recorded run (see docs/cluster.md)

-- one row per node; `heartbeat` is renewed by the node in the database's time (now()); a node
-- whose heartbeat is older than its `lease` seconds is dead: its task leases and running jobs
-- may be taken over by the others
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

ALTER TABLE runs ADD COLUMN node text;
ALTER TABLE runs ADD COLUMN generation bigint;
