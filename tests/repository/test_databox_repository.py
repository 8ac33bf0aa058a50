import hashlib
import os
import sqlite3
import threading
from pathlib import Path

import anyio
import pytest

from repository import (
    DataboxError,
    DataboxMissing,
    DataboxSettings,
    DuplicateCollection,
    SourceError,
    StorageError,
    SubdefSettings,
    UnknownCollection,
    UnknownRecord,
    open_databox,
)
from repository.backend import integrity_errors
from schedulerd.settings import ConfigError, build
from tests.repository.conftest import make_box


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# --- settings ------------------------------------------------------------------------


def test_settings_from_toml_resolve_against_base_dir(tmp_path):
    s = build(DataboxSettings, {"path": "var/main.sqlite", "storage": "var/storage"}, "databoxes.main", tmp_path)
    assert s.path == tmp_path / "var/main.sqlite" and s.storage == tmp_path / "var/storage"
    assert s.subdefs["thumbnail"] == SubdefSettings(media_class="image", size=240, format="jpeg", quality=80)
    assert s.subdefs["preview"].size == 1024 and s.subdefs["preview"].quality == 85


@pytest.mark.parametrize(
    "table, where, words",
    [
        ({"path": "a", "storage": "b", "colour": 1}, "databoxes.main.colour", "unknown setting"),
        ({"path": "a"}, "databoxes.main.storage", "missing"),
        ({"path": "a", "storage": "b", "subdefs": {"thumb": {"size": 5}}}, "databoxes.main.subdefs.thumb", "16 to 20000"),
        ({"path": "a", "storage": "b", "subdefs": {"t": {"size": 100, "format": "mp4"}}}, "subdefs.t", "mp4"),
        ({"path": "a", "storage": "b", "subdefs": {"t": {"size": 100, "format": "gif"}}}, "subdefs.t.format", "expected"),
        ({"path": "a", "storage": "b", "fields": {"Date": "time"}}, "databoxes.main.fields.Date", "expected"),
        ({"path": "a", "storage": "a"}, "databoxes.main", "must differ"),
    ],
)
def test_bad_settings_name_the_key(tmp_path, table, where, words):
    with pytest.raises(ConfigError) as e:
        build(DataboxSettings, table, "databoxes.main", tmp_path)
    assert where in str(e.value) and words in str(e.value)


def test_open_without_create_refuses_missing(tmp_path, box):
    with pytest.raises(DataboxMissing, match="does not exist yet"):
        open_databox(box, create=False)
    with pytest.raises(DataboxMissing, match="does not exist yet"):  # nothing was created
        open_databox(box, create=False)
    open_databox(box).close()
    open_databox(box, create=False).close()


@pytest.mark.parametrize(
    "table, where, words",
    [
        ({"url": "postgresql://u:Hunter2x@h/db", "storage": "b"}, "databoxes.main.url",
         "holds a password: take it out of the URL and set databoxes.main.password"),
        ({"url": "postgresql://u@h/db?password=Hunter2x", "storage": "b"}, "databoxes.main.url", "holds a password"),
        ({"url": "mysql://u@h/db", "storage": "b"}, "databoxes.main.url", "postgresql://"),
        ({"path": "a", "url": "postgresql://u@h/db", "storage": "b"}, "databoxes.main.path", "exactly one of path"),
        ({"storage": "b"}, "databoxes.main.path", "exactly one of path"),
        ({"path": "a", "storage": "b", "password": "Hunter2x"}, "databoxes.main.password", "only used with url"),
    ],
)
def test_postgresql_settings_are_checked_and_never_show_the_password(tmp_path, table, where, words):
    with pytest.raises(ConfigError) as e:
        build(DataboxSettings, table, "databoxes.main", tmp_path)
    assert where in str(e.value) and words in str(e.value) and "Hunter2x" not in str(e.value)


def test_postgresql_settings_keep_the_password_a_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("DBX_PW", "Hunter2x")
    s = build(DataboxSettings, {"url": "postgresql://u@h:5/db?sslmode=require", "password": "env:DBX_PW",
                                "storage": "st"}, "databoxes.main", tmp_path)
    assert s.password.reveal() == "Hunter2x" and "Hunter2x" not in repr(s)
    assert s.where == "postgresql://u@h:5/db" and s.storage == tmp_path / "st"


