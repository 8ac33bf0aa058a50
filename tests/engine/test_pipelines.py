"""Pipelines through the real daemon and CLI: a watched folder's files archived, filtered,
thumbnailed in parallel and posted in one webhook; kill -9 mid-run; pipeline:run/show; bad configs."""

from __future__ import annotations

import calendar
import json
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

from PIL import Image

from tests.engine.conftest import Site
from tests.tasks.test_webhook import Hook


def _config(site: Site, inbox: Path, hook: Hook, *, parallel: int = 4, extra: str = "") -> None:
    site.write(f"""
        [databoxes.main]
        path = "var/main.sqlite"
        storage = "var/storage"
        [jobs.types.webhook]
        urls = ["{hook.url}"]
        secret = "s3cret"
        [jobs.types.subdefCreation]
        retry_delay = "1s"
        [pipelines.photos]
        trigger = {{ event = "file.created", folder = "{inbox}", cold = "1s" }}
        steps = [
          {{ filter = {{ glob = ["*.jpg"] }} }},
          {{ type = "archive", databox = "main", collection = "inbox", parallel = {parallel} }},
          {{ type = "subdefCreation", parallel = {parallel} }},
          {{ type = "webhook", event = "photos.done" }},
        ]
        {extra}
        """)
    site.console("databox:create", check=True)
    site.console("collection:create", "inbox", check=True)


def _feed(inbox: Path, jpegs: int, others: int) -> None:
    tmp = inbox.parent / "tmp"
    tmp.mkdir(exist_ok=True)
    for i in range(jpegs):
        Image.new("RGB", (640, 480), (i % 256, 80, 160)).save(tmp / f"p{i:03d}.jpg", quality=95)
    for i in range(others):
        (tmp / f"n{i:03d}.txt").write_text(f"not an image {i}\n")
    for f in sorted(tmp.iterdir()):
        f.rename(inbox / f.name)  # whole files appear at once


def _watching(site: Site, pipeline: str) -> None:
    """Until the daemon says the pipeline's folder trigger watches (its baseline taken, its watcher on)."""
    site.wait_for(lambda: f"pipeline {pipeline}: watching " in site.log(), timeout=30, what=f"{pipeline} watching")


def _runs(site: Site) -> list[dict]:
    return site.json("pipeline:list")  # type: ignore[return-value]


def _records(site: Site) -> list[int]:
    with sqlite3.connect(site.var / "main.sqlite") as c:
        return [r[0] for r in c.execute("SELECT id FROM records ORDER BY id")]


