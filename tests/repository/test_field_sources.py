"""Declared fields that name an embedded tag (`src`), as the real config loader reads them, and the
values taken from tags (multi-valued joined as the repository stores them)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from repository import MULTI_SEPARATOR, FieldSettings, embedded_fields, open_databox
from schedulerd.config import load
from schedulerd.settings import ConfigError


def _load(tmp_path: Path, fields: str, extra: str = "") -> object:
    file = tmp_path / "etc" / "schedulerd.toml"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(textwrap.dedent(f"""
        [databoxes.main]
        path = "var/main.sqlite"
        storage = "var/storage"
        {extra}
        [databoxes.main.fields]
        """) + textwrap.dedent(fields))
    return load(file)


def test_both_forms_load_and_keep_their_types(tmp_path: Path) -> None:
    config = _load(tmp_path, """
        Title = "text"
        Keywords = { type = "text", src = "IPTC:Keywords" }
        Shot = { type = "date", src = "EXIF:DateTimeOriginal" }
        Headline = { src = "XMP-photoshop:Headline" }
        """)
    box = config.databoxes["main"]  # type: ignore[attr-defined]
    assert box.fields["Keywords"] == FieldSettings(type="text", src="IPTC:Keywords")
    assert dict(box.field_types) == {"Title": "text", "Keywords": "text", "Shot": "date", "Headline": "text"}
    assert dict(box.field_sources) == {"Keywords": "IPTC:Keywords", "Shot": "EXIF:DateTimeOriginal",
                                       "Headline": "XMP-photoshop:Headline"}
    assert box.index_document_text is True
    # the databox checks values against the types of both forms
    with open_databox(box) as db:
        rid = db.create_record(db.create_collection("c"), _file(tmp_path), fields={"Shot": "2021:03:04 05:06:07"}).id
        assert db.fields(rid) == {"Shot": "2021-03-04T05:06:07"}
        with pytest.raises(ValueError, match="unknown field 'Other'"):
            db.set_field(rid, "Other", "x")


def _file(tmp_path: Path) -> Path:
    p = tmp_path / "doc.txt"
    p.write_text("hello")
    return p


@pytest.mark.parametrize("line, where", [
    ('K = { src = "Keywords" }', "databoxes.main.fields.K.src: expected a tag like"),
    ('K = { src = "-ver:x" }', "databoxes.main.fields.K.src: expected a tag like"),
    ('K = { type = "blob" }', "databoxes.main.fields.K.type: expected 'text' or 'date' or 'number'"),
    ('K = { src = "IPTC:Keywords", sep = ";" }', "databoxes.main.fields.K.sep: unknown setting"),
    ("K = true", 'databoxes.main.fields.K: expected "text", "date", "number" or a table'),
])
def test_a_bad_field_names_its_key_path(tmp_path: Path, line: str, where: str) -> None:
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, line)
    assert where in str(e.value)


def test_index_document_text_switch(tmp_path: Path) -> None:
    config = _load(tmp_path, 'Title = "text"', extra="index_document_text = false")
    assert config.databoxes["main"].index_document_text is False  # type: ignore[attr-defined]


def test_embedded_values_become_field_values() -> None:
    sources = {"Keywords": "IPTC:Keywords", "Shot": "EXIF:DateTimeOriginal", "Count": "XMP-dc:Source",
               "Title": "XMP-dc:Title"}
    declared = {"Keywords": "text", "Shot": "date", "Count": "number", "Title": "text"}
    read = {"IPTC:Keywords": ["ocelot", " jungle cat ", ""], "EXIF:DateTimeOriginal": ["2021:03:04 05:06:07"],
            "XMP-dc:Source": ["five"]}
    fields, problems = embedded_fields(sources, declared, read)
    assert fields == {"Keywords": f"ocelot{MULTI_SEPARATOR}jungle cat", "Shot": "2021-03-04T05:06:07"}
    assert problems == ["XMP-dc:Source: field Count: expected a number, got 'five'"]
