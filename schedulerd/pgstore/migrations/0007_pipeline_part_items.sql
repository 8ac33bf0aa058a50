-- 0007: how a pipeline step's parts were built: `part_items` items per part (1: a `parallel` step,
-- part k holding input item k), NULL when one part holds every item. A step's output maps the
-- parts' outputs to its items with it, not with the step's `parallel` setting of the moment (a
-- reload, or another node of the cluster, may have another). A step started before it: a step
-- with more than one part was a parallel one (a step with one part maps the same either way).

ALTER TABLE pipeline_steps ADD COLUMN part_items integer;
UPDATE pipeline_steps SET part_items = 1 WHERE parts > 1;