def test_files_to_records_to_thumbnails_to_one_webhook_survives_kill_9(site: Site, tmp_path: Path) -> None:  # noqa: F811
    hook = Hook([])
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _config(site, inbox, hook, parallel=4)
    site.console("scheduler:start", check=True)
    _watching(site, "photos")
    _feed(inbox, 80, 20)
    # kill -9 once the subdefCreation step is under way
    def thumbnails_done() -> int:  # finished jobs of the subdefCreation step, read from the store
        if not (site.var / "state" / "jobs.db").exists():
            return 0
        with sqlite3.connect(site.var / "state" / "jobs.db", timeout=10) as c:
            return c.execute("SELECT count(*) FROM jobs WHERE queue='pipeline.photos.2' AND state='finished'").fetchone()[0]

    site.wait_for(lambda: thumbnails_done() >= 4, timeout=90, what="step 2 under way")
    pid = site.pid()
    assert pid
    os.kill(pid, signal.SIGKILL)
    site.wait_for(lambda: not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower(),
                  what="daemon gone")
    assert _runs(site)[0]["state"] == "running"  # killed mid-run (read from the store, the daemon down)
    site.console("scheduler:start", check=True)
    runs = site.wait_for(lambda: [r for r in _runs(site) if r["state"] != "running"], timeout=120, what="run ended")
    assert len(_runs(site)) == 1, _runs(site)
    run = runs[0]
    assert run["state"] == "finished", run
    shown = site.json("pipeline:show", str(run["id"]))
    steps = shown["step_rows"]  # type: ignore[index]
    assert [(s["items_in"], s["items_out"]) for s in steps] == [(100, 80), (80, 80), (80, 80), (80, 80)]
    assert all(s["state"] == "finished" for s in steps)
    # 80 records (none archived twice), each with its thumbnail, built once
    ids = _records(site)
    assert len(ids) == 80
    with sqlite3.connect(site.var / "main.sqlite") as c:
        thumbs = {r[0] for r in c.execute("SELECT record_id FROM subdefs WHERE name='thumbnail'")}
    assert thumbs == set(ids)
    with sqlite3.connect(site.var / "state" / "jobs.db") as c:
        built = [r[0] for r in c.execute("SELECT l.line FROM job_logs l JOIN jobs j ON j.id=l.job "
                                         "WHERE j.queue='pipeline.photos.2' AND l.line LIKE '%built%'")]
    fresh = [line for line in built if "already built" not in line]
    # "record 12 (p001.jpg): thumbnail, preview built": never twice for a record (an attempt killed after
    # its build lost its log lines; its rerun says "already built")
    fresh_ids = [int(line.split()[1]) for line in fresh]
    assert len(fresh_ids) == len(set(fresh_ids)) and set(fresh_ids) <= set(ids) and len(fresh_ids) >= 70, built
    # one webhook listing the 80 record ids. The run finished (above): its webhook step's job did,
    # with no attempt left to post again, and Hook keeps a body before it answers, so every post is in
    with sqlite3.connect(site.var / "state" / "jobs.db", timeout=10) as c:
        states = [r[0] for r in c.execute("SELECT state FROM jobs WHERE queue='pipeline.photos.3'")]
    assert states == ["finished"], states
    assert len(hook.got) == 1, hook.got
    body = json.loads(hook.got[0][0])
    assert body["event"] == "photos.done"
    assert sorted(i["id"] for i in body["data"]["items"]) == ids
    assert all(i["kind"] == "record" and i["path"].endswith(".jpg") for i in body["data"]["items"])


def test_pipeline_run_with_input_and_show(site: Site, tmp_path: Path) -> None:  # noqa: F811
    hook = Hook([])
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _config(site, inbox, hook, parallel=2)
    files = tmp_path / "given"
    files.mkdir()
    Image.new("RGB", (64, 48), "red").save(files / "a.jpg")
    (files / "b.png").write_bytes(b"x")
    items = [{"kind": "file", "path": str(files / "a.jpg")}, {"kind": "file", "path": str(files / "b.png")}]
    # the daemon down: the run waits in the store (PutJob), and runs once it starts
    rid = int(site.console("pipeline:run", "photos", "--input", json.dumps(items), check=True).stdout)
    site.console("scheduler:start", check=True)
    site.wait_for(lambda: site.json("pipeline:show", str(rid))["state"] != "running", timeout=60, what="run ended")  # type: ignore[index]
    shown = site.console("pipeline:show", str(rid), check=True).stdout
    assert f"run {rid} of pipeline photos (manual): finished" in shown
    lines = shown.splitlines()
    assert lines[1].split()[:5] == ["STEP", "NAME", "STATE", "IN", "OUT"]
    assert lines[2].split()[:5] == ["0", "0:filter", "finished", "2", "1"]
    assert lines[3].split()[:6] == ["1", "1:archive", "finished", "1", "1", "1"]
    assert len(hook.got) == 1
    # bad input: named, exit 2
    bad = site.console("pipeline:run", "photos", "--input", '[{"kind": "file", "size": "big"}]')
    assert bad.returncode == 2 and "--input[0]: size: expected int" in bad.stderr
    bad = site.console("pipeline:run", "nope")
    assert bad.returncode == 2 and "no pipeline named 'nope' (known: photos)" in bad.stderr
    bad = site.console("pipeline:show", "999")
    assert bad.returncode == 2 and "no pipeline run with id 999" in bad.stderr


