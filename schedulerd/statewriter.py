"""The daemon's one writer of the state store: the run history, crash counters and wanted states
the runners leave in their sink, saved in batches in a worker thread (a thousand tasks never stall
the loop; a locked store delays them, retried, and loses none); and the history's retention."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anyio

from .configfiles import SchedulerSettings
from .runner import HistorySink
from .store import STORE_ERRORS, StateStore, store_call

log = logging.getLogger("schedulerd")
HISTORY_PURGE_EVERY = 300.0  # seconds between two passes of the run history's retention


class StateWriter:
    def __init__(self, store: StateStore, sink: HistorySink, scheduler: Callable[[], SchedulerSettings]):
        self.store, self.sink = store, sink
        self._scheduler = scheduler  # the running configuration's (a reload may change the retention)
        self._writing = anyio.Lock()  # held while a batch of the sink is being saved

    @property
    def busy(self) -> bool:
        return self._writing.locked()

    async def run(self) -> None:
        """Write what the runners left, every 0.5 s while they leave some; purge every 5 minutes."""
        last_purge = 0.0
        while True:
            self.sink.ready = anyio.Event()
            if not self.sink.pending():
                with anyio.move_on_after(HISTORY_PURGE_EVERY):  # idle: wake for nothing but the periodic purge
                    await self.sink.ready.wait()
            await anyio.sleep(0.5)  # gather a batch
            await self.write()
            if time.monotonic() - last_purge > HISTORY_PURGE_EVERY:
                last_purge = time.monotonic()
                await self._purge()

    async def write(self, give_up_after: float | None = None) -> None:
        """Save what the sink holds; retried until written (or, at the end, for `give_up_after` s)."""
        if not self.sink.pending():
            return
        async with self._writing:  # one batch at a time: a run is never saved twice
            batch = self.sink.batch()
            try:
                await store_call("writing the run history and task states", self.store.save, *batch,
                                 give_up_after=give_up_after)
            except STORE_ERRORS as e:
                log.error("the state store stays unwritable (%s): %d run(s) of the history and %d task state(s) "
                          "are not saved yet", e, len(batch[0]), len(batch[1]) + len(batch[2]))
                return
            self.sink.written(*batch)

    async def _purge(self) -> None:
        sch = self._scheduler()
        try:  # retention only: when the store is busy, the next purge (in 5 minutes) goes on
            # a shared store: another node's pass since this one's last counts (its mark must be
            # older than most of the period, or this node's next pass would find its own)
            if not await anyio.to_thread.run_sync(self.store.retention_turn, HISTORY_PURGE_EVERY * 0.8):
                return
            await anyio.to_thread.run_sync(self.store.purge_history, sch.history_keep_ok, sch.history_keep_failed,
                                           sch.history_max_age_ok, sch.history_max_age_failed)
        except STORE_ERRORS as e:
            log.warning("history retention stopped: the state store failed (%s: %s); the next pass in 5 minutes "
                        "goes on", type(e).__name__, e)
