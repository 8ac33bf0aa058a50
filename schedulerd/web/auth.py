"""Passwords (scrypt, from the standard library), sessions and CSRF tokens of the web console."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from .settings import HASH_PREFIX

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # 16 MiB and ~50 ms per check
MAX_SESSIONS = 10_000  # a flood of logins cannot grow the table without end: the oldest go first


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """`scrypt$N$r$p$salt$hash`: what `bin/console http:passwd` prints for [http.users]."""
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32, maxmem=256 * 1024 * 1024)
    return f"{HASH_PREFIX}{n}${r}${p}${_b64(salt)}${_b64(key)}"


def check_password(password: str, stored: str) -> bool:
    """Whether `password` matches the stored hash (constant time). Blocking (~50 ms): call it in a thread."""
    try:
        _, n, r, p, salt, key = stored.split("$")
        want = base64.b64decode(key)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(want), maxmem=256 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


# checked against when the user name is unknown, so a wrong name costs as long as a wrong password
DUMMY_HASH = hash_password(secrets.token_urlsafe(16), n=SCRYPT_N)


@dataclass(frozen=True)
class Session:
    user: str
    csrf: str
    expires: float


class Sessions:
    """Server-side sessions: the cookie holds only a random id; nothing to forge or decode."""

    def __init__(self, max_age: float):
        self.max_age = max_age
        self._by_id: dict[str, Session] = {}
        self._key = secrets.token_bytes(32)  # for the CSRF token of a proxy-authenticated user

    def create(self, user: str) -> str:
        now = time.time()
        for sid in [sid for sid, s in self._by_id.items() if s.expires < now]:
            del self._by_id[sid]
        while len(self._by_id) >= MAX_SESSIONS:
            del self._by_id[next(iter(self._by_id))]
        sid = secrets.token_urlsafe(32)
        self._by_id[sid] = Session(user, secrets.token_urlsafe(32), now + self.max_age)
        return sid

    def get(self, sid: str | None) -> Session | None:
        session = self._by_id.get(sid) if sid else None
        if session is None or session.expires < time.time():
            return None
        return session

    def end(self, sid: str | None) -> None:
        if sid:
            self._by_id.pop(sid, None)

    def proxy_session(self, user: str) -> Session:
        """A user the reverse proxy authenticated: no cookie; the CSRF token is derived from the name."""
        token = hmac.new(self._key, f"proxy:{user}".encode(), hashlib.sha256).hexdigest()
        return Session(user, token, time.time() + self.max_age)


def same_token(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())
