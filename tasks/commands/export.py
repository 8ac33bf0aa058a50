"""export:ftp: queue an `ftp` job (files and/or record documents to an FTP destination)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from schedulerd.commands import CommandError, arg, command


@command(
    "export:ftp",
    "Send files or records to an [ftp_destinations] server (queues an ftp job; see job:list)",
    arg("dest", help="destination name: a [ftp_destinations.NAME] table"),
    arg("--record", action="append", type=int, default=[], metavar="ID", help="record id (repeatable)"),
    arg("--databox", help="databox of the records (needed when there are several)"),
    arg("--file", action="append", default=[], metavar="PATH", help="local file (repeatable)"),
    arg("--remote-dir", default="/", help="remote folder, created as needed (default /)"),
    arg("--log-file", metavar="NAME", help="also write a transfer log of this name beside the files"),
    arg("--queue", help="job queue (default: the job type's)"),
)
def export_ftp(args: argparse.Namespace, env: Any) -> int:
    if not args.record and not args.file:
        raise CommandError("give at least one --record ID or --file PATH", 2)
    config = env.config()
    destinations = dict(getattr(config, "ftp_destinations", {}) or {})
    if args.dest not in destinations:
        known = ", ".join(sorted(destinations)) or "none: add a [ftp_destinations.NAME] table"
        raise CommandError(f"unknown ftp destination {args.dest!r} (known: {known})", 2)
    files = []
    for f in args.file:
        p = Path(f).expanduser().absolute()
        if not p.is_file():
            raise CommandError(f"--file: no such file {f}", 2)
        files.append(str(p))
    payload: dict[str, Any] = {"destination": args.dest, "remote_dir": args.remote_dir}
    if files:
        payload["files"] = files
    if args.record:
        payload["records"] = list(args.record)
        if args.databox:
            payload["databox"] = args.databox
    if args.log_file:
        payload["log_file"] = args.log_file
    job_id = env.add_job("ftp", payload, queue=args.queue)
    print(job_id)
    return 0
