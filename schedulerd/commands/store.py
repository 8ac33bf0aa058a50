"""store:migrate — create or migrate the shared store's schema (PostgreSQL, `[store] url`)."""

from __future__ import annotations

from typing import Any

from . import CommandError, arg, command


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


@command("store:copy", "Copy the embedded SQLite stores (state and jobs) into the PostgreSQL store of [store] url",
         arg("--force", action="store_true", help="replace what the PostgreSQL store already holds"))
def copy(args: Any, env: Any) -> int:
    from ..store import StoreUnavailable
    from ..stores import SchemaMismatch

    config = env.config()
    store = env.check_store()
    if store.url is None:
        raise CommandError("store:copy needs a [store] url: the PostgreSQL store to copy the SQLite files into", 2)
    from ..pgstore import describe
    from ..pgstore.copy import NotEmpty
    from ..pgstore.copy import copy as run_copy

    if env.running_pid():
        raise CommandError("the daemon is running: stop it first (scheduler:stop), then copy", 1)
    try:
        done = run_copy(store, config.scheduler.state_dir, args.force)
    except NotEmpty as e:
        raise CommandError(str(e), 2) from None
    except (SchemaMismatch, StoreUnavailable) as e:
        raise CommandError(str(e), 1) from None
    counts = ", ".join(f"{n} {t}" for t, n in done.counts.items())
    print(f"copied {config.scheduler.state_dir} into {describe(store.url)}: {counts}")
    return 0