def test_a_failing_step_fails_the_run_with_its_error(site: Site, tmp_path: Path) -> None:  # noqa: F811
    hook = Hook([400])
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _config(site, inbox, hook)
    site.console("scheduler:start", check=True)
    rid = int(site.console("pipeline:run", "photos", check=True).stdout)
    run = site.wait_for(lambda: (lambda r: r if r["state"] != "running" else None)(
        site.json("pipeline:show", str(rid))), timeout=30, what="run ended")
    assert run["state"] == "failed"
    assert "step 3 (3:webhook)" in run["error"] and "answered 400" in run["error"]
    assert run["step_rows"][3]["state"] == "failed"


def test_a_step_past_its_type_timeout_fails_the_run_in_those_words(site: Site) -> None:  # noqa: F811
    """A step's time (its job type's `timeout`) ran out: "timed out after 0.5s". The job that runs
    the step has a type of its own with no timeout, and the old code made that text from its None:
    the TypeError ended the daemon."""
    site.write('[jobs.types.command]\ntimeout = "500ms"\nmax_attempts = 1\n'
               '[pipelines.slow]\nsteps = [{ type = "command", argv = ["sleep", "30"] }]\n')
    site.console("scheduler:start", check=True)
    item = [{"kind": "event", "fields": {"n": "1"}}]
    rid = int(site.console("pipeline:run", "slow", "--input", json.dumps(item), check=True).stdout)
    run = site.wait_for(lambda: (lambda r: r if r["state"] != "running" else None)(
        site.json("pipeline:show", str(rid))), timeout=30, what="run ended")
    assert run["state"] == "failed" and "timed out after 0.5s" in run["error"], run
    assert site.console("scheduler:state").returncode == 10  # started: the daemon still runs


def test_bad_pipeline_configs_are_refused_with_key_paths(site: Site, tmp_path: Path) -> None:  # noqa: F811
    cases = [
        ('steps = [{ type = "nope" }]', "pipelines.p.steps[0].type: unknown job type 'nope'"),
        ('steps = [{ filter = { glob = "*.jpg" } }]', "pipelines.p.steps[0].filter.glob: expected a list"),
        ('steps = [{ filter = { status = "x2" } }]', "pipelines.p.steps[0].filter.status: expected a status mask"),
        ('steps = [{ type = "subdefCreation", parallel = 0 }]', "pipelines.p.steps[0].parallel"),
        ('steps = [{ type = "subdefCreation", databox = "x" }]', "pipelines.p.steps[0].databox: unknown key"),
        ('steps = [{ type = "webhook" }]', "pipelines.p.steps[0].event"),
        ('steps = [{ type = "archive", databox = "none", collection = "c" }]', "pipelines.p.steps[0].databox"),
        ('trigger = { event = "file.created" }\nsteps = [{ type = "noop" }]', "pipelines.p.trigger.folder: missing"),
        ('trigger = { event = "record.creatd" }\nsteps = [{ type = "noop" }]', "did you mean record.created"),
        ('trigger = { schedule = "61 * * * *" }\nsteps = [{ type = "noop" }]', "pipelines.p.trigger.schedule"),
        ('stepz = []', "pipelines.p.stepz: unknown setting"),
        ('steps = []', "pipelines.p.steps: expected a list of steps"),
    ]
    for body, message in cases:
        site.write(f"[pipelines.p]\n{body}\n")
        r = site.console("config:check")
        assert r.returncode == 2, (body, r.stdout)
        assert message in r.stderr, (body, r.stderr)
    site.write('[pipelines.p]\ntrigger = { event = "task.failed" }\nsteps = [{ type = "noop" }]\n')
    assert site.console("config:check").returncode == 0


