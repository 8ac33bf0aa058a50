-- 0003: pipeline runs (schedulerd.pipelinestore, docs/pipelines.md): a run, one row per step started,
-- and one part per job of a step (the jobs themselves are rows of `jobs`, inserted with the step)

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
    error text
);
CREATE INDEX pipeline_runs_state ON pipeline_runs (state);

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
    PRIMARY KEY (run, step)
);

CREATE TABLE pipeline_parts (
    run bigint NOT NULL,
    step integer NOT NULL,
    part integer NOT NULL,
    job bigint NOT NULL,
    output text,
    PRIMARY KEY (run, step, part),
    FOREIGN KEY (run, step) REFERENCES pipeline_steps (run, step) ON DELETE CASCADE
);
CREATE INDEX pipeline_parts_job ON pipeline_parts (job);
