"""store:migrate — create or migrate the shared store's schema (PostgreSQL, `[store] url`)."""

from __future__ import annotations

from typing import Any

from . import CommandError, command


@command("store:migrate", "Create or migrate the PostgreSQL store's schema ([store] url); safe to run again")
def migrate(args: Any, env: Any) -> int:
    from ..store import StoreUnavailable
    from ..stores import SchemaMismatch

    store = env.store_settings()
    if store.url is None:
        print("no [store] url: the embedded SQLite store under state_dir creates its tables itself; nothing to do")
        return 0
    from ..pgstore import describe
    from ..pgstore.migrate import migrate as run_migrations

    try:
        done = run_migrations(store)
    except SchemaMismatch as e:
        raise CommandError(str(e), 2) from None
    except StoreUnavailable as e:
        raise CommandError(f"the store does not answer: {e}", 1) from None
    where = describe(store.url)
    if done.before == done.after:
        print(f"{where}: schema version {done.after}, up to date")
    else:
        print(f"{where}: schema migrated from version {done.before} to {done.after}")
    return 0
