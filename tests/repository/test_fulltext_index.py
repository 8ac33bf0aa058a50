"""The full-text index: full build, incremental passes, deletions, search.

`test_search_follows_new_changed_and_deleted_records` runs on SQLite and PostgreSQL (the `backend`
fixture): the same records found through `open_index(settings).run_pass()` (the populateIndex job's
call; on PostgreSQL the rows are kept on write and a pass rebuilds only strays) and `search_databox`.
The other tests are SQLite-only on purpose: they test the FTS5 index file itself (watermarks that
survive a reopen, batches and stop requests, the porter tokenizer, raw FTS5 syntax, the overlap of
late commits), which a PostgreSQL databox does not have."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from repository import fulltext, open_databox, open_index
from repository.fulltext import FulltextError, Index, fts_query, index_path_for, search, search_databox
from tests.repository.conftest import make_box
from tests.repository.dbx import add, make_databox


@pytest.fixture
def box(tmp_path: Path):
    settings, db = make_databox(tmp_path)
    yield settings, db
    db.close()


def ids(index: Path, query: str, **kw) -> list[int]:
    return sorted(h.record_id for h in search(index, query, **kw))


def test_full_build_then_incremental_updates(box) -> None:
    settings, db = box
    a = add(db, "incoming", "IMG_0001.jpg", fields={"Title": "Sunset over the sea", "Keywords": "beach, évasion"})
    b = add(db, "archive", "report-2024.pdf", fields={"Title": "Annual report"})
    ix = Index(settings.path, index_path_for(settings.path))
    ix.open()
    try:
        assert ix.changed()
        first = ix.run_pass(full=True)
        assert (first.indexed, first.removed) == (2, 0)
        path = ix.path
        assert ids(path, "sunset") == [a]
        assert ids(path, "IMG_0001.jpg") == [a]  # punctuation in file names is not query syntax
        assert ids(path, "evasion") == [a]  # diacritics folded
        assert ids(path, "archive") == [b]  # the collection name is indexed
        assert ids(path, "rep*") == [b]  # prefix
        assert ids(path, "annual sea") == []  # every word must match
        assert not ix.changed() and ix.run_pass().indexed == 0

        c = add(db, "incoming", "harbour.tif", fields={"Title": "Harbour at night"})
        db.set_field(a, "Title", "Sunrise over the hills")
        assert ix.changed()
        res = ix.run_pass()
        assert res.indexed == 2  # the new record and the changed one, nothing else
        assert ids(path, "harbour") == [c]
        assert ids(path, "sunset") == [] and ids(path, "sunrise") == [a]

        db.delete_record(b)
        assert ix.changed()
        res = ix.run_pass()
        assert (res.indexed, res.removed) == (0, 1)
        assert ids(path, "report") == []
        assert ix.status()["indexed"] == 2
    finally:
        ix.close()


def test_search_follows_new_changed_and_deleted_records(backend: str, request, tmp_path: Path) -> None:
    settings = make_box(backend, request, tmp_path)
    index = None if settings.url else index_path_for(settings.path)

    def find(query: str) -> list[int]:
        ix = open_index(settings)  # a populateIndex job's pass
        try:
            ix.run_pass()
        finally:
            ix.close()
        return sorted(h.record_id for h in search_databox(settings, index, query, limit=100))

    with open_databox(settings) as db:
        for c in ("incoming", "archive"):
            db.create_collection(c)
        a = add(db, "incoming", "IMG_0001.jpg", fields={"Title": "Sunset over the sea", "Keywords": "beach, évasion"})
        b = add(db, "archive", "report-2024.pdf", fields={"Title": "Annual report"})
        assert find("sunset") == [a]
        assert find("IMG_0001.jpg") == [a]  # punctuation in file names is not query syntax
        assert find("evasion") == [a] and find("évasion") == [a]  # diacritics folded
        assert find("archive") == [b]  # the collection name is indexed
        assert find("rep*") == [b]  # prefix
        assert find("annual sea") == []  # every word must match
        c = add(db, "incoming", "harbour.tif", fields={"Title": "Harbour at night"})
        db.set_field(a, "Title", "Sunrise over the hills")
        assert find("harbour") == [c]
        assert find("sunset") == [] and find("sunrise") == [a]
        db.set_document_text(b, "an ocelot in the grass")
        assert find("ocelot") == [b]
        db.delete_record(b)
        assert find("report") == [] and find("ocelot") == []
        with pytest.raises(ValueError):
            find("   ")


def test_reopening_resumes_without_reindexing(box) -> None:
    settings, db = box
    for i in range(30):
        add(db, "incoming", f"photo-{i}.jpg", fields={"Title": f"picture number{i}"})
    ix = Index(settings.path, index_path_for(settings.path), batch=7)
    ix.open()
    assert ix.run_pass(full=True).indexed == 30
    ix.close()
    again = Index(settings.path, index_path_for(settings.path), batch=7)
    again.open()
    try:
        assert again.run_pass().indexed == 0  # the watermarks survived
        assert ids(again.path, "number17") == [18]
    finally:
        again.close()


def test_a_stop_request_interrupts_between_batches_and_the_next_pass_finishes(box) -> None:
    settings, db = box
    for i in range(25):
        add(db, "incoming", f"f{i}.jpg")
    ix = Index(settings.path, index_path_for(settings.path), batch=10)
    ix.open()
    try:
        calls = iter([False, True])
        res = ix.run_pass(full=True, should_stop=lambda: next(calls, True))
        assert res.indexed == 10
        assert ix.run_pass().indexed == 15
        assert ix.status()["indexed"] == 25
    finally:
        ix.close()


def test_renaming_a_collection_reindexes_its_records_only(box) -> None:
    settings, db = box
    a = add(db, "incoming", "x.jpg")
    add(db, "archive", "y.jpg")
    ix = Index(settings.path, index_path_for(settings.path))
    ix.open()
    try:
        ix.run_pass(full=True)
        db.create_collection("new one")  # an added collection changes no record
        assert ix.changed() and ix.run_pass().indexed == 0
        db.connection.execute("UPDATE collections SET name = 'inbox' WHERE name = 'incoming'")
        assert ix.changed()
        res = ix.run_pass()
        assert res.indexed == 1 and ids(ix.path, "inbox") == [a] and ids(ix.path, "incoming") == []
    finally:
        ix.close()


def test_stemming_changes_the_tokenizer_and_rebuilds(box) -> None:
    settings, db = box
    a = add(db, "incoming", "x.jpg", fields={"Title": "running horses"})
    path = index_path_for(settings.path)
    plain = Index(settings.path, path)
    plain.open()
    plain.run_pass(full=True)
    plain.close()
    assert ids(path, "horse") == []
    stem = Index(settings.path, path, stem=True)
    stem.open()
    try:
        assert stem.run_pass().indexed == 1  # dropped and rebuilt with the porter tokenizer
        assert ids(path, "horse") == [a] and ids(path, "run") == [a]
    finally:
        stem.close()


def test_query_words_are_quoted_and_raw_is_fts5() -> None:
    assert fts_query('IMG_1.jpg say"hi" sun*') == '"IMG_1.jpg" AND "say""hi""" AND "sun"*'
    with pytest.raises(ValueError):
        fts_query("   ")


