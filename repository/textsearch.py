"""What the full-text index holds of a record, and how a user query reads, for both back-ends.

SQLite's FTS5 index (repository.fulltext) tokenizes with `unicode61 remove_diacritics 2`: tokens
are runs of letters and digits, lower-cased, accents removed. PostgreSQL's own parser would cut
`photo.jpg` as one "file" token and keep accents, so for a PostgreSQL databox the same cutting is
done here, in Python, and the database only sees `token token token` (`to_tsvector('simple')`):
the same query finds the same records on both.

The query syntax is FTS5's as `record:search` passes it: whitespace-separated words, all of which
must match (AND); a word with punctuation is a phrase of its tokens (`IMG_0001.jpg` = img 0001
jpg, adjacent); `word*` matches a prefix.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping


def _token_char(ch: str) -> bool:
    cat = unicodedata.category(ch)
    return cat[0] in "LN" or cat in ("Co", "Mn")


def _fold(token: str) -> str:
    decomposed = unicodedata.normalize("NFKD", token.lower())
    return "".join(ch for ch in decomposed if unicodedata.category(ch) != "Mn")


_ASCII_TOKEN = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> list[str]:
    """The tokens of `text` as unicode61 with remove_diacritics cuts and folds them."""
    if text.isascii():
        # ASCII letters and digits are the only ASCII token characters, and folding them is
        # lower(): the same cut at C speed (a rule over 100,000 records re-indexes them all)
        return _ASCII_TOKEN.findall(text.lower())
    out: list[str] = []
    start = None
    for i, ch in enumerate(text):
        if _token_char(ch):
            if start is None:
                start = i
        elif start is not None:
            out.append(text[start:i])
            start = None
    if start is not None:
        out.append(text[start:])
    return [t for t in (_fold(t) for t in out) if t]


def document(name: str | None, collection: str | None, fields: Mapping[str, str] | Iterable[tuple[str, str]],
             text: str | None) -> tuple[str, str, str]:
    """(name, collection, body) of one record as both indexes hold it: body is one `Name: value`
    line per field, then the document's own text."""
    pairs = fields.items() if isinstance(fields, Mapping) else fields
    lines = "\n".join(f"{k}: {v}" for k, v in pairs)
    return name or "", collection or "", "\n".join(filter(None, (lines, text)))


def normalized(*parts: str) -> str:
    """The tokens of `parts`, space-separated: what PostgreSQL's to_tsvector('simple') is given."""
    return " ".join(t for p in parts for t in tokens(p))


def tsquery(text: str) -> str:
    """User words as a PostgreSQL tsquery text (for to_tsquery('simple', ...)): the FTS5 reading of
    `repository.fulltext.fts_query`. ValueError when nothing is left to look for."""
    terms = []
    for word in text.split():
        prefix = word.endswith("*")
        toks = tokens(word.rstrip("*"))
        if not toks:
            continue
        quoted = [f"'{t}'" for t in toks]
        if prefix:
            quoted[-1] += ":*"
        terms.append("(" + " <-> ".join(quoted) + ")" if len(quoted) > 1 else quoted[0])
    if not terms:
        raise ValueError("empty query")
    return " & ".join(terms)
