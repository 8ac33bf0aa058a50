"""Fixtures the task-type tests share with the other suites, re-exported here (rather than imported by
each test module, where a fixture's parameter would shadow its import: ruff's F811)."""

from tests.engine.conftest import site  # noqa: F401  (a site: config, console, daemon)
from tests.repository.conftest import backend, pg_server  # noqa: F401  (databoxes on SQLite and PostgreSQL)
from tests.transfer.conftest import all_logs, certs, pyftpd, sshd, vsftpd, vsftpd_tls  # noqa: F401  (servers)
