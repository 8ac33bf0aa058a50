"""Record events queue the Worker Manager's job types; those jobs run (real CLI, real files)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.engine.conftest import Site


def _box(site: Site, extra: str = "", fields: str = "") -> Path:
    hot = site.root / "hot"  # made with its .phrasea.xml by the first pass (bootstrap)
    site.write(f"""
        [databoxes.main]
        path = "var/main.sqlite"
        storage = "var/storage"
        {extra}
        [databoxes.main.fields]
        {fields}
        [tasks.inbox]
        type = "archive"
        databox = "main"
        collection = "inbox"
        hotfolder = "{hot}"
        cold = 0
        bootstrap = true
        [jobs.types.subdefCreation]
        defer = "5s"
        [queues.subdefCreation]
        workers = 0
        """)
    site.console("task:run", "inbox", "--no-progress", check=True)
    return hot


def _jobs(site: Site, type_name: str) -> list[dict]:
    return [j for j in site.json("job:list") if j["type"] == type_name]  # type: ignore[union-attr]


def test_archive_queues_one_deferred_subdef_job_per_record(site: Site) -> None:  # noqa: F811
    hot = _box(site)
    Image.new("RGB", (64, 48), "red").save(hot / "a.jpg")
    site.console("task:run", "inbox", "--no-progress", check=True)
    jobs = _jobs(site, "subdefCreation")
    assert len(jobs) == 1, jobs
    job = jobs[0]
    assert job["queue"] == "subdefCreation" and job["state"] == "waiting"
    assert job["payload"]["databox"] == "main"
    assert job["next_attempt_at"] - job["created"] == pytest.approx(5, abs=0.5)  # deferred
    # a second event for the same record within the defer window: the same job, none added
    again = site.console("job:add", "subdefCreation", "--payload", json.dumps(job["payload"]), check=True)
    assert int(again.stdout) == job["id"]
    assert len(_jobs(site, "subdefCreation")) == 1
    # worker:show-configuration shows the defer, the queue with no worker here
    shown = site.json("worker:show-configuration")
    assert shown["job_types"]["subdefCreation"]["defer"] == 5.0  # type: ignore[index]
    assert shown["queues"]["subdefCreation"]["workers"] == 0  # type: ignore[index]
    # run it here, in the foreground: the record gets its sub-definitions
    ran = site.console("worker:run-service", "subdefCreation", "--payload", json.dumps(job["payload"]))
    assert ran.returncode == 0, ran.stderr
    assert "thumbnail" in ran.stdout
    shown_record = site.json("record:show", str(job["payload"]["record"]))
    assert set(shown_record["subdefs"]) == {"thumbnail", "preview"}  # type: ignore[index]


def test_run_service_fails_on_a_broken_tool_run(site: Site) -> None:  # noqa: F811
    hot = _box(site)
    Image.new("RGB", (64, 48), "red").save(hot / "a.jpg")
    site.console("task:run", "inbox", "--no-progress", check=True)
    bad = site.console("worker:run-service", "subdefCreation", "--payload", '{"databox": "nope", "record": 1}')
    assert bad.returncode == 2 and "databox" in bad.stderr


def test_set_field_queues_write_and_index_and_search_finds_it(site: Site) -> None:  # noqa: F811
    hot = _box(site, fields='Title = "text"')
    Image.new("RGB", (64, 48), "red").save(hot / "a.jpg")
    site.console("task:run", "inbox", "--no-progress", check=True)
    site.console("record:set-field", "1", "Title", "jaguar", check=True)
    types = sorted(j["type"] for j in site.json("job:list"))  # type: ignore[union-attr]
    assert types == ["populateIndex", "subdefCreation", "writeMetadatas"]
    index = _jobs(site, "populateIndex")[0]
    ran = site.console("worker:run-service", "populateIndex", "--payload", json.dumps(index["payload"]))
    assert ran.returncode == 0, ran.stderr
    found = site.console("record:search", "jaguar", check=True)
    assert "a.jpg" in found.stdout or "1" in found.stdout


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool (libimage-exiftool-perl) not installed")
def test_reindex_queues_a_populate_index(site: Site) -> None:  # noqa: F811
    _box(site)
    jid = site.console("record:reindex", "--databox", "main", check=True).stdout.strip()
    job = site.json("job:show", jid)
    assert job["type"] == "populateIndex" and job["payload"] == {"databox": "main"}  # type: ignore[index]


def test_replace_document_queues_a_subdef_creation(site: Site, tmp_path: Path) -> None:  # noqa: F811
    hot = _box(site)
    Image.new("RGB", (64, 48), "red").save(hot / "a.jpg")
    site.console("task:run", "inbox", "--no-progress", check=True)
    (first,) = _jobs(site, "subdefCreation")
    payload = json.dumps(first["payload"])
    assert site.console("worker:run-service", "subdefCreation", "--payload", payload).returncode == 0
    site.console("job:cancel", str(first["id"]), check=True)  # done by hand above
    # built already: a second job for it builds nothing
    again = site.console("worker:run-service", "subdefCreation", "--payload", payload)
    assert again.returncode == 0 and "already built" in again.stdout, again.stdout
    rid = first["payload"]["record"]
    Image.new("RGB", (400, 300), "blue").save(tmp_path / "bigger.png")
    shown = site.json("record:replace-document", str(rid), str(tmp_path / "bigger.png"))
    assert shown["doc_version"] == 2  # type: ignore[index]
    waiting = [j for j in _jobs(site, "subdefCreation") if j["state"] == "waiting"]
    assert [j["id"] for j in waiting] == shown["jobs"] and waiting[0]["payload"] == first["payload"]  # type: ignore[index]
    assert site.console("worker:run-service", "subdefCreation", "--payload", payload).returncode == 0
    preview = site.json("record:show", str(rid))["subdefs"]["preview"]  # type: ignore[index]
    assert (preview["width"], preview["height"]) == (400, 300)
    # bad input names the argument, exit 2
    missing = site.console("record:replace-document", "99", str(tmp_path / "bigger.png"))
    assert missing.returncode == 2 and "ID:" in missing.stderr, missing.stderr
    nofile = site.console("record:replace-document", str(rid), str(tmp_path / "nope.png"))
    assert nofile.returncode == 2 and "FILE:" in nofile.stderr, nofile.stderr
