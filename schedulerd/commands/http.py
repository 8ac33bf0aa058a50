"""http:passwd — a password hash for the web console's [http.users]."""

from __future__ import annotations

import sys
from typing import Any

from . import CommandError, arg, command


def _read_password() -> str:
    """Asked twice on a terminal; else the first line of stdin (a script, a password manager)."""
    if sys.stdin.isatty():
        import getpass

        first = getpass.getpass("password: ")
        if first != getpass.getpass("again: "):
            raise CommandError("the two passwords differ", 2)
        return first
    return sys.stdin.readline().rstrip("\r\n")


@command("http:passwd", "Print the [http.users] line for USER with a hash of the password read from the terminal or stdin",
         arg("user"))
def passwd(args: Any, env: Any) -> int:
    import re

    from ..web.auth import hash_password

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}", args.user):
        raise CommandError(f"user: expected letters, digits, '.', '_', '@', '-' (64 at most), got {args.user!r}", 2)
    password = _read_password()
    if len(password) < 8:
        raise CommandError("password: at least 8 characters", 2)
    print(f'{args.user} = "{hash_password(password)}"')
    return 0
