"""The repository's commands (`databox:create`, `collection:*`, `record:*`, `record:search`),
registered with the engine's CLI by the entry point `repository` of the group
`schedulerd.commands` (pyproject.toml): the engine's CLI imports none of them by name."""

from . import collection, databox, record, search  # noqa: F401  (each module registers its commands)