def test_a_failed_task_triggers_a_webhook_pipeline_from_the_preset(site: Site, tmp_path: Path) -> None:  # noqa: F811
    hook = Hook([])
    site.write(f"""
        [jobs.types.webhook]
        urls = ["{hook.url}"]
        secret = "s3cret"
        [tasks.broken]
        type = "command"
        period = "1h"
        argv = ["false"]
        """)
    r = site.console("pipeline:create", "alert", "--from-preset", "failed-task-webhook")
    assert r.returncode == 0, r.stderr
    dropin = site.etc / "schedulerd.d" / "pipeline-alert.toml"
    assert r.stdout.strip() == str(dropin) and "[pipelines.alert]" in dropin.read_text()
    again = site.console("pipeline:create", "alert", "--from-preset", "failed-task-webhook")
    assert again.returncode == 2 and "never rewrites" in again.stderr
    bad = site.console("pipeline:create", "x", "--from-preset", "failed-task-webhook", "--set", "steps.0.type=nope")
    assert bad.returncode == 2 and "pipelines.x.steps[0].type: unknown job type 'nope'" in bad.stderr
    assert not (site.etc / "schedulerd.d" / "pipeline-x.toml").exists()
    site.console("scheduler:start", check=True)
    site.wait_for(lambda: hook.got, timeout=30, what="webhook")
    body = json.loads(hook.got[0][0])
    assert body["event"] == "task.failed"
    (item,) = body["data"]["items"]
    assert item["kind"] == "event" and item["fields"]["task"] == "broken"


def test_a_step_whose_finished_jobs_are_purged_mid_run_still_passes_every_item_on(site: Site) -> None:  # noqa: F811
    """job:purge (or the retention) deletes finished jobs while a step runs: the step still ends,
    and its output (every item, in order) comes from the run's own rows, not from the jobs."""
    site.write("""
        [pipelines.slow]
        steps = [{ type = "command", argv = ["sleep", "0.3"], parallel = 2 }, { type = "noop" }]
        """)
    site.console("scheduler:start", check=True)
    items = [{"kind": "event", "fields": {"n": str(i)}} for i in range(10)]
    rid = int(site.console("pipeline:run", "slow", "--input", json.dumps(items), check=True).stdout)

    def finished_parts() -> int:
        with sqlite3.connect(site.var / "state" / "jobs.db", timeout=10) as c:
            return c.execute("SELECT count(*) FROM jobs WHERE queue='pipeline.slow.0' AND state='finished'").fetchone()[0]

    site.wait_for(lambda: finished_parts() >= 3, timeout=30, what="three parts finished")
    purged = site.console("job:purge", "--finished", check=True)
    assert int(purged.stdout.split()[1]) >= 3, purged.stdout  # "purged 4 jobs"
    run = site.wait_for(lambda: (lambda r: r if r["state"] != "running" else None)(
        site.json("pipeline:show", str(rid))), timeout=30, what="run ended")
    assert run["state"] == "finished", run
    assert [(s["items_in"], s["items_out"]) for s in run["step_rows"]] == [(10, 10), (10, 10)]
    with sqlite3.connect(site.var / "state" / "jobs.db") as c:
        (payload,) = c.execute("SELECT payload FROM jobs WHERE queue='pipeline.slow.1'").fetchone()
    assert [i["fields"]["n"] for i in json.loads(payload)["items"]] == [str(i) for i in range(10)]


def test_a_schedule_trigger_runs_at_each_due_time_once_across_a_restart(site: Site) -> None:  # noqa: F811
    start = int(time.time()) + 2
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start))
    site.write(f"""
        [pipelines.tick]
        trigger = {{ schedule = "R/{iso}/PT2S" }}
        steps = [{{ type = "noop" }}]
        """)
    site.console("scheduler:start", check=True)

    def scheduled() -> list[dict]:
        return [r for r in _runs(site) if r["pipeline"] == "tick" and r["trigger"] == "schedule"]

    # stopped just after a due time's run was made (seen within a poll of it), started again at
    # once: that due time is not run again, the next ones are, each in turn
    site.wait_for(lambda: len(scheduled()) >= 1, timeout=30, what="a scheduled run")
    site.console("scheduler:stop", check=True)
    site.console("scheduler:start", check=True)
    seen = len(scheduled())
    site.wait_for(lambda: len(scheduled()) >= seen + 2, timeout=30, what="two runs after the restart")
    site.wait_for(lambda: all(r["state"] == "finished" for r in scheduled()), timeout=30, what="runs finished")
    runs = scheduled()
    with sqlite3.connect(site.var / "state" / "jobs.db") as c:
        inputs = dict(c.execute("SELECT id, input FROM pipeline_runs WHERE pipeline='tick'").fetchall())
    dues = []
    for r in runs:
        (item,) = json.loads(inputs[r["id"]])
        due = calendar.timegm(time.strptime(item["fields"]["due"][:19], "%Y-%m-%dT%H:%M:%S"))
        assert (due - start) % 2 == 0, item  # a due time of the schedule
        assert due - 0.05 <= r["created"] < due + 1.5, (r, item)  # made at its due time, not later
        assert r["due"] == due, (r, item)  # the run's key (one run per due time, cluster-wide)
        dues.append(due)
    assert len(dues) == len(set(dues)), sorted(dues)  # never two runs for one due time
    assert sorted(dues)[-1] - sorted(dues)[-2] == 2, sorted(dues)  # in one daemon's life, none skipped


