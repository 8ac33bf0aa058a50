"""The databox/collection/record commands, run through the real bin/console, on SQLite and on
PostgreSQL databoxes (the `backend` fixture: tests/repository/conftest.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONSOLE = ROOT / "bin" / "console"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from repository import DataboxSettings, open_databox  # noqa: E402
from tests.repository.conftest import postgres_box  # noqa: E402


@pytest.fixture
def boxes(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, DataboxSettings]:
    """Databoxes main and other: SQLite files under var/, or PostgreSQL databases of their own."""
    storage = {"main": tmp_path / "var/storage", "other": tmp_path / "var/other"}
    if backend == "postgresql":
        return {name: postgres_box(request, folder) for name, folder in storage.items()}
    return {name: DataboxSettings(tmp_path / f"var/{name}.sqlite", folder) for name, folder in storage.items()}


@pytest.fixture
def conf(tmp_path: Path, boxes: dict[str, DataboxSettings]) -> Path:
    etc = tmp_path / "etc"
    etc.mkdir()
    f = etc / "schedulerd.toml"
    text = ""
    for name, box in boxes.items():  # relative paths resolve against the folder holding etc/
        rel = lambda p: Path(p).relative_to(tmp_path).as_posix()  # noqa: E731
        where = (f'path = "{rel(box.path)}"' if box.url is None
                 else f'url = "{box.url}"\npassword = "{box.password.reveal()}"')  # type: ignore[union-attr]
        text += f'[databoxes.{name}]\n{where}\nstorage = "{rel(box.storage)}"\n'
    f.write_text(text)
    return f


def run(conf: Path, *argv: str, code: int = 0) -> str:
    env = {**os.environ, "SCHEDULERD_CONFIG": str(conf)}
    p = subprocess.run([str(CONSOLE), *argv], capture_output=True, text=True, env=env, timeout=30)
    assert p.returncode == code, (argv, p.returncode, p.stdout, p.stderr)
    if code:
        assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
        return p.stderr
    return p.stdout


def test_cli_walkthrough(conf, boxes, tmp_path):
    base = tmp_path
    sqlite = boxes["main"].url is None
    assert "does not exist yet" in run(conf, "collection:list", code=2)
    assert not sqlite or not (base / "var/main.sqlite").exists()
    assert "created" in run(conf, "databox:create")
    assert not sqlite or (base / "var/main.sqlite").is_file()
    assert (base / "var/storage").is_dir()
    assert "already exists" in run(conf, "databox:create")
    assert json.loads(run(conf, "databox:create", "--databox", "other", "--json"))["created"] is True
    assert "'press' created" in run(conf, "collection:create", "press")
    run(conf, "collection:create", "sport", "--json")
    assert "already exists" in run(conf, "collection:create", "press", code=2)
    assert "all digits" in run(conf, "collection:create", "123", code=2)

    # records made through the API (the archive task is the usual way in)
    with open_databox(boxes["main"]) as db:
        doc = tmp_path / "photo.jpg"
        doc.write_bytes(b"\xff\xd8\xff" + b"j" * 100)
        r1 = db.create_record("press", doc, fields={"Title": "Harbour"}).id
        r2 = db.create_record("sport", doc, status="10").id

    colls = json.loads(run(conf, "collection:list", "--json"))
    assert [(c["name"], c["records"]) for c in colls] == [("press", 1), ("sport", 1)]
    table = run(conf, "collection:list")
    assert table.splitlines()[0].split() == ["ID", "NAME", "RECORDS", "CREATED"]

    assert [r["id"] for r in json.loads(run(conf, "record:list", "--json"))] == [r1, r2]
    assert [r["id"] for r in json.loads(run(conf, "record:list", "--collection", "sport", "--json"))] == [r2]
    assert [r["id"] for r in json.loads(run(conf, "record:list", "--status", "1x", "--json"))] == [r2]
    assert [r["id"] for r in json.loads(run(conf, "record:list", "--field", "Title=Harbour", "--json"))] == [r1]
    assert json.loads(run(conf, "record:list", "--databox", "other", "--json")) == []
    lines = run(conf, "record:list").splitlines()
    assert lines[0].split()[:3] == ["ID", "COLLECTION", "TYPE"] and len(lines) == 3

    assert "bad character '2'" in run(conf, "record:list", "--status", "12", code=2)
    assert "--field: expected NAME=VALUE" in run(conf, "record:list", "--field", "Title", code=2)
    assert "unknown collection 'nope'" in run(conf, "record:list", "--collection", "nope", code=2)
    assert "unknown databox 'x'" in run(conf, "record:list", "--databox", "x", code=2)

    shown = json.loads(run(conf, "record:show", str(r1), "--json"))
    assert shown["fields"] == {"Title": "Harbour"} and shown["mime"] == "image/jpeg" and shown["subdefs"] == {}
    assert Path(shown["document_path"]).read_bytes() == doc.read_bytes()
    text = run(conf, "record:show", str(r1))
    assert "field Title" in text and "Harbour" in text and "sha256" in text
    assert "no record 99" in run(conf, "record:show", "99", code=2)
    assert "ID: expected a record id" in run(conf, "record:show", "abc", code=2)

    out = json.loads(run(conf, "record:set-status", str(r1), "1x1", "--json"))
    assert out["status"] == 0b101 and out["status_bits"].endswith("101")
    assert "status" in run(conf, "record:set-status", str(r1), "0xx")
    assert json.loads(run(conf, "record:show", str(r1), "--json"))["status"] == 0b001
    assert "MASK: bad character 'y'" in run(conf, "record:set-status", str(r1), "1y", code=2)

    out = json.loads(run(conf, "record:set-field", str(r1), "Title", "Quay", "--json"))
    assert out == {"id": r1, "field": "Title", "value": "Quay", "changed": True}
    assert "(unchanged)" in run(conf, "record:set-field", str(r1), "Title", "Quay")
    assert "bad field name" in run(conf, "record:set-field", str(r1), "9x", "v", code=2)
    rec = json.loads(run(conf, "record:show", str(r1), "--json"))
    assert rec["fields"] == {"Title": "Quay"} and rec["metadata_dirty"] == 1


def test_no_databox_configured(tmp_path):
    f = tmp_path / "schedulerd.toml"
    f.write_text("")
    assert "no databox configured" in run(f, "record:list", code=2)


MOVER = """
[tasks.mover]
type = "record_mover"
[[tasks.mover.rules]]
name = "archive old"
databox = "main"
from = { collection = ["inbox"] }
to = { collection = "archive" }
"""


def test_collection_create_runs_while_the_config_names_the_collections_it_creates(conf):
    run(conf, "databox:create")
    conf.write_text(conf.read_text() + MOVER)
    err = run(conf, "collection:list", code=2)  # other commands still refuse such a config
    assert "tasks.mover.rules[0].from.collection[0]: unknown collection 'inbox' in databox main" in err
    assert "'inbox' created" in run(conf, "collection:create", "inbox")
    assert "rules[0].to.collection: unknown collection 'archive'" in run(conf, "collection:list", code=2)
    assert "'archive' created" in run(conf, "collection:create", "archive")
    assert "ok (1 tasks)" in run(conf, "config:check")
    assert [c["name"] for c in json.loads(run(conf, "collection:list", "--json"))] == ["inbox", "archive"]
    assert "already exists" in run(conf, "collection:create", "inbox", code=2)


@pytest.mark.parametrize("broken, where", [
    ('status = "x2"', "tasks.mover.rules[0].status"),  # an unknown key
    ('databox = "nowhere"', "tasks.mover.rules[0].databox: unknown databox 'nowhere'"),
])
def test_collection_create_still_applies_the_other_checks(conf, boxes, broken, where):
    run(conf, "databox:create")
    conf.write_text(conf.read_text() + MOVER.replace('databox = "main"', broken if "databox" in broken
                                                     else f'databox = "main"\n{broken}'))
    assert where in run(conf, "collection:create", "inbox", code=2)
    with open_databox(boxes["main"], create=False) as db:
        assert db.collections() == []  # refused: nothing made
