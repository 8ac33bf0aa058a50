"""Task type `workflow01`: Phraseanet's simple workflow, one record_mover rule in disguise.

Records of `collection_from` whose status matches `status_from` go to `collection_to`
and get the bits of `status_to`, every `period`. Same engine, same guarantees
(one transaction, idempotent, ids logged, events, `task:preview`).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, ClassVar

from repository import NO_MASK, StatusMask
from schedulerd.settings import ConfigError

from .record_mover import Condition, RecordMover, Rule, Target, mask

KEYS = {
    "databox": "databox",
    "from.collection[0]": "collection_from",
    "from.status": "status_from",
    "to.collection": "collection_to",
    "to.status": "status_to",
}


@dataclasses.dataclass(frozen=True)
class Settings:
    databox: str
    collection_from: str | None = None
    status_from: Annotated[StatusMask, mask] = NO_MASK
    collection_to: str | None = None
    status_to: Annotated[StatusMask, mask] = NO_MASK

    def check(self) -> None:
        if self.collection_from is None and self.status_from.empty:
            raise ConfigError("collection_from", "give collection_from and/or status_from (which records to move)")
        if self.collection_to is None and self.status_to.empty:
            raise ConfigError("collection_to", "give collection_to and/or status_to (what to change)")

    def rule(self) -> Rule:
        return Rule(
            name="workflow01",
            databox=self.databox,
            from_=Condition(collection=(self.collection_from,) if self.collection_from else (), status=self.status_from),
            action="update",
            to=Target(collection=self.collection_to, status=self.status_to),
        )


class Workflow01(RecordMover):
    type_name: ClassVar[str] = "workflow01"
    Settings: ClassVar[type] = Settings
    default_period: ClassVar[float] = 60.0

    def __init__(self, settings: Any):
        super().__init__(settings)
        self._rules = (settings.rule(),)

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    def where(self, key: str, index: int) -> str:
        return KEYS.get(key, key)