def test_open_refuses_a_file_that_is_not_a_databox(tmp_path):
    p = tmp_path / "junk.sqlite"
    p.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DataboxError, match="cannot open databox"):
        open_databox(DataboxSettings(p, tmp_path / "st"))


# --- collections ---------------------------------------------------------------------


def test_collections(db):
    a = db.create_collection("press")
    b = db.create_collection("Sport & Co")
    assert [c.name for c in db.collections()] == ["press", "Sport & Co"]
    assert db.collection("press") == a and db.collection(b.id) == b and db.collection(str(b.id)) == b
    with pytest.raises(DuplicateCollection):
        db.create_collection("press")
    with pytest.raises(UnknownCollection) as e:
        db.collection("nope")
    assert "nope" in str(e.value) and "press" in str(e.value)
    for bad in ("", " x", "123", "a\nb"):
        with pytest.raises(ValueError):
            db.create_collection(bad)


# --- records -------------------------------------------------------------------------


def test_create_record_stores_document_atomically(db, src, box):
    db.create_collection("press")
    f = src("Photo 1.JPG", b"\xff\xd8\xff" + os.urandom(5000))
    r = db.create_record("press", f, fields={"Title": "Harbour"}, status="1x1")
    assert r.type == "record" and r.collection == "press" and r.original_name == "Photo 1.JPG"
    assert r.document_path.read_bytes() == f.read_bytes() and r.sha256 == sha(f) and r.size == f.stat().st_size
    assert r.mime == "image/jpeg" and r.status == 0b101 and r.fields == {"Title": "Harbour"}
    assert r.document_path.suffix == ".jpg" and box.storage in r.document_path.parents
    assert r.created == r.updated and r.created.endswith("+00:00")
    assert f.exists()  # the API copies; the archive task decides what happens to sources
    assert not any((box.storage / ".tmp").iterdir())


def test_create_record_failures_leave_nothing(db, src, box):
    db.create_collection("press")
    with pytest.raises(UnknownCollection):
        db.create_record("nope", src("a.txt"))
    with pytest.raises(SourceError):
        db.create_record("press", box.storage.parent / "missing.txt")
    with pytest.raises(ValueError, match="bad field name"):
        db.create_record("press", src("b.txt"), fields={"1bad": "x"})
    assert db.count_records() == 0
    assert [p for p in box.storage.rglob("*") if p.is_file()] == []


def test_unwritable_storage_is_a_storage_error(tmp_path, src, backend, request):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    s = make_box(backend, request, tmp_path, "x")
    d = open_databox(s)
    d.create_collection("c")
    d.store.root = blocker / "st"  # as if the storage vanished under us
    d.store._root_str = str(d.store.root)
    with pytest.raises(StorageError):
        d.create_record("c", src("a.txt"))
    assert d.count_records() == 0
    d.close()


def test_non_utf8_names_are_kept_visible(db, tmp_path):
    db.create_collection("c")
    name = os.fsdecode(b"caf\xe9 \xff.txt")
    p = tmp_path / name
    p.write_bytes(b"x")
    r = db.create_record("c", p)
    assert r.original_name == "caf\\xe9 \\xff.txt"
    assert r.document_path.suffix == ".txt"


def test_list_filters(db, src):
    db.create_collection("a")
    db.create_collection("b")
    r1 = db.create_record("a", src("1"), status="01", fields={"Kind": "x"}).id
    r2 = db.create_record("a", src("2"), status="11", fields={"Kind": "y"}).id
    r3 = db.create_record("b", src("3"), status="10", fields={"Kind": "x"}).id
    s1 = db.create_story("b", fields={"Title": "Story"}).id

    def ids(**kw):
        return [r.id for r in db.list_records(**kw)]

    assert ids() == [r1, r2, r3, s1]
    assert ids(collection="a") == [r1, r2] and ids(collection=db.collection("b").id) == [r3, s1]
    assert ids(status="1x") == [r2, r3] and ids(status="x1") == [r1, r2] and ids(status="10") == [r3]
    assert ids(fields={"Kind": "x"}) == [r1, r3] and ids(fields=[("Kind", "x")], status="1x") == [r3]
    assert ids(type="story") == [s1]
    assert ids(limit=2) == [r1, r2] and ids(after=r2, limit=5) == [r3, s1]
    assert db.count_records(collection="a", status="1x") == 1
    with pytest.raises(UnknownCollection):
        db.list_records(collection="zzz")
    with pytest.raises(ValueError):
        db.list_records(status="2")


