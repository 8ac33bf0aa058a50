"""Failed logins, counted per client address and per user name: past `max_failures` within
`window` seconds, further logins from that address (or for that user) are refused (429, with
Retry-After) without checking the password, until the oldest of those failures is `window` old.
A login is counted as failed when it is let through to its password check, not after it: logins
sent at once cannot all get their passwords checked before the first failure is counted; a
success then clears the counts.

Memory is bounded: at most `max_keys` addresses are tracked (the least recently failed one is
forgotten first), each with at most `max_failures` times; user names are counted only when they
are configured users (unknown names cannot log in anyway, and would let a flood grow the table)."""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

MAX_KEYS = 10_000


@dataclass(frozen=True)
class Refusal:
    """Why a login is refused now, and for how long still (the Retry-After)."""

    what: str  # "address 127.0.0.1" or "user alice"
    retry_after: int  # whole seconds, at least 1


class FailureWindow:
    """Failures per key over a sliding window, for at most `max_keys` keys."""

    def __init__(self, max_failures: int, window: float, max_keys: int = MAX_KEYS):
        self.max_failures = max_failures
        self.window = window
        self.max_keys = max_keys
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def blocked_for(self, key: str, now: float) -> float:
        """Seconds until `key` may try again (0: it may now)."""
        times = self._recent(key, now)
        if times is None or len(times) < self.max_failures:
            return 0.0
        return times[0] + self.window - now

    def fail(self, key: str, now: float) -> bool:
        """Count one failure; True when it is the one that reaches the limit."""
        times = self._recent(key, now)
        if times is None:
            times = self._failures[key] = deque(maxlen=self.max_failures)
            while len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(key)
        times.append(now)
        return len(times) == self.max_failures

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)


@dataclass(frozen=True)
class Admitted:
    """A login let through to its password check, already counted as a failure; `reached`: what
    it took to the limit (to log if the password is wrong)."""

    reached: tuple[tuple[str, int], ...]  # ("address 10.0.0.1", its limit), ("user alice", ...)


class LoginLimiter:
    """The console's login throttle: one window per client address, one per configured user
    (`user_max_failures` 0: no per-user window)."""

    def __init__(self, max_failures: int, window: float, users: frozenset[str], max_keys: int = MAX_KEYS,
                 user_max_failures: int | None = None):
        per_user = max_failures if user_max_failures is None else user_max_failures
        self.users = users if per_user > 0 else frozenset()
        self.by_address = FailureWindow(max_failures, window, max_keys)
        self.by_user = FailureWindow(max(1, per_user), window, max(1, len(users)))

    def admit(self, address: str, user: str) -> Refusal | Admitted:
        """Refuse a login now, or let it through to its password check counted as a failure
        (`succeeded` takes it back), so that concurrent logins count toward the limit."""
        refusal = self.refusal(address, user)
        return refusal if refusal is not None else Admitted(tuple(self.failed(address, user)))

    def refusal(self, address: str, user: str) -> Refusal | None:
        """Why a login from `address` for `user` is refused now; None: check its password."""
        now = time.monotonic()
        for what, wait in ((f"address {address}", self.by_address.blocked_for(address, now)),
                           (f"user {user}", self.by_user.blocked_for(user, now) if user in self.users else 0.0)):
            if wait > 0:
                return Refusal(what, max(1, math.ceil(wait)))
        return None

    def failed(self, address: str, user: str) -> list[tuple[str, int]]:
        """Count a failure; what reached the limit with it, and the limit (to log, once per lockout)."""
        now = time.monotonic()
        reached = [(f"address {address}", self.by_address.max_failures)] if self.by_address.fail(address, now) else []
        if user in self.users and self.by_user.fail(user, now):
            reached.append((f"user {user}", self.by_user.max_failures))
        return reached

    def succeeded(self, address: str, user: str) -> None:
        self.by_address.forget(address)
        self.by_user.forget(user)
