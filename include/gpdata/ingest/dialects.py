"""Source dialects: how a supplier's flat-file export or reporting database maps onto the canonical tables.

A dialect is configuration (``include/config/dialects/<name>.yaml``), never code: column names, delimiter,
encoding, date formats, file naming, code-system labels and the deletion flag. The flat-file and SQL adapters
read any dialect the same way.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gpdata.errors import ConfigError
from gpdata.model import CANONICAL, POSITION, TABLES
from gpdata.settings import CONFIG_DIR

DIALECTS_DIR = CONFIG_DIR / "dialects"
CODE_SYSTEMS = ("snomed", "readv2", "ctv3", "dmd")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,40}$")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class Deleted(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str = Field(description="Column flagging a record the source has deleted")
    when_deleted: str = Field(default="true", description="Text of the flag when deleted (flat files)")
    otherwise: str = Field(default="false", description="Text of the flag otherwise (flat files)")


class TableMap(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(description="File name token (flat files) or table name (SQL) of this record type")
    columns: dict[str, str] = Field(description="canonical field -> source column")


class Dialect(BaseModel):
    """One supplier export format."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    kind: Literal["flatfile", "sql"]
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    encoding: Literal["utf-8"] = "utf-8"
    file_name: str | None = Field(default=None, description="Flat files: name template with {practice}, "
                                                            "{source} and {stamp} (14 digits, YYYYMMDDhhmmss)")
    date_format: str = "%Y-%m-%d"
    datetime_format: str = "%Y-%m-%dT%H:%M:%S"
    deleted: Deleted
    code_systems: dict[str, Literal["snomed", "readv2", "ctv3", "dmd"]]
    tables: dict[str, TableMap]
    schema_name: str | None = Field(default=None, alias="schema", description="SQL: schema of the tables")
    practice_column: str | None = Field(default=None, description="SQL: column holding the ODS code")
    updated_column: str | None = Field(default=None, description="SQL: last-updated timestamp (the watermark)")
    source_file: Path | None = Field(default=None, exclude=True)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError("must be lower case letters, digits and _")
        return value

    @field_validator("tables")
    @classmethod
    def _tables(cls, tables: dict[str, TableMap]) -> dict[str, TableMap]:
        missing = [t for t in TABLES if t not in tables]
        unknown = [t for t in tables if t not in TABLES]
        if missing or unknown:
            raise ValueError(f"needs exactly the tables {', '.join(TABLES)}"
                             + (f"; missing {', '.join(missing)}" if missing else "")
                             + (f"; unknown {', '.join(unknown)}" if unknown else ""))
        for name, table in tables.items():
            fields = set(CANONICAL[name].names) - set(POSITION)
            bad = sorted(set(table.columns) - fields)
            if bad:
                raise ValueError(f"table {name}: no canonical field {', '.join(bad)}")
            if "source_id" not in table.columns:
                raise ValueError(f"table {name}: source_id must be mapped (it identifies the record)")
            names = list(table.columns.values())
            if len(set(names)) != len(names):
                raise ValueError(f"table {name}: a source column is mapped twice")
        return tables

    @model_validator(mode="after")
    def _kind(self) -> Dialect:
        if self.kind == "flatfile":
            if not self.file_name or any(f"{{{k}}}" not in self.file_name for k in ("practice", "source", "stamp")):
                raise ValueError("file_name must contain {practice}, {source} and {stamp}")
        else:
            for field in ("schema_name", "practice_column", "updated_column"):
                value = getattr(self, field)
                if not value or not _IDENT_RE.match(value):
                    raise ValueError(f"a sql dialect needs {field.removesuffix('_name')} as a plain SQL name")
            idents = [self.deleted.column] + [t.source for t in self.tables.values()] + \
                [c for t in self.tables.values() for c in t.columns.values()]
            bad = [i for i in idents if not _IDENT_RE.match(i)]
            if bad:
                raise ValueError(f"not plain SQL names: {', '.join(bad[:5])}")
        return self

    def columns(self, table: str) -> list[str]:
        """Source columns of a table in delivery order: the mapped fields, then the deletion flag."""
        return [*self.tables[table].columns.values(), self.deleted.column]

    @property
    def file_regex(self) -> re.Pattern:
        parts = re.split(r"(\{practice\}|\{source\}|\{stamp\})", self.file_name or "")
        groups = {"{practice}": r"(?P<practice>[A-Z][0-9]{5})", "{source}": r"(?P<source>[A-Za-z0-9]+)",
                  "{stamp}": r"(?P<stamp>[0-9]{14})"}
        return re.compile("^" + "".join(groups.get(p, re.escape(p)) for p in parts) + "$")

    def source_table(self, source: str) -> str | None:
        return next((t for t, m in self.tables.items() if m.source == source), None)


@cache
def load_dialect(name_or_path: str) -> Dialect:
    """A dialect by name (from include/config/dialects) or by path to its YAML file."""
    from gpdata.config import load_model

    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        if not _NAME_RE.match(name_or_path):
            raise ConfigError(f"unknown dialect {name_or_path!r}")
        path = DIALECTS_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown dialect {name_or_path!r} (known: {', '.join(known_dialects())})")
    return load_model(path, Dialect, "dialect")


def known_dialects() -> list[str]:
    return sorted(p.stem for p in DIALECTS_DIR.glob("*.yaml"))
