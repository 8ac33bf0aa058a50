"""Stories: records (of type "story") that contain other records."""

from __future__ import annotations

from typing import Any

from .core import DataboxCore
from .model import UnknownRecord


class Stories(DataboxCore):
    """Adding records to stories, removing them, and who contains whom."""

    def _link_story(self, c: Any, story_id: int, record_id: int) -> None:
        row = c.execute("SELECT type FROM records WHERE id = ?", (int(story_id),)).fetchone()
        if row is None or row[0] != "story":
            raise UnknownRecord(f"no story {story_id} in databox {self.settings.where}")
        if int(story_id) == int(record_id):
            raise ValueError("a story cannot contain itself")
        c.execute("INSERT INTO story_children(story_id, record_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                  (int(story_id), int(record_id)))

    def add_to_story(self, story_id: int, record_id: int) -> None:
        with self.transaction() as c:
            if c.execute("SELECT 1 FROM records WHERE id = ?", (int(record_id),)).fetchone() is None:
                raise UnknownRecord(f"no record {record_id} in databox {self.settings.where}")
            self._link_story(c, story_id, record_id)

    def remove_from_story(self, story_id: int, record_id: int) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM story_children WHERE story_id = ? AND record_id = ?", (int(story_id), int(record_id)))

    def story_children(self, story_id: int) -> list[int]:
        return [r[0] for r in self._query("SELECT record_id FROM story_children WHERE story_id = ? ORDER BY record_id",
                                          (int(story_id),))]

    def stories_of(self, record_id: int) -> list[int]:
        return [r[0] for r in self._query("SELECT story_id FROM story_children WHERE record_id = ? ORDER BY story_id",
                                          (int(record_id),))]
