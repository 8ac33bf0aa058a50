"""The tokens a PostgreSQL databox indexes (repository.textsearch): ASCII text takes a fast path
that must cut exactly as the character-by-character unicode61 emulation does."""

from __future__ import annotations

import random
import string

from repository.textsearch import tokens


def test_ascii_text_is_cut_as_the_unicode61_emulation_cuts_it() -> None:
    rng = random.Random(22)
    samples = ["IMG_0001.jpg", "Title: Sunset over the sea", "report-2024.pdf", "a__b--c", "", "  ", "x\ty\nZ"]
    samples += ["".join(rng.choice(string.printable) for _ in range(rng.randrange(60))) for _ in range(2000)]
    for text in samples:
        # " é" sends the same text through the general path (é folds to e, its own last token)
        assert tokens(text) == tokens(text + " é")[:-1], text
