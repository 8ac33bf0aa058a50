"""The control protocol's shared vocabulary: stable numbered error codes.

No dependencies: the thin CLI client imports this without pulling in the engine.
See docs/control-protocol.md.
"""

from __future__ import annotations

from typing import Any

MAX_REQUEST = 64 * 1024


class Fault:
    BAD_REQUEST = 1  # malformed JSON, not an object, missing "cmd"
    UNKNOWN_COMMAND = 2
    BAD_ARGUMENTS = 3
    TOO_LARGE = 4
    TIMEOUT = 5
    FORBIDDEN = 6
    BUSY = 7  # too many connections
    NO_SUCH_TASK = 10
    ALREADY_STARTED = 11
    NOT_RUNNING = 12
    TASK_DISABLED = 13
    NO_SUCH_JOB = 20
    BAD_JOB_STATE = 21
    BAD_JOB = 22
    NO_SUCH_QUEUE = 23
    CONFIG_INVALID = 30
    SHUTTING_DOWN = 40
    INTERNAL = 50


FAULT_NAMES = {v: k for k, v in vars(Fault).items() if isinstance(v, int)}


class ControlError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def to_json(self) -> dict[str, Any]:
        return {"ok": False, "error": {"code": self.code, "name": FAULT_NAMES.get(self.code, "UNKNOWN"),
                                       "message": self.message}}
