import pytest

from repository import StatusMask, format_mask, format_status, parse_mask


def test_rightmost_is_bit_zero_and_x_ignores():
    m = parse_mask("x1x0")
    assert m == StatusMask(mask=0b0101, value=0b0100)
    assert m.matches(0b0100) and m.matches(0b1110)
    assert not m.matches(0b0101) and not m.matches(0b0000)


def test_apply_forces_named_bits_only():
    assert parse_mask("1x0").apply(0b011) == 0b110
    assert parse_mask("").apply(0b1010) == 0b1010
    assert parse_mask("1" + "x" * 31).apply(0) == 1 << 31


def test_groups_and_roundtrip():
    assert parse_mask("1_0000 x") == parse_mask("10000x")
    for text in ("1", "0", "x1x0", "10x01", "1" * 32):
        assert format_mask(parse_mask(text)) == text.lstrip("x")
    assert format_status(5, 4) == "0101"


@pytest.mark.parametrize(
    "text, words",
    [("x2x0", "bad character '2'"), ("1" * 33, "33 bits"), ("0b101", "bad character 'b'"), (None, "expected a mask")],
)
def test_bad_masks_say_what_is_wrong(text, words):
    with pytest.raises(ValueError) as e:
        parse_mask(text, "tasks.t.status")
    assert words in str(e.value) and "tasks.t.status" in str(e.value)


def test_sql_fragment_selects_like_matches(db, src):
    db.create_collection("c")
    ids = {s: db.create_record("c", src(f"f{s}"), status=s).id for s in range(16)}
    m = parse_mask("x1x0")
    frag, params = m.sql("status")
    got = {r[0] for r in db.connection.execute(f"SELECT id FROM records WHERE {frag}", params)}
    assert got == {ids[s] for s in range(16) if m.matches(s)} and len(got) == 4
