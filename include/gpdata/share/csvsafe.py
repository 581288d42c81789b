"""CSV output that a spreadsheet cannot execute.

A text cell that starts with ``=``, ``+``, ``-`` or ``@`` (or their full-width forms), also after leading
whitespace (spaces, tabs, carriage returns, newlines: spreadsheets skip them before reading a formula), or
that starts with a tab or carriage return, is a formula to Excel, LibreOffice and Google Sheets
(``=HYPERLINK(...)``, ``=cmd|'/c calc'!A0``). Every such cell is written with a leading single quote, as
OWASP advises for CSV injection, so it opens as the text it is. Values are never changed anywhere else:
the store and Parquet extracts keep them exactly as delivered (they are data), only CSV output is escaped.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

FORMULA_CHARS = ("=", "+", "-", "@", "\uff1d", "\uff0b", "\uff0d", "\uff20")
FORMULA_STARTS = (*FORMULA_CHARS, "\t", "\r")


def is_formula(value: str) -> bool:
    """True when a spreadsheet could read the text as a formula: a formula character first, or after any
    leading whitespace (str.lstrip: spaces, tabs, CR, LF, vertical tab, form feed, no-break and other
    Unicode spaces), or a leading tab or carriage return."""
    return value.startswith(FORMULA_STARTS) or value.lstrip().startswith(FORMULA_CHARS)


def neutralise(value: Any) -> Any:
    """A text value that would start a formula, prefixed with a single quote; anything else unchanged."""
    if isinstance(value, str) and is_formula(value):
        return "'" + value
    return value


def dumps(columns: list[str], rows: Iterable[Mapping[str, Any]]) -> str:
    """CSV text with a header and every cell neutralised (quoting by the csv module, RFC 4180)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="raise")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: neutralise(v) for k, v in row.items()})
    return buf.getvalue()


def write(path: Path, columns: list[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write the CSV by rename, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = dumps(columns, rows)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
