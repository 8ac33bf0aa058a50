"""bin/indexer as a real process: phraseanet_indexer's command line, the control socket, and
`bin/console record:search` finding a record archived a moment before.

SQLite only on purpose: the indexer process and its FTS5 index file exist only for a SQLite
databox (a PostgreSQL databox keeps its search rows on write and needs no indexer: bin/indexer
says so). Search on both back-ends: tests/repository/test_fulltext_index.py and
test_databox_backends.py."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.repository.dbx import CONSOLE, INDEXER, add, free_port, listening, make_databox, send, site_config, wait_for

SECRET = "pw-Zq8-never-shown"


def start(databox: Path, port: int, *extra: str) -> subprocess.Popen:
    argv = [str(INDEXER), "-h=127.0.0.1", "-P=3306", f"-b={databox}", "-u=root", f"-p={SECRET}",
            f"--socket={port}", "--default-character-set=utf8", "-o", "--interval=0.05", *extra]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.fixture
def box(tmp_path: Path):
    settings, db = make_databox(tmp_path)
    yield settings, db
    db.close()


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(5)
        for f in (p.stdout, p.stderr):
            if f:
                f.close()


def console(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SCHEDULERD_CONFIG"}
    return subprocess.run([str(CONSOLE), "--config", str(cfg), *args], capture_output=True, text=True, timeout=30, env=env)


def test_serves_search_and_quits_on_q(tmp_path: Path, box, procs) -> None:
    settings, db = box
    add(db, "incoming", "old.jpg", fields={"Title": "an older picture"})
    port = free_port()
    p = start(settings.path, port)
    procs.append(p)
    wait_for(lambda: listening(port) or p.poll() is not None, what="the control socket")
    assert p.poll() is None
    wait_for(lambda: json.loads(send(port, b"S\r\n"))["indexed"] == 1, what="the first pass")
    cfg = site_config(tmp_path / "site", "", settings)

    t0 = time.monotonic()
    rid = add(db, "archive", "lighthouse.jpg", fields={"Title": "Lighthouse in the storm", "Author": "Ann Oudin"})
    found = wait_for(lambda: console(cfg, "record:search", "lighthouse storm", "--json").returncode == 0,
                     timeout=10, what="the new record to be searchable")
    latency = time.monotonic() - t0
    assert found and latency < 5
    out = json.loads(console(cfg, "record:search", "oudin", "--json").stdout)
    assert [(h["id"], h["name"], h["collection"]) for h in out] == [(rid, "lighthouse.jpg", "archive")]
    table = console(cfg, "record:search", "lighthouse")
    assert table.returncode == 0 and "lighthouse.jpg" in table.stdout and "ID" in table.stdout
    none = console(cfg, "record:search", "zeppelin")
    assert none.returncode == 1 and "lighthouse" not in none.stdout

    assert send(port, b"what\r\n").startswith(b"unknown command")
    assert send(port, b"Q\r\n") == b"bye\r\n"
    assert p.wait(5) == 0
    out_text, err_text = p.communicate(timeout=5)
    assert "Q received" in out_text and "indexer stopped" in out_text
    assert SECRET not in out_text + err_text
    assert not listening(port)


def test_sigterm_is_a_clean_stop(box, procs) -> None:
    settings, db = box
    port = free_port()
    p = start(settings.path, port)
    procs.append(p)
    wait_for(lambda: listening(port), what="the control socket")
    p.send_signal(signal.SIGTERM)
    assert p.wait(5) == 0


def test_r_asks_for_a_pass_now_and_five_failed_passes_in_a_row_end_the_process_with_1(box, procs) -> None:
    settings, db = box
    add(db, "incoming", "first.jpg")
    port = free_port()
    p = start(settings.path, port, "--interval=600")  # no pass but the first unless asked for
    procs.append(p)
    wait_for(lambda: listening(port) and json.loads(send(port, b"S\r\n"))["indexed"] == 1, what="the first pass")
    add(db, "incoming", "second.jpg")
    assert send(port, b"R\r\n") == b"ok\r\n"
    wait_for(lambda: json.loads(send(port, b"S\r\n"))["indexed"] == 2, timeout=10, what="the pass R asked for")

    with sqlite3.connect(settings.path) as c:  # every pass now fails (no such table: records)
        c.execute("ALTER TABLE records RENAME TO records_gone")

    def ask_again() -> bool:  # one failing pass per R (those sent during a pass: one more)
        with contextlib.suppress(OSError):
            send(port, b"R\r\n")
        return p.poll() is not None

    wait_for(ask_again, timeout=20, what="the fifth failed pass to end the process")
    assert p.wait(5) == 1
    out_text, err_text = p.communicate(timeout=5)
    assert err_text.count("pass failed") == 5 and "pass failed (5/5)" in err_text
    assert "indexer stopped" not in out_text


def test_refuses_a_busy_port_a_missing_databox_and_a_bad_charset(tmp_path: Path, box, procs) -> None:
    settings, db = box
    port = free_port()
    first = start(settings.path, port)
    procs.append(first)
    wait_for(lambda: listening(port), what="the first indexer")
    second = start(settings.path, port)
    procs.append(second)
    assert second.wait(10) == 2
    assert "in use" in second.communicate(timeout=5)[1]
    assert first.poll() is None  # never two indexers on one port; the first keeps running

    missing = start(tmp_path / "nope.sqlite", free_port())
    procs.append(missing)
    assert missing.wait(10) == 2
    assert "no databox file" in missing.communicate(timeout=5)[1]

    bad = subprocess.run([str(INDEXER), f"-b={settings.path}", "--default-character-set=latin1"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "only utf8" in bad.stderr


def test_search_command_errors(tmp_path: Path, box) -> None:
    settings, db = box
    cfg = site_config(tmp_path / "site", "", settings)
    p = console(cfg, "record:search", "x")
    assert p.returncode == 1 and "is the indexer task running" in p.stderr
    p = console(cfg, "record:search", "x", "--databox", "other")
    assert p.returncode == 2 and "unknown databox 'other'" in p.stderr