def test_status_and_fields_and_dirty_flag(db, src):
    db.create_collection("c")
    r = db.create_record("c", src("a"), status=0b1001)
    assert db.set_status(r.id, "x1x0").status == 0b1100
    assert db.set_status(r.id, "1" + "x" * 31).status == (1 << 31) | 0b1100
    assert db.records_with_dirty_metadata() == []
    assert db.set_field(r.id, "Title", "One") is True
    assert db.set_field(r.id, "Title", "One") is False  # unchanged: not dirty again
    dirty = db.records_with_dirty_metadata()
    assert [d.id for d in dirty] == [r.id] and dirty[0].fields == {"Title": "One"} and dirty[0].metadata_dirty == 1
    seen = dirty[0].metadata_dirty
    db.set_field(r.id, "Title", "Two")  # changed while being written
    assert db.clear_metadata_dirty(r.id, seen=seen) is False
    assert db.clear_metadata_dirty(r.id, seen=db.get_record(r.id).metadata_dirty) is True
    assert db.records_with_dirty_metadata() == []
    db.set_field(r.id, "Title", None)
    assert db.get_record(r.id).fields == {} and db.get_record(r.id).metadata_dirty == 1
    with pytest.raises(UnknownRecord):
        db.set_status(999, "1")
    with pytest.raises(UnknownRecord):
        db.set_field(999, "Title", "x")


def test_declared_fields_are_checked_and_dates_normalised(tmp_path, src, backend, request):
    s = make_box(backend, request, tmp_path, "d", fields={"Title": "text", "Shot": "date", "N": "number"})
    with open_databox(s) as d:
        d.create_collection("c")
        r = d.create_record("c", src("a"), fields={"Shot": "2024:05:01 10:20:30", "N": "42"})
        assert r.fields == {"Shot": "2024-05-01T10:20:30", "N": "42"}
        d.set_field(r.id, "Shot", "2024-05-02")
        assert d.fields(r.id)["Shot"] == "2024-05-02"
        with pytest.raises(ValueError, match="unknown field 'Colour'"):
            d.set_field(r.id, "Colour", "red")
        with pytest.raises(ValueError, match="field Shot: expected an ISO-8601 date"):
            d.set_field(r.id, "Shot", "yesterday")
        with pytest.raises(ValueError, match="field N: expected a number"):
            d.set_field(r.id, "N", "many")


def test_stories_and_delete_with_children(db, src, box):
    db.create_collection("c")
    story = db.create_story("c", fields={"Title": "Trip"})
    assert story.type == "story" and story.document is None
    a = db.create_record("c", src("a"), story=story.id)
    b = db.create_record("c", src("b"))
    db.add_to_story(story.id, b.id)
    assert db.story_children(story.id) == [a.id, b.id] and db.stories_of(a.id) == [story.id]
    with pytest.raises(UnknownRecord):
        db.add_to_story(a.id, b.id)  # a is not a story
    assert db.delete_record(story.id, delete_children=True) == [story.id, a.id, b.id]
    assert not a.document_path.exists() and not b.document_path.exists()
    assert db.count_records() == 0


def test_delete_removes_files_only_after_commit(db, src):
    db.create_collection("c")
    r = db.create_record("c", src("a"))
    db.set_subdef(r.id, "thumbnail", r.document_path.parent / "thumb.jpg", 10, 10, 5)
    (r.document_path.parent / "thumb.jpg").write_bytes(b"t")
    with pytest.raises(RuntimeError):
        with db.transaction():
            db.delete_records([r.id])
            assert r.document_path.exists()  # not before the commit
            raise RuntimeError("rolled back")
    assert r.document_path.exists() and db.get_record(r.id)
    db.delete_record(r.id)
    assert not r.document_path.exists() and not (r.document_path.parent / "thumb.jpg").exists()
    with pytest.raises(UnknownRecord):
        db.get_record(r.id)