def test_the_image_preset_reads_exif_into_fields_and_builds_the_thumbnail(site: Site, tmp_path: Path) -> None:  # noqa: F811
    """Pydio's preset as shipped: a JPEG whose EXIF exiftool wrote, dropped into the watched folder,
    ends as a record whose fields hold the EXIF values, with its thumbnail."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    site.write("""
        [databoxes.main]
        path = "var/main.sqlite"
        storage = "var/storage"
        """)
    site.console("databox:create", check=True)
    site.console("collection:create", "images", check=True)
    r = site.console("pipeline:create", "images", "--from-preset", "image-thumbnails", "--set", f"trigger.folder={inbox}",
                     "--set", "trigger.cold=1s", "--set", "steps.1.databox=main", "--set", "steps.1.collection=images")
    assert r.returncode == 0, r.stderr
    bad = site.console("pipeline:create", "x", "--from-preset", "image-thumbnails", "--set", f"trigger.folder={inbox}",
                       "--set", "steps.1.databox=main", "--set", "steps.1.fields.Lens=Lens")
    assert bad.returncode == 2 and "pipelines.x.steps[1].fields.Lens: expected a tag like" in bad.stderr, bad.stderr
    photo = tmp_path / "camera.jpg"
    Image.new("RGB", (640, 480), (200, 120, 40)).save(photo, quality=90)
    subprocess.run(["exiftool", "-q", "-overwrite_original", "-Make=Canon", "-Model=EOS 5D Mark IV",
                    "-DateTimeOriginal=2024:05:01 10:00:00", "-ExposureTime=1/250", "-FNumber=5.6", "-ISO=200",
                    str(photo)], check=True)
    site.console("scheduler:start", check=True)
    _watching(site, "images")
    photo.rename(inbox / photo.name)
    run = site.wait_for(lambda: [r for r in _runs(site) if r["state"] != "running"], timeout=60, what="run ended")[0]
    assert run["state"] == "finished", site.json("pipeline:show", str(run["id"]))
    (rid,) = _records(site)
    with sqlite3.connect(site.var / "main.sqlite") as c:
        fields = dict(c.execute("SELECT name, value FROM fields WHERE record_id=?", (rid,)).fetchall())
        thumbs = c.execute("SELECT count(*) FROM subdefs WHERE record_id=? AND name='thumbnail'", (rid,)).fetchone()[0]
    assert {k: fields.get(k) for k in ("CameraMake", "CameraModel", "DateTaken", "Exposure", "FNumber", "ISO")} == {
        "CameraMake": "Canon", "CameraModel": "EOS 5D Mark IV", "DateTaken": "2024:05:01 10:00:00",
        "Exposure": "1/250", "FNumber": "5.6", "ISO": "200"}, fields
    assert thumbs == 1


def test_files_dropped_all_along_a_start_and_reloads_each_fire_exactly_once(site: Site, tmp_path: Path) -> None:  # noqa: F811
    """Files keep appearing while the daemon starts and reloads three times: those there before
    the first baseline (the count its `watching` line gives) never fire, every other file fires
    once: none lost between a baseline and its watcher, nor while a reload restarts the watcher,
    and none twice."""
    inbox, tmp = tmp_path / "inbox", tmp_path / "tmp"
    inbox.mkdir()
    tmp.mkdir()
    site.write(f"""
        [pipelines.drop]
        trigger = {{ event = "file.created", folder = "{inbox}", cold = "0.3s", max_items = 200 }}
        steps = [{{ type = "noop" }}]
        """)
    stop = threading.Event()
    made: list[str] = []

    def drop() -> None:  # one whole file every 2 ms, until told to stop
        while not stop.is_set():
            name = f"f{len(made):06d}"
            (tmp / name).write_text(name)
            (tmp / name).rename(inbox / name)
            made.append(name)
            time.sleep(0.002)

    def watching_lines() -> list[str]:
        return [line for line in site.log().splitlines() if "pipeline drop: watching " in line]

    writer = threading.Thread(target=drop, daemon=True)
    writer.start()
    try:
        site.console("scheduler:start", check=True)
        site.wait_for(lambda: watching_lines(), timeout=30, what="drop watching")
        for n in range(2, 5):
            site.console("scheduler:reload", check=True)
            site.wait_for(lambda n=n: len(watching_lines()) >= n, timeout=30, what=f"drop watching after reload {n - 1}")
        time.sleep(0.2)  # (files keep coming after the last reload's watcher is on)
    finally:
        stop.set()
        writer.join(timeout=10)
    before = int(re.search(r"\((\d+) file\(s\) there before\)", watching_lines()[0])[1])  # type: ignore[index]
    assert 0 < before < len(made), (before, len(made))

    def fired() -> list[str]:
        with sqlite3.connect(site.var / "state" / "jobs.db", timeout=10) as c:
            inputs = [r[0] for r in c.execute("SELECT input FROM pipeline_runs WHERE pipeline='drop'")]
        return [Path(item["path"]).name for text in inputs for item in json.loads(text)]

    try:  # (a file lost never fires: then the assertions below say which)
        site.wait_for(lambda: len(set(fired())) >= len(made) - before, timeout=30, what="every file fired")
    except AssertionError:
        pass
    names = fired()
    assert len(names) == len(set(names)), sorted(n for n in set(names) if names.count(n) > 1)  # none twice
    unfired = sorted(set(made) - set(names))
    assert len(unfired) == before, (before, len(unfired), unfired[-5:], len(made))  # none lost



def _fired(site: Site, pipeline: str, folder: Path) -> list[str]:
    """The files the pipeline's runs took, run after run (paths relative to its folder)."""
    if not (site.var / "state" / "jobs.db").exists():
        return []
    with sqlite3.connect(site.var / "state" / "jobs.db", timeout=10) as c:
        inputs = [r[0] for r in c.execute("SELECT input FROM pipeline_runs WHERE pipeline=? ORDER BY id", (pipeline,))]
    return [str(Path(item["path"]).relative_to(folder)) for text in inputs for item in json.loads(text)]


