"""Commands of the built-in task types (`record:subdefs`, `export:ftp`, `task:preview`), registered
with the engine's CLI by the entry point `tasks` of the group `schedulerd.commands`
(pyproject.toml): the engine's CLI imports none of them by name."""

from . import export, preview, subdefs  # noqa: F401  (each module registers its commands)
