"""A pyftpdlib server for tests that need an FTP server with quirks.

Run as a subprocess: `python pyftpd_server.py --root DIR --port N [options]`.
Prints `READY` once listening. Options make it misbehave on purpose: a raw
listing served for LIST/MLSD (hostile names, garbage lines), no MLSD, death
after N bytes of a RETR (a server killed mid-transfer), Phraseanet-style FTP
gateway login (USER user@host, PASS, ACCT proxy password).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.filesystems import AbstractedFS
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer


class DyingFile:
    """A file object that ends the server process after `limit` bytes were read."""

    budget = -1

    def __init__(self, f):  # type: ignore[no-untyped-def]
        self._f = f
        self.name = f.name
        self.closed = False

    def read(self, n: int = -1) -> bytes:
        if DyingFile.budget >= 0:
            n = min(n if n >= 0 else DyingFile.budget, DyingFile.budget)
            if n == 0:
                os._exit(3)  # killed mid-transfer
        data = self._f.read(n)
        if DyingFile.budget >= 0:
            DyingFile.budget -= len(data)
        return data

    def seek(self, *a: int) -> int:
        return self._f.seek(*a)

    def tell(self) -> int:
        return self._f.tell()

    def fileno(self) -> int:
        return self._f.fileno()

    def close(self) -> None:
        self.closed = True
        self._f.close()


class FS(AbstractedFS):
    def open(self, filename, mode):  # type: ignore[no-untyped-def]
        f = super().open(filename, mode)
        return DyingFile(f) if "r" in mode and DyingFile.budget >= 0 else f


def make_handler(opts: argparse.Namespace) -> type[FTPHandler]:
    class Handler(FTPHandler):
        abstracted_fs = FS
        use_sendfile = False
        auth_failed_timeout = 0.05
        proto_cmds = dict(FTPHandler.proto_cmds)
        proto_cmds["ACCT"] = dict(perm=None, auth=False, arg=True, help="Syntax: ACCT <SP> account-information.")
        _pending_password = None

        def ftp_USER(self, line):  # type: ignore[no-untyped-def]
            if opts.gateway is not None:
                user, at, target = line.partition("@")
                if not at or not target.startswith("127.0.0.1"):
                    self.respond("530 Gateway: log in as user@host.")
                    return
                line = user
            return super().ftp_USER(line)

        def ftp_PASS(self, line):  # type: ignore[no-untyped-def]
            if opts.gateway is not None and not self.authenticated:
                self._pending_password = line
                self.respond("332 Gateway: send ACCT with the proxy password.")
                return
            return super().ftp_PASS(line)

        def ftp_ACCT(self, line):  # type: ignore[no-untyped-def]
            if opts.gateway is None or self._pending_password is None:
                self.respond("202 ACCT not needed.")
                return
            if line != opts.gateway:
                self.respond("530 Gateway: wrong proxy password.")
                return
            return super().ftp_PASS(self._pending_password)

        def ftp_LIST(self, path):  # type: ignore[no-untyped-def]
            if opts.listing:
                with open(opts.listing, "rb") as f:
                    self.push_dtp_data(f.read(), cmd="LIST")
                return path
            return super().ftp_LIST(path)

        def ftp_MLSD(self, path):  # type: ignore[no-untyped-def]
            if opts.no_mlsd:
                self.respond("500 Command \"MLSD\" not understood.")
                return
            if opts.mlsd_listing:
                with open(opts.mlsd_listing, "rb") as f:
                    self.push_dtp_data(f.read(), cmd="MLSD")
                return path
            return super().ftp_MLSD(path)

        def ftp_FEAT(self, line):  # type: ignore[no-untyped-def]
            if opts.no_mlsd:
                self.push("211-Features supported:\r\n SIZE\r\n MDTM\r\n REST STREAM\r\n EPSV\r\n211 End FEAT.\r\n")
                return
            return super().ftp_FEAT(line)

    return Handler


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", default="agency")
    p.add_argument("--password", default="")
    p.add_argument("--password-file")
    p.add_argument("--listing")
    p.add_argument("--mlsd-listing")
    p.add_argument("--no-mlsd", action="store_true")
    p.add_argument("--die-after", type=int, default=-1)
    p.add_argument("--gateway", help="proxy password the gateway wants in ACCT")
    p.add_argument("--read-limit", type=int, default=0, help="bytes/s")
    p.add_argument("--log", default=None)
    p.add_argument("--max-per-ip", type=int, default=0, help="connections per client address (0: no limit)")
    p.add_argument("--perm", default="elradfmwMT", help="pyftpdlib permissions of the user (no \"a\": APPE refused)")
    opts = p.parse_args()
    if opts.password_file:
        with open(opts.password_file) as f:
            opts.password = f.read().strip()
    logging.basicConfig(filename=opts.log, level=logging.INFO if opts.log else logging.CRITICAL)
    DyingFile.budget = opts.die_after
    auth = DummyAuthorizer()
    auth.add_user(opts.user, opts.password, opts.root, perm=opts.perm)
    handler = make_handler(opts)
    handler.authorizer = auth
    handler.permit_foreign_addresses = False
    if opts.read_limit:
        from pyftpdlib.handlers import ThrottledDTPHandler

        class DTP(ThrottledDTPHandler):
            read_limit = opts.read_limit
            write_limit = opts.read_limit

        handler.dtp_handler = DTP
    server = FTPServer(("127.0.0.1", opts.port), handler)
    server.max_cons_per_ip = opts.max_per_ip
    print("READY", flush=True)
    sys.stdout.close()
    server.serve_forever()


if __name__ == "__main__":
    main()
