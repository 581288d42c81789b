"""Small Arrow helpers shared by the pipeline stages."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from gpdata.errors import ConfigError

BATCH_ROWS_ENV = "GPDATA_BATCH_ROWS"
DEFAULT_BATCH_ROWS = 1 << 17  # rows a stage holds at once of a large table (memory is O(batch), not O(records))


def batch_rows() -> int:
    """Rows per record batch when a stage streams a table (``GPDATA_BATCH_ROWS``, default 131,072)."""
    value = os.environ.get(BATCH_ROWS_ENV, "").strip()
    if not value:
        return DEFAULT_BATCH_ROWS
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{BATCH_ROWS_ENV} must be a whole number of rows above 0")
    return int(value)


def const(value: str, n: int) -> pa.Array:
    """A string column holding one value ``n`` times."""
    return pa.array([value] * n, pa.string())


def isin(values, among) -> pa.Array:
    """True where a value is one of ``among``; False for a null (never "unknown", so a filter keeps no null)."""
    return pc.fill_null(pc.is_in(values, value_set=among), False)


def first_reason(n: int, rules: list[tuple[pa.Array, str]]) -> pa.Array:
    """Per row, the reason of the first rule whose condition holds (nulls count as not holding), else null."""
    out = pa.nulls(n, pa.string())
    for cond, reason in reversed(rules):
        out = pc.if_else(pc.fill_null(cond, False), const(reason, n), out)
    return out


def read_lookup(path: Path, columns: tuple[str, ...], label: str, missing: str = "") -> dict[str, pa.Array]:
    """The named columns of a reference CSV lookup (header row, UTF-8 with or without a byte-order mark) as
    string arrays; a missing file or column is a ConfigError naming the lookup (``missing`` adds why it is
    needed)."""
    try:
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(columns, pa.string()), include_columns=list(columns),
            strings_can_be_null=False))
    except FileNotFoundError:
        raise ConfigError(f"{label} {path} does not exist{missing}") from None
    except pa.ArrowKeyError:
        raise ConfigError(f"{label} {path} needs columns {', '.join(columns[:-1])} and {columns[-1]}") from None
    except pa.ArrowInvalid as exc:
        raise ConfigError(f"{label} {path} cannot be read: {exc}") from None
    return {c: table[c].combine_chunks() for c in columns}
