"""Record events and the jobs they queue (the Worker Manager's messages).

`[databoxes.NAME.on]` maps an event to job types (settings.DEFAULT_ON when not given). A job type
of PER_RECORD takes one record (`{"databox": NAME, "record": ID}`), one job per record; any other
takes the records at once (`{"databox": NAME, "records": [...], "event": EVENT}`). Whoever changes
records (a task, a job, a command) hands these to its job queue (`ctx.add_jobs`, `env.add_job`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .settings import DataboxSettings

PER_RECORD = frozenset({"subdefCreation", "writeMetadatas", "deleteRecord"})


def record_jobs(databox: str, box: DataboxSettings, event: str, ids: Sequence[int]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Each job type `event` on the records `ids` of `databox` queues, with its payloads: one per
    record for a PER_RECORD type, else one for all (a caller adds each type's jobs in one write)."""
    ids = [int(i) for i in ids]
    if not ids:
        return []
    return [(type_name, [{"databox": databox, "record": i} for i in ids] if type_name in PER_RECORD
             else [{"databox": databox, "records": ids, "event": event}])
            for type_name in box.jobs_on(event)]
