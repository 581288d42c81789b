"""Size limits on deliveries: oversized files and fields are refused, with bounded memory.

Two checks, both fail closed with a ``SourceError`` that names the practice, the file and the entry and
says which limit was broken, never the value:

* ``check_files``: before an adapter reads anything, every delivered file is ``stat``-ed; one larger than
  ``max_file_bytes`` is refused unread, so a huge delivery never reaches memory;
* ``check_fields``: after reading, every text column of the canonical tables is measured with one
  vectorised ``utf8_length`` per column (no copies, no Python loop over rows); a value longer than
  ``max_field_chars`` fails the batch.

``gpdata.ingest.sources.collect`` runs the first on every delivery folder; ``gpdata.pipeline.extract`` the second.
Limits come from ``include/config/limits.yaml``, overridden by ``GPDATA_MAX_FILE_BYTES`` and
``GPDATA_MAX_FIELD_CHARS``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import yaml

from gpdata import storage
from gpdata.errors import ConfigError, SourceError
from gpdata.model import POSITION
from gpdata.settings import CONFIG_DIR

LIMITS_FILE = CONFIG_DIR / "limits.yaml"
FIELDS = ("max_file_bytes", "max_field_chars")


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int
    max_field_chars: int


def load(env: Mapping[str, str] | None = None, path: Path = LIMITS_FILE) -> Limits:
    """The limits from the YAML file, each overridable by its ``GPDATA_`` environment variable."""
    env = os.environ if env is None else env

    def parse() -> dict:
        try:
            return yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read the size limits: {exc}", file=str(path)) from None

    doc = storage.cached_by_file(path, "limits", parse)  # every practice's extraction asks twice
    values = {}
    for name in FIELDS:
        raw = env.get(f"GPDATA_{name.upper()}", doc.get(name))
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"field '{name}': must be a whole number", file=str(path)) from None
        if value <= 0:
            raise ConfigError(f"field '{name}': must be positive", file=str(path))
        values[name] = value
    return Limits(**values)


def delivered_files(location: Path) -> list[Path]:
    """Every regular file directly in a delivery folder (what an adapter may read)."""
    location = Path(location)
    return sorted(p for p in location.iterdir() if p.is_file()) if location.is_dir() else []


def check_files(paths: Iterable[Path], practice: str, limits: Limits | None = None) -> None:
    """Refuse, unread, any file over ``max_file_bytes``."""
    limits = limits or load()
    for path in paths:
        size = Path(path).stat().st_size
        if size > limits.max_file_bytes:
            raise SourceError(f"file of {size} bytes is over the limit of {limits.max_file_bytes} bytes "
                              "(GPDATA_MAX_FILE_BYTES); refused unread", practice=practice, file=Path(path).name)


def _lengths(column: pa.ChunkedArray) -> pa.ChunkedArray | None:
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return pc.utf8_length(column)
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        return pc.binary_length(column)
    return None


def check_fields(tables: Mapping[str, pa.Table], practice: str, limits: Limits | None = None) -> None:
    """Refuse a batch holding any text value longer than ``max_field_chars``; the error names the table,
    column, file and entry of the first such value and how many there are."""
    limits = limits or load()
    for name, table in tables.items():
        for column in table.column_names:
            if column in POSITION:
                continue
            lengths = _lengths(table[column])
            if lengths is None:
                continue
            over = pc.fill_null(pc.greater(lengths, limits.max_field_chars), False)
            count = pc.sum(over).as_py() or 0
            if not count:
                continue
            first = pc.index(over, True).as_py()
            file = table["_src_file"][first].as_py() if "_src_file" in table.column_names else None
            entry = table["_src_entry"][first].as_py() if "_src_entry" in table.column_names else first
            longest = pc.max(lengths).as_py()
            raise SourceError(f"table {name} column {column}: {count} value(s) over the limit of "
                              f"{limits.max_field_chars} characters (longest {longest}; "
                              "GPDATA_MAX_FIELD_CHARS); batch refused", practice=practice, file=file, row=entry)
