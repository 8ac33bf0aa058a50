"""The pull ledger's journal: what a crash leaves behind reads back as written."""

from __future__ import annotations

import json
from pathlib import Path

from tasks.ftp_pull import Ledger


def test_journal_lines_are_json_and_read_back_exactly_even_after_a_torn_line(tmp_path: Path) -> None:
    odd = 'quote " back \\ new\nline é \ud800 tab\t'
    ledger = Ledger(tmp_path / "ledger.json")
    ledger.add(odd, 10, 1_700_000_000.25)
    ledger.add("no/size", None, None)
    ledger.add("big", 2**40, 1e-3)
    ledger.flush()
    ledger.close()
    journal = tmp_path / "ledger.json.journal"
    lines = journal.read_text().splitlines()
    assert [json.loads(x) for x in lines] == [[odd, 10, 1_700_000_000.25], ["no/size", None, None], ["big", 2**40, 1e-3]]
    with journal.open("a") as f:
        f.write('["torn", 3')  # a crash mid-line
    again = Ledger(tmp_path / "ledger.json")  # nothing compacted: all from the journal
    assert again.seen(odd, 10, 1_700_000_000.25) and again.seen("no/size", None, None) and again.seen("big", 2**40, 1e-3)
    assert not again.seen("torn", 3, None) and not again.seen(odd, 11, 1_700_000_000.25)
    again.compact()
    assert not journal.exists()
    assert Ledger(tmp_path / "ledger.json").items == again.items