def _drop_pipeline(site: Site, folder: Path, *, recursive: bool = False) -> None:
    site.write(f"""
        [pipelines.drop]
        trigger = {{ event = "file.created", folder = "{folder}", cold = "0.3s", recursive = {str(recursive).lower()} }}
        steps = [{{ type = "noop" }}]
        """)
    site.console("scheduler:start", check=True)
    _watching(site, "drop")


def test_a_file_gone_then_dropped_again_under_its_name_fires_again(site: Site, tmp_path: Path) -> None:  # noqa: F811
    """A name that fired is forgotten once its file is gone (deleted, moved away, or replaced by a
    file renamed over it): a file appearing under that name fires again, the same file moved back
    in included; a file that stays, changed in place, does not fire again."""
    inbox, tmp = tmp_path / "inbox", tmp_path / "tmp"
    inbox.mkdir()
    tmp.mkdir()
    _drop_pipeline(site, inbox)

    def put(name: str, text: str) -> None:  # a whole file at once
        (tmp / name).write_text(text)
        (tmp / name).rename(inbox / name)

    def runs_are(expected: list[str], what: str) -> None:
        site.wait_for(lambda: len(_fired(site, "drop", inbox)) >= len(expected), timeout=20, what=what)
        assert _fired(site, "drop", inbox) == expected

    put("a.jpg", "first")
    runs_are(["a.jpg"], "a.jpg fired")
    (inbox / "a.jpg").unlink()
    put("a.jpg", "second")  # a scanner writing scan001.jpg again
    runs_are(["a.jpg"] * 2, "the new a.jpg fired")
    (inbox / "a.jpg").rename(tmp / "away.jpg")  # moved away (as a step filing it would), then the same
    (tmp / "away.jpg").rename(inbox / "a.jpg")  # file back: its inode, size and mtime as they were
    runs_are(["a.jpg"] * 3, "a.jpg moved back in fired")
    with (inbox / "a.jpg").open("a") as f:  # it stays, changed in place: no run. b.jpg comes after,
        f.write(" changed")  # so a run of a.jpg would be in before b.jpg's
    put("b.jpg", "b")
    runs_are(["a.jpg"] * 3 + ["b.jpg"], "b.jpg fired")
    put("a.jpg", "renamed over the one there")
    runs_are(["a.jpg"] * 3 + ["b.jpg", "a.jpg"], "the a.jpg renamed over the old one fired")


