"""Job type `webhook`: POST a JSON event to the configured URLs (the Worker Manager's webhook queue).

Settings under `[jobs.types.webhook]`: `urls`, `secret` (`"env:VAR"`, `"file:PATH"` or literal;
never shown), `timeout` per request, `events` (empty: every event), `header`. The body is
`{"event": ..., "job": ..., "data": {...the payload but its event...}}`; the header holds
`sha256=<hex HMAC-SHA256 of the body with the secret>`. Attempts and their delay are the type's
`max_attempts` and `retry_delay`; a URL that accepted (2xx) is not posted again by a later
attempt of the same job (kept in the job's state folder, as hashes). A 4xx answer other than 408
and 429 fails the job for good, with the status and reason: retrying would get the same answer.
A URL may carry credentials: `user:password@` is sent as HTTP Basic authentication, and logs,
errors and summaries show a URL as `scheme://host:port/… #hash` (`display_url`): a token may be in its
path too (Slack's, Discord's).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar

import anyio

from schedulerd import settings as s
from schedulerd.durable import write_atomic
from schedulerd.logs import display_url, url_secrets
from schedulerd.plugin import Context, FailForGood, Item, JobType, TaskFailed

RETRYABLE_4XX = (408, 429)


@dataclasses.dataclass(frozen=True)
class Settings:
    urls: tuple[str, ...] = ()
    secret: s.Secret | None = None
    timeout: Annotated[float, s.positive_duration] = 10.0
    events: tuple[str, ...] = ()  # the events posted; empty: all
    header: str = "X-Webhook-Signature"

    def check(self) -> None:
        for i, url in enumerate(self.urls):
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"urls[{i}]: expected an http:// or https:// URL")
        if self.urls and self.secret is None:
            raise ValueError('secret: needed to sign the bodies ("env:VAR", "file:PATH" or the secret itself)')

    def log_secrets(self) -> list[str]:
        """The URLs and their secret-bearing parts (`url_secrets`): kept out of every log line (Config.secrets)."""
        return [v for url in self.urls for v in url_secrets(url)]


def signature(secret: str, body: bytes) -> str:
    """The header's value: `sha256=` and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
    """POST once (blocking: run in a worker thread); the status of a 2xx, else raises:
    FailForGood for a 4xx no retry mends, TaskFailed for the rest. The messages show
    `display_url(url)`; a `user:password@` in the URL goes as HTTP Basic authentication."""
    target, headers = _with_basic_auth(url, headers)
    request = urllib.request.Request(target, data=body, method="POST", headers=headers)
    url = display_url(url)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 (http(s) checked at load)
            return int(answer.status)
    except urllib.error.HTTPError as e:
        why = f"{url} answered {e.code} {e.reason}"
        if 400 <= e.code < 500 and e.code not in RETRYABLE_4XX:
            raise FailForGood(why) from None
        raise TaskFailed(why) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TaskFailed(f"{url} unreachable: {reason}") from None


def _with_basic_auth(url: str, headers: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """The URL without `user:password@` and the headers with its Basic authentication
    (urllib would take the user:password for part of the host name)."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, dict(headers)
    user, password = urllib.parse.unquote(parts.username or ""), urllib.parse.unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    plain = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return plain, {**headers, "Authorization": f"Basic {token}"}


class Webhook(JobType):
    type_name: ClassVar[str] = "webhook"
    Settings: ClassVar[type] = Settings
    default_queue: ClassVar[str] = "webhook"

    def check_payload(self, payload: Mapping[str, Any], config: Any) -> None:
        if not isinstance(payload.get("event"), str) or not payload["event"]:
            raise ValueError('event: expected the event name, e.g. "record.deleted"')

    def title(self, payload: Mapping[str, Any]) -> str:
        return f"webhook {payload.get('event')}"

    def check_step(self, payload: Mapping[str, Any], config: Any) -> None:
        self.check_payload(payload, config)

    async def run_items(self, ctx: Context, payload: Mapping[str, Any], items: Sequence[Item]) -> list[Item]:
        """In a pipeline: one POST whose data holds the step's items (`"items": [...]`)."""
        await self.run(ctx, {**payload, "items": [item.to_json() for item in items]})
        return list(items)

    async def run(self, ctx: Context, payload: Mapping[str, Any]) -> str | None:
        st: Settings = self.settings
        event = str(payload["event"])
        if st.events and event not in st.events:
            return f"{event}: not an event the webhooks take"
        if not st.urls:
            return "no webhook URLs configured ([jobs.types.webhook] urls)"
        assert st.secret is not None
        body = json.dumps({"event": event, "job": ctx.name,
                           "data": {k: v for k, v in payload.items() if k != "event"}}, sort_keys=True).encode()
        headers = {"Content-Type": "application/json", st.header: signature(st.secret.reveal(), body)}
        ledger = ctx.state_dir / "webhook-delivered.json"
        delivered = {k if k.startswith("sha256:") else _key(k)  # (a plain URL: an older ledger's)
                     for k in await anyio.to_thread.run_sync(_read, ledger)}
        todo = [u for u in st.urls if _key(u) not in delivered]
        errors: list[Exception] = []
        for i, url in enumerate(todo):
            try:
                status = await anyio.to_thread.run_sync(post, url, body, headers, st.timeout)
            except TaskFailed as e:
                if isinstance(e, FailForGood):
                    raise
                errors.append(e)
                continue
            ctx.log.info("%s delivered to %s (%d)", event, display_url(url), status)
            delivered.add(_key(url))
            await anyio.to_thread.run_sync(_write, ledger, sorted(delivered))
            ctx.progress(i + 1, len(todo))
        if errors:
            raise TaskFailed("; ".join(str(e) for e in errors))
        return f"{event} delivered to {len(st.urls)} URL{'s' if len(st.urls) != 1 else ''}"


def _key(url: str) -> str:
    """How the ledger names a URL that accepted: a hash (the URL may carry a token)."""
    return "sha256:" + hashlib.sha256(url.encode()).hexdigest()


def _read(path: Path) -> list[str]:
    try:
        return list(json.loads(path.read_text()))
    except (FileNotFoundError, ValueError):
        return []


def _write(path: Path, urls: list[str]) -> None:
    """The URLs that accepted (their keys), synced (write_atomic): a ledger lost to a crash would re-post to them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(urls).encode())