def test_raw_queries_and_bad_syntax(box) -> None:
    settings, db = box
    a = add(db, "incoming", "a.jpg", fields={"Title": "red car"})
    b = add(db, "incoming", "b.jpg", fields={"Title": "blue car"})
    ix = Index(settings.path, index_path_for(settings.path))
    ix.open()
    ix.run_pass(full=True)
    ix.close()
    path = index_path_for(settings.path)
    assert ids(path, "red OR blue", raw=True) == [a, b]
    assert ids(path, "car NOT blue", raw=True) == [a]
    with pytest.raises(ValueError, match="bad query"):
        search(path, "AND AND (", raw=True)


def test_missing_databox_or_index_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FulltextError, match="no databox file"):
        Index(tmp_path / "nope.sqlite", tmp_path / "nope.fts").open()
    with pytest.raises(FulltextError, match="is the indexer task running"):
        search(tmp_path / "nope.fts", "x")
    (tmp_path / "other.sqlite").write_bytes(b"")
    with pytest.raises(FulltextError, match="not a databox"):
        Index(tmp_path / "other.sqlite", tmp_path / "other.fts").open()


def test_resolve_databox_by_name_path_or_flag(tmp_path: Path, monkeypatch) -> None:
    f = tmp_path / "box.sqlite"
    f.write_bytes(b"")
    assert fulltext.resolve_databox(str(f), None, None) == f
    assert fulltext.resolve_databox("main", tmp_path / "x.sqlite", None) == tmp_path / "x.sqlite"
    cfg = tmp_path / "etc" / "schedulerd.toml"
    cfg.parent.mkdir()
    cfg.write_text(f'[databoxes.main]\npath = "{f}"\nstorage = "{tmp_path}/st"\n')
    assert fulltext.resolve_databox("main", None, cfg) == f
    with pytest.raises(FulltextError, match="unknown databox 'other'"):
        fulltext.resolve_databox("other", None, cfg)


def test_late_commits_within_the_overlap_are_caught_older_ones_by_the_full_pass(box) -> None:
    settings, db = box
    a = add(db, "incoming", "a.jpg", fields={"Title": "first"})
    b = add(db, "incoming", "b.jpg", fields={"Title": "second"})
    ix = Index(settings.path, index_path_for(settings.path))
    ix.open()
    try:
        ix.run_pass(full=True)
        mark = datetime.fromisoformat(ix.status()["watermark"])
        c = db.connection
        # changes committed with timestamps older than the watermark (a clock step, a slow writer)
        c.execute("UPDATE fields SET value = 'late' WHERE record_id = ?", (a,))
        c.execute("UPDATE records SET updated = ? WHERE id = ?", ((mark - timedelta(seconds=30)).isoformat(), a))
        c.execute("UPDATE fields SET value = 'ancient' WHERE record_id = ?", (b,))
        c.execute("UPDATE records SET updated = ? WHERE id = ?", ((mark - timedelta(hours=2)).isoformat(), b))
        assert ix.changed() and ix.run_pass().indexed == 1
        assert ids(ix.path, "late") == [a] and ids(ix.path, "ancient") == []
        assert ix.run_pass(full=True).indexed == 1
        assert ids(ix.path, "ancient") == [b]
    finally:
        ix.close()