def test_files_in_a_new_subfolder_fire_once_each_made_in_place_or_moved_in_whole(site: Site, tmp_path: Path) -> None:  # noqa: F811
    """`recursive`: the files of a new subfolder fire once each, those written before the watcher
    could watch it (folders made and filled at once) and those of a folder moved in whole (no
    event for them) included; the folder moved out and back in fires its files once more."""
    inbox, tmp = tmp_path / "inbox", tmp_path / "tmp"
    inbox.mkdir()
    tmp.mkdir()
    _drop_pipeline(site, inbox, recursive=True)

    def write(root: Path, rel: str) -> str:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
        return rel

    def fire_all(expected: list[str], sentinel: str) -> None:
        """Until `expected` fired, then a sentinel: a file firing twice would be in before its run."""
        def names() -> list[str]:
            return _fired(site, "drop", inbox)
        try:  # (a file lost never fires: then the assertion below says which)
            site.wait_for(lambda: set(expected) <= set(names()), timeout=20, what="every file fired")
            write(inbox, sentinel)
            site.wait_for(lambda: sentinel in names(), timeout=20, what=f"{sentinel} fired")
        except AssertionError:
            pass
        assert sorted(names()) == sorted(expected + [sentinel])

    made = [write(inbox, f"{d}/f{i}.jpg") for d in ("new", "new/a", "new/a/b") for i in range(5)]
    moved = [write(tmp / "moved", f"{d}/m{i}.jpg") for d in (".", "x", "x/y") for i in range(5)]
    (tmp / "moved").rename(inbox / "moved")
    moved = [str(Path("moved") / rel) for rel in moved]
    fire_all(made + moved, "last1.jpg")
    (inbox / "moved").rename(tmp / "moved")
    (tmp / "moved").rename(inbox / "moved")
    fire_all(made + moved + ["last1.jpg"] + moved, "last2.jpg")


def test_a_pipeline_on_task_state_added_by_a_reload_runs_when_the_task_changes_state(site: Site) -> None:  # noqa: F811
    """A runner makes a `task.state` event only when something hears it: a pipeline added by a
    reload is heard from then on, its filter keeping the one change it asks for."""
    tasks = '[tasks.ticker]\ntype = "noop"\nperiod = "1h"\n'
    site.write(tasks)
    site.console("scheduler:start", check=True)
    site.wait_for(lambda: site.task("ticker")["state"] == "waiting", what="ticker waiting")
    site.write(tasks + '[pipelines.p]\ntrigger = { event = "task.state", filter = { fields = { task = "ticker", '
                       'to = "stopped" } } }\nsteps = [{ type = "noop" }]\n')
    site.console("scheduler:reload", check=True)
    site.console("task:stop", "ticker", check=True)
    site.wait_for(lambda: [r for r in _runs(site) if r["pipeline"] == "p"], what="the pipeline's run")
    time.sleep(1)  # stopping -> stopped is one change: one run, not one per change
    (run,) = [r for r in _runs(site) if r["pipeline"] == "p"]
    assert run["trigger"] == "task.state", run
