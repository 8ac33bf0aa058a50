import pytest

from repository import CaptionError, FolderConfig, StatusMask, XmlError, parse_caption, parse_phrasea_xml, render_phrasea_xml


def test_phrasea_xml_forms():
    assert parse_phrasea_xml(b'<?xml version="1.0"?><record collection="press"/>') == FolderConfig("press")
    c = parse_phrasea_xml(
        b'<?xml version="1.0" encoding="ISO-8859-1"?>\n<record collection="42">'
        b'<status>x1x0</status><magicfile method="lock">.busy</magicfile></record>'
    )
    assert c == FolderConfig("42", StatusMask(0b101, 0b100), ".busy", "LOCK")
    assert parse_phrasea_xml(b'<record status="1"><magicfile method="UNLOCK"> READY </magicfile></record>') == \
        FolderConfig(None, StatusMask(1, 1), "READY", "UNLOCK")
    assert parse_phrasea_xml(b"<record/>") == FolderConfig()
    assert parse_phrasea_xml(render_phrasea_xml('a "quoted" & <odd> name', "1x")) == \
        FolderConfig('a "quoted" & <odd> name', StatusMask(0b10, 0b10))


@pytest.mark.parametrize(
    "data, words",
    [
        (b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><record>&x;</record>', "DOCTYPE is not allowed"),
        (b'<!DOCTYPE r SYSTEM "http://127.0.0.1:9/evil.dtd"><record/>', "DOCTYPE is not allowed"),
        (b'<!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]><record>&b;</record>', "DOCTYPE"),
        (b"<record>&undefined;</record>", "undefined entity"),
        (b"<record", "line 1"),
        (b"<record>" + b"<a>" * 40 + b"</a>" * 40 + b"</record>", "nested deeper"),
        (b"<record>" + b" " * 70000 + b"</record>", "larger than"),
        (b'<record status="x2"/>', "bad character '2'"),
        (b'<record><magicfile method="OPEN">x</magicfile></record>', '"LOCK" or "UNLOCK"'),
        (b'<record><magicfile method="LOCK">../x</magicfile></record>', "a file name in this folder"),
    ],
)
def test_unsafe_or_broken_phrasea_xml_is_refused(data, words):
    with pytest.raises(XmlError) as e:
        parse_phrasea_xml(data)
    assert words in str(e.value)


def test_caption_xml_and_json():
    c = parse_caption(
        b"<record><description><Title>Harbour &amp; boats</Title><Keywords>sea</Keywords><Keywords>port</Keywords>"
        b"</description><status>1x</status></record>", "p.xml")
    assert dict(c.fields) == {"Title": "Harbour & boats", "Keywords": "sea; port"} and c.status == StatusMask(2, 2)
    assert dict(parse_caption(b"<record><Title>flat</Title><status>1</status></record>", "p.xml").fields) == {"Title": "flat"}
    c = parse_caption(b'{"fields": {"Title": "x", "Tags": ["a", "b"]}, "status": "x1"}', "p.json")
    assert dict(c.fields) == {"Title": "x", "Tags": "a; b"} and c.status == StatusMask(1, 1)
    assert dict(parse_caption(b'{"Title": "flat"}', "P.JSON").fields) == {"Title": "flat"}
    declared = {"Shot": "date"}
    assert dict(parse_caption(b"<record><Shot>2024:01:02 03:04:05</Shot></record>", "a.xml", declared).fields) == \
        {"Shot": "2024-01-02T03:04:05"}


@pytest.mark.parametrize(
    "name, data, words",
    [
        ("a.xml", b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/hostname">]><record><T>&x;</T></record>', "DOCTYPE"),
        ("a.xml", b"<record><T>x</T>", "line"),
        ("a.xml", b"<record><bad name>x</bad></record>", "line"),
        ("a.xml", b"<record><T>x</T><status>abc</status></record>", "bad character"),
        ("a.json", b"[1]", "JSON object"),
        ("a.json", b"{", "not valid JSON"),
        ("a.json", b'{"fields": {"T": "x"}, "colour": 1}', "unknown keys"),
        ("a.xml", b"<record><Other>x</Other></record>", "unknown field 'Other'"),
    ],
)
def test_bad_captions(name, data, words):
    with pytest.raises(CaptionError) as e:
        parse_caption(data, name, {"T": "text"} if "Other" in data.decode() else None)
    assert words in str(e.value)
