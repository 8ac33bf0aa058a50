"""Set-based SQL of the task types (record_mover's rules, workflows): the pieces that differ
between SQLite and PostgreSQL, by name per dialect. A task type asks its Databox for them
(`db.dialect(name, ...)`) and writes the rest of its statement once, with `?` placeholders.

- `date_compare` (value, op): a field's date text against the `?` threshold (UTC text
  `YYYY-MM-DD HH:MM:SS.ffffff`), as instants: a date alone is midnight UTC, a time without an
  offset is UTC, an offset is honoured. SQLite: julianday (NULL for text that is no date);
  PostgreSQL: timestamptz, only for text shaped like a date (NULL otherwise; a date-shaped
  impossible date such as 2024-02-31 fails the statement, naming the value).
- `date_bound` (value, op): on PostgreSQL `{value} {op} ? AND `, a text bound taken before
  `date_compare` (the rule passes the threshold's day +/- 2 days as ISO text): a date-shaped
  text orders as its day and an offset moves it by less than a day, so the bound keeps every
  match and lets the `fields (name, value)` index serve the rule instead of a cast per value.
  SQLite: nothing (julianday reads more than ISO text: a day number, `now`; no text bound holds).
- `number` (value): a field's text as a number (declared number fields hold numbers:
  checked on write). SQLite: CAST AS REAL (0 for text that is no number); PostgreSQL: double
  precision, NULL for text that is no number.
- `bulk_session`: run once on a databox connection opened for a pass of set-based statements
  (SQLite: transient tables in memory; PostgreSQL: nothing, the server's settings rule).
"""

from __future__ import annotations

# regular expressions inside str.format templates: braces doubled, and no `?` (a placeholder)
_OPT = "{{0,1}}"
_TIME = rf"\d{{{{2}}}}:\d{{{{2}}}}(:\d{{{{2}}}}(\.\d+){_OPT}){_OPT}"
_OFFSET = rf"(Z|[+-]\d{{{{2}}}}(:{_OPT}\d{{{{2}}}}){_OPT})"
_ISO_DATE = rf"'^\d{{{{4}}}}-\d{{{{2}}}}-\d{{{{2}}}}([T ]{_TIME}{_OFFSET}{_OPT}){_OPT}$'"
_HAS_OFFSET = rf"'[T ]{_TIME}{_OFFSET}$'"
_NUMBER = rf"'^\s*[-+]{_OPT}(\d+(\.\d*){_OPT}|\.\d+)([eE][-+]{_OPT}\d+){_OPT}\s*$'"


def _pg_instant(value: str) -> str:
    """A date-shaped text as timestamptz: with its offset, or read as UTC without one."""
    return (f"(CASE WHEN {value} !~ {_ISO_DATE} THEN NULL WHEN {value} ~ {_HAS_OFFSET} "
            f"THEN {value}::timestamptz ELSE ({value}::timestamp AT TIME ZONE 'UTC') END)")


STATEMENTS: dict[str, dict[str, str]] = {
    "sqlite": {
        "date_compare": "julianday({value}) {op} julianday(?)",
        "date_bound": "",
        "number": "CAST({value} AS REAL)",
        "bulk_session": "PRAGMA temp_store = MEMORY",
    },
    "postgresql": {
        "date_compare": _pg_instant("{value}") + " {op} (?::timestamp AT TIME ZONE 'UTC')",
        "date_bound": "{value} {op} ? AND ",
        "number": f"(CASE WHEN {{value}} ~ {_NUMBER} THEN {{value}}::double precision END)",
        "bulk_session": "",
    },
}

COMPARE_OPS = frozenset({"<", ">", "<=", ">=", "=", "<>"})


def statement(kind: str, name: str, **parts: str) -> str:
    """The dialect `kind`'s statement `name`, its `{...}` parts filled (a column, an operator)."""
    try:
        text = STATEMENTS[kind][name]
    except KeyError:
        raise KeyError(f"no set-based statement {name!r} for a {kind} databox "
                       f"(known: {', '.join(sorted(STATEMENTS.get(kind, {})))})") from None
    if "op" in parts and parts["op"] not in COMPARE_OPS:
        raise ValueError(f"bad comparison operator {parts['op']!r} (known: {', '.join(sorted(COMPARE_OPS))})")
    return text.format(**parts)