def test_subdef_bookkeeping(db, src, box):
    db.create_collection("c")
    r1 = db.create_record("c", src("a"))
    r2 = db.create_record("c", src("b"))
    story = db.create_story("c")
    assert [r.id for r in db.records_needing_subdefs(10)] == [r1.id, r2.id]  # never a story without document
    sd = db.set_subdef(r1.id, "thumbnail", box.storage / "subdefs/1/thumbnail.jpg", 240, 160, 1234,
                       doc_version=r1.doc_version)
    assert sd.path == box.storage / "subdefs/1/thumbnail.jpg"
    assert db.subdefs(r1.id)["thumbnail"].width == 240
    assert [r.id for r in db.records_needing_subdefs(10)] == [r2.id]
    assert [r.id for r in db.records_needing_subdefs(1)] == [r2.id]
    # the document changes: it needs new ones
    new = db.replace_document(r1.id, src("a2", b"new content"))
    assert new.doc_version == 2 and new.sha256 == hashlib.sha256(b"new content").hexdigest()
    assert not r1.document_path.exists() and new.document_path.exists()
    assert [r.id for r in db.records_needing_subdefs(10)] == [r1.id, r2.id]
    # built from the old version: still needed
    db.set_subdef(r1.id, "thumbnail", box.storage / "subdefs/1/thumbnail.jpg", doc_version=1)
    assert r1.id in [r.id for r in db.records_needing_subdefs(10)]
    # a broken document is marked once, skipped until it changes
    db.mark_subdef_error(r2.id, "cannot identify image file")
    assert db.get_record(r2.id).subdef_error == "cannot identify image file"
    assert r2.id not in [r.id for r in db.records_needing_subdefs(10)]
    db.replace_document(r2.id, src("b2", b"fixed"))
    assert r2.id in [r.id for r in db.records_needing_subdefs(10)]
    db.set_subdef(r2.id, "thumbnail", "/elsewhere/t.jpg", doc_version=2)
    assert db.subdefs(r2.id)["thumbnail"].path == Path("/elsewhere/t.jpg")
    assert r2.id not in [r.id for r in db.records_needing_subdefs(10)]
    db.invalidate_subdefs(r2.id)
    assert r2.id in [r.id for r in db.records_needing_subdefs(10)]
    assert story.id not in [r.id for r in db.records_needing_subdefs(10)]


def test_ingest_helpers(db, box):
    from repository import NewRecord

    c = db.create_collection("c")
    (box.storage / "x").mkdir(parents=True)
    (box.storage / "x/doc.bin").write_bytes(b"doc")
    ids = db.insert_ingested([
        NewRecord(c.id, "one.bin", "x/doc.bin", 3, "aa", "application/octet-stream", 1, {"T": "1"}, "tok1"),
        NewRecord(c.id, "two.bin", "x/doc.bin", 3, "bb", "application/octet-stream", 0, {}, "tok2"),
    ])
    assert len(ids) == 2 and ids[1] == ids[0] + 1
    assert db.committed_tokens(["tok1", "tok2", "tok3"]) == {"tok1": ids[0], "tok2": ids[1]}
    assert db.find_by_sha256("c", ["aa", "zz"]) == {"aa": ids[0]}
    assert db.get_record(ids[0]).fields == {"T": "1"}
    with pytest.raises(integrity_errors()):
        db.insert_ingested([NewRecord(c.id, "dup", "x/doc.bin", 3, "cc", "x", 0, {}, "tok1")])
    assert db.count_records() == 2  # the failed batch left nothing


@pytest.mark.anyio
async def test_shared_between_threads_and_processes(db, src, box):
    """Worker threads share one Databox; another connection writes at the same time (WAL)."""
    db.create_collection("c")
    ids = [db.create_record("c", src(f"f{i}")).id for i in range(20)]
    stop = threading.Event()
    other_writes = 0

    def other_writer():
        nonlocal other_writes
        conn = other_connection(box)
        while not stop.is_set():
            conn.execute("UPDATE records SET updated = updated WHERE id = %s" if box.url else
                         "UPDATE records SET updated = updated WHERE id = ?", (ids[0],))
            conn.commit()
            other_writes += 1
        conn.close()

    t = threading.Thread(target=other_writer)
    t.start()
    try:
        async with anyio.create_task_group() as tg:
            for i in ids:
                for k in range(5):
                    tg.start_soon(anyio.to_thread.run_sync, db.set_field, i, f"F{k}", str(k))
    finally:
        stop.set()
        t.join(10)
    assert other_writes > 0
    assert all(db.fields(i) == {f"F{k}": str(k) for k in range(5)} for i in ids)
    assert all(r.metadata_dirty == 5 for r in db.list_records())


def other_connection(box: DataboxSettings):
    """A connection of its own to the databox's database (another process would have one)."""
    if box.url is None:
        return sqlite3.connect(box.path, timeout=10)
    import psycopg

    return psycopg.connect(box.url, password=box.password.reveal())
