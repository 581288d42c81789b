"""Source dialects: how a supplier's flat-file export or reporting database maps onto the canonical tables.

A dialect is configuration (a YAML file), never code: column names, delimiter, encoding, date formats, file and
folder naming, code-system labels, value maps, derived fields, supplier code look-ups and the deletion flag. The
flat-file and SQL adapters read any dialect the same way. Dialects live in ``include/config/dialects/`` (shipped)
and in ``GPDATA_DIALECTS_DIR`` (a data engineer's own, outside the code tree); a dialect name is unique across
both.

A table's ``columns`` maps each canonical field to one of:

* a source column name (``nhs_number: NHSNumber``);
* ``{column: C, values: {"1": male, ...}}``: a column whose delivered values are mapped (an unlisted value fails
  the file, naming the column and row);
* ``{year: C}`` or ``{year: C, month: M}`` (date fields): a date derived from a year (the first of July) or a
  year and month (the first of the month);
* ``{value: V}``: the same text for every row;
* for ``code``, a list of code columns, the first non-empty one giving the code:
  ``[{column: MedCodeId, lookup: medical, system: snomed}, {column: ReadCode, system: readv2}]`` (``lookup``:
  resolved through a supplier look-up file shipped with the dialect; ``system``: the code system of that column).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from gpdata.errors import ConfigError
from gpdata.model import CANONICAL, POSITION, TABLES
from gpdata.settings import CONFIG_DIR, dialects_dirs

DIALECTS_DIR = CONFIG_DIR / "dialects"
CODE_SYSTEMS = ("snomed", "readv2", "ctv3", "dmd")
CodeSystem = Literal["snomed", "readv2", "ctv3", "dmd"]
REQUIRED_TABLES = ("patients", "observations")  # observations carry the type 1 opt-out codes: never optional
GENDERS = ("male", "female", "other", "unknown")
STAMP_DIRECTIVES = {"%Y": r"[0-9]{4}", "%m": r"[0-9]{2}", "%d": r"[0-9]{2}", "%H": r"[0-9]{2}", "%M": r"[0-9]{2}",
                    "%S": r"[0-9]{2}"}
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,40}$")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_PLACEHOLDER_RE = re.compile(r"%\((\w*)\)s|%%|%")
QUERY_PARAMETERS = ("practice", "watermark")


class Deleted(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str = Field(description="Column flagging a record the source has deleted")
    when_deleted: str = Field(default="true", description="Text of the flag when deleted")
    otherwise: str = Field(default="false", description="Text of the flag otherwise")


class Lookup(BaseModel):
    """A supplier look-up file shipped with the dialect (e.g. medical code id -> SNOMED CT concept id)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str = Field(description="Path of the look-up file, relative to the dialect file and inside its folder")
    key: str = Field(description="Column of the supplier's id")
    value: str = Field(description="Column of the code it stands for")
    delimiter: str = Field(default=",", min_length=1, max_length=1)


class CodeColumn(BaseModel):
    """One of a table's code columns."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str
    system: CodeSystem | None = Field(default=None, description="Code system of this column's codes")
    lookup: str | None = Field(default=None, description="Resolve the column's ids through this look-up")


class FieldMap(BaseModel):
    """How one canonical field is read: exactly one of column, year, value or codes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str | None = None
    values: dict[str, str] | None = Field(default=None, description="Delivered text -> canonical text")
    year: str | None = Field(default=None, description="Date fields: column of the year (first of July)")
    month: str | None = Field(default=None, description="With year: column of the month (1-12; first of month)")
    value: str | None = Field(default=None, description="The same text for every row")
    codes: tuple[CodeColumn, ...] | None = Field(default=None, description="code: columns, first non-empty wins")

    @field_validator("values", mode="before")
    @classmethod
    def _text_keys(cls, value):
        if isinstance(value, dict):  # YAML reads 1: male as an int key: the delivered text is "1"
            return {str(k): (str(v) if isinstance(v, int | float) else v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _one_way(self) -> FieldMap:
        ways = [w for w in ("column", "year", "value", "codes") if getattr(self, w) is not None]
        if len(ways) != 1:
            raise ValueError("give exactly one of column, year, value or a list of code columns")
        if self.values is not None and self.column is None:
            raise ValueError("values maps a column's text: give column too")
        if self.month is not None and self.year is None:
            raise ValueError("month needs year")
        return self

    def source_columns(self) -> list[str]:
        if self.codes is not None:
            return [c.column for c in self.codes]
        return [c for c in (self.column, self.year, self.month) if c is not None]


class TableMap(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str | None = Field(default=None, description="File name token (flat files) or table or view name "
                                                         "(SQL) of this record type")
    columns: dict[str, str | FieldMap | tuple[CodeColumn, ...]] = Field(description="canonical field -> source")
    code_system: CodeSystem | None = Field(default=None, description="The code system of every code in the table")
    optional: bool = Field(default=False, description="Flat files: a delivery may have no file for this table")
    query: str | None = Field(default=None, description="SQL: a SELECT (joins, views, computed columns) used "
                                                        "instead of the table; may use %(practice)s and "
                                                        "%(watermark)s")
    watermark: str | None = Field(default=None, description="SQL: last-updated column of this table (default: the "
                                                            "dialect's updated_column)")
    deleted: Deleted | None = Field(default=None, description="Deletion flag of this table (default: the "
                                                              "dialect's)")
    snapshot: bool = Field(default=False, description="SQL: read whole every run; no watermark or deletion "
                                                      "column needed")

    _fields: dict[str, FieldMap] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context) -> None:
        out = {}
        for name, spec in self.columns.items():
            if isinstance(spec, str):
                spec = FieldMap(column=spec)
            elif isinstance(spec, tuple):
                spec = FieldMap(codes=spec)
            out[name] = spec
        self._fields = out

    @property
    def fields(self) -> dict[str, FieldMap]:
        """Every mapped field as a FieldMap (``columns`` keeps the YAML's short forms)."""
        return self._fields

    def label(self) -> str:
        return self.source or "query"

    def source_columns_mapped(self) -> list[str]:
        return [c for spec in self.fields.values() for c in spec.source_columns()]


class Dialect(BaseModel):
    """One supplier export format."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    kind: Literal["flatfile", "sql"]
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    encoding: Literal["utf-8"] = "utf-8"
    file_name: str | None = Field(default=None, description="Flat files: name template with {source} and "
                                                            "optionally {practice} and {stamp}")
    stamp_from: Literal["name", "folder", "modified"] | None = Field(
        default=None, description="Where a delivery's stamp comes from: the file name ({stamp}; the default when "
                                  "the name has one), the delivery's folder (folder_name) or, the folder holding "
                                  "one delivery at a time, the newest modification time of its files")
    folder_name: str = Field(default="{stamp}", description="stamp_from folder: the delivery folder's name "
                                                            "template, with {stamp} and optionally {practice}")
    stamp_format: str = Field(default="%Y%m%d%H%M%S", description="How {stamp} is written (%Y %m %d %H %M %S)")
    date_format: str = "%Y-%m-%d"
    datetime_format: str = "%Y-%m-%dT%H:%M:%S"
    deleted: Deleted | None = Field(default=None, description="Column flagging deleted records; without one, "
                                                              "'delivers' says what a delivery holds")
    delivers: Literal["snapshot", "changes"] | None = Field(
        default=None, description="Without a deletion column: snapshot (every delivery a full extract; feeds use "
                                  "mode baseline) or changes (incremental, nothing is ever deleted at source)")
    unmapped_columns: Literal["fail", "ignore"] = Field(
        default="fail", description="A delivered column no field maps: fail the file, or ignore it (listed once "
                                    "in the run manifest)")
    code_systems: dict[str, CodeSystem] = Field(default_factory=dict, description="Delivered code-system label -> "
                                                                                  "code system")
    lookups: dict[str, Lookup] = Field(default_factory=dict)
    tables: dict[str, TableMap]
    schema_name: str | None = Field(default=None, alias="schema", description="SQL: schema of the tables")
    practice_column: str | None = Field(default=None, description="SQL: column holding the ODS code (none: the "
                                                                   "database holds one practice)")
    updated_column: str | None = Field(default=None, description="SQL: last-updated timestamp (the watermark)")
    source_file: Path | None = Field(default=None, exclude=True)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError("must be lower case letters, digits and _")
        return value

    @field_validator("stamp_format")
    @classmethod
    def _stamp_format(cls, value: str) -> str:
        left = re.sub("|".join(re.escape(d) for d in STAMP_DIRECTIVES), "", value)
        if "%" in left or "%Y" not in value:
            raise ValueError(f"must be made of {' '.join(STAMP_DIRECTIVES)} (with %Y) and plain characters")
        return value

    @field_validator("tables")
    @classmethod
    def _tables(cls, tables: dict[str, TableMap]) -> dict[str, TableMap]:
        missing = [t for t in REQUIRED_TABLES if t not in tables]
        unknown = [t for t in tables if t not in TABLES]
        if missing or unknown:
            raise ValueError(f"tables are some of {', '.join(TABLES)}, with {' and '.join(REQUIRED_TABLES)}"
                             + (f"; missing {', '.join(missing)}" if missing else "")
                             + (f"; unknown {', '.join(unknown)}" if unknown else ""))
        for name, table in tables.items():
            schema = CANONICAL[name]
            fields = set(schema.names) - set(POSITION)
            bad = sorted(set(table.fields) - fields)
            if bad:
                raise ValueError(f"table {name}: no canonical field {', '.join(bad)}")
            if "source_id" not in table.fields or table.fields["source_id"].column is None:
                raise ValueError(f"table {name}: source_id must be mapped to a column (it identifies the record)")
            if name in REQUIRED_TABLES and table.optional:
                raise ValueError(f"table {name}: cannot be optional")
            for field, spec in table.fields.items():
                where = f"table {name}, field {field}"
                ftype = str(schema.field(field).type)
                if spec.year is not None and ftype != "date32[day]":
                    raise ValueError(f"{where}: year/month derive dates; {field} is not a date")
                if (spec.values is not None or spec.value is not None) and ftype != "string":
                    raise ValueError(f"{where}: values and value give text; {field} is not a text field")
                if spec.codes is not None and field != "code":
                    raise ValueError(f"{where}: a list of code columns maps the field code only")
                if field == "gender" and spec.values is not None:
                    wrong = sorted(set(spec.values.values()) - set(GENDERS))
                    if wrong:
                        raise ValueError(f"{where}: values must map to {', '.join(GENDERS)}")
                if field == "code_system" and spec.value is not None and spec.value not in CODE_SYSTEMS:
                    raise ValueError(f"{where}: value must be one of {', '.join(CODE_SYSTEMS)}")
            names = table.source_columns_mapped()
            if len(set(names)) != len(names):
                raise ValueError(f"table {name}: a source column is mapped twice")
            code = table.fields.get("code")
            if code is not None:
                systems = [c.system for c in code.codes] if code.codes is not None else []
                ways = [w for w, ok in (("a code_system field", "code_system" in table.fields),
                                        ("the table's code_system", table.code_system is not None),
                                        ("a system on each code column", bool(systems) and all(systems)))
                        if ok]
                if len(ways) != 1 or (systems and any(systems) and not all(systems)):
                    raise ValueError(f"table {name}: the code system comes from exactly one of a code_system "
                                     "field, the table's code_system, or a system on every code column"
                                     + (f" (here: {', '.join(ways)})" if ways else ""))
            elif table.code_system is not None:
                raise ValueError(f"table {name}: code_system without a code field")
        return tables

    @model_validator(mode="after")
    def _kind(self) -> Dialect:
        for name, table in self.tables.items():
            for field, spec in table.fields.items():
                for c in spec.codes or ():
                    if c.lookup is not None and c.lookup not in self.lookups:
                        raise ValueError(f"table {name}, field {field}: lookup {c.lookup!r} is not declared "
                                         f"under lookups ({', '.join(self.lookups) or 'none'})")
        if self.deleted is None and self.delivers is None and not (
                self.kind == "sql" and all(t.snapshot or t.deleted for t in self.tables.values())):
            raise ValueError("without a deletion column (deleted), say what a delivery holds: delivers: snapshot "
                             "(full extracts) or delivers: changes (incremental, no deletions)")
        if self.deleted is not None and self.delivers is not None:
            raise ValueError("delivers applies only without a deletion column: remove one")
        if self.kind == "flatfile":
            self._flatfile()
        else:
            self._sql()
        return self

    def _flatfile(self) -> None:
        for name, table in self.tables.items():
            if not table.source:
                raise ValueError(f"table {name}: source (the file name token) is required")
            for f in ("query", "watermark"):
                if getattr(table, f) is not None:
                    raise ValueError(f"table {name}: {f} is for sql dialects")
            if table.snapshot:
                raise ValueError(f"table {name}: snapshot is for sql dialects (flat files: delivers)")
        name = self.file_name or ""
        if "{source}" not in name:
            raise ValueError("file_name must contain {source}")
        unknown = set(re.findall(r"\{([^}]*)\}", name)) - {"practice", "source", "stamp"}
        if unknown:
            raise ValueError(f"file_name: unknown part(s) {', '.join(sorted(unknown))} (use {{practice}}, "
                             "{source}, {stamp})")
        stamp_from = self.stamp_source
        if stamp_from in ("name", None) and "{stamp}" not in name:
            raise ValueError("file_name has no {stamp}: set stamp_from to folder or modified")
        if stamp_from != "name" and "{stamp}" in name:
            raise ValueError(f"stamp_from {stamp_from}: remove {{stamp}} from file_name")
        if stamp_from == "folder":
            parts = set(re.findall(r"\{([^}]*)\}", self.folder_name))
            if "stamp" not in parts or parts - {"stamp", "practice"} or "/" in self.folder_name:
                raise ValueError("folder_name must contain {stamp} (and may contain {practice}), no /")
        for field in ("schema_name", "practice_column", "updated_column"):
            if getattr(self, field) is not None:
                raise ValueError(f"{field.removesuffix('_name')} is for sql dialects")

    def _sql(self) -> None:
        if self.file_name or self.stamp_from or self.lookups:
            raise ValueError("file_name, stamp_from and lookups are for flatfile dialects")
        if self.delivers == "snapshot":
            raise ValueError("a sql dialect marks snapshot tables with snapshot: true, not delivers")
        for field in ("schema_name", "practice_column", "updated_column"):
            value = getattr(self, field)
            if value is not None and not _IDENT_RE.match(value):
                raise ValueError(f"{field.removesuffix('_name')}: not a plain SQL name")
        for name, table in self.tables.items():
            where = f"table {name}"
            if (table.source is None) == (table.query is None):
                raise ValueError(f"{where}: give source (a table or view) or query, not both")
            if table.source is not None:
                if not _IDENT_RE.match(table.source):
                    raise ValueError(f"{where}: source: not a plain SQL name")
                if self.schema_name is None:
                    raise ValueError(f"{where}: a source table needs the dialect's schema")
            if table.query is not None:
                check_query(table.query, where)
            if table.snapshot:
                if table.watermark is not None:
                    raise ValueError(f"{where}: a snapshot table has no watermark")
            elif not (table.watermark or self.updated_column):
                raise ValueError(f"{where}: needs a watermark column (watermark, or the dialect's updated_column), "
                                 "or snapshot: true")
            elif self.deleted_of(name) is None and self.delivers != "changes":
                raise ValueError(f"{where}: needs a deletion column (deleted, here or for the dialect), "
                                 "snapshot: true, or the dialect's delivers: changes")
            for field, spec in table.fields.items():
                if spec.year is not None or spec.values is not None or any(c.lookup for c in spec.codes or ()):
                    raise ValueError(f"{where}, field {field}: compute it in the table's query (year, values and "
                                     "lookups are for flat files)")
            idents = [c for c in self.columns(name)] + [c for c in (self.watermark_of(name),) if c]
            bad = [i for i in idents if not _IDENT_RE.match(i)]
            if bad:
                raise ValueError(f"{where}: not plain SQL names: {', '.join(bad[:5])}")

    # --- what the adapters ask --------------------------------------------------------------------------------

    @property
    def stamp_source(self) -> str | None:
        if self.stamp_from:
            return self.stamp_from
        return "name" if "{stamp}" in (self.file_name or "") else None

    def deleted_of(self, table: str) -> Deleted | None:
        t = self.tables[table]
        if t.snapshot:
            return t.deleted
        return t.deleted or self.deleted

    def watermark_of(self, table: str) -> str | None:
        t = self.tables[table]
        return None if t.snapshot else (t.watermark or self.updated_column)

    def columns(self, table: str) -> list[str]:
        """Source columns of a table in delivery order: the mapped fields, then the deletion flag."""
        deleted = self.deleted_of(table)
        return [*self.tables[table].source_columns_mapped(), *([deleted.column] if deleted else [])]

    def _stamp_regex(self) -> str:
        parts = re.split("(" + "|".join(re.escape(d) for d in STAMP_DIRECTIVES) + ")", self.stamp_format)
        return "".join(STAMP_DIRECTIVES.get(p, re.escape(p)) for p in parts)

    def _regex(self, template: str) -> re.Pattern:
        parts = re.split(r"(\{practice\}|\{source\}|\{stamp\})", template)
        groups = {"{practice}": r"(?P<practice>[A-Z][0-9]{5})", "{source}": r"(?P<source>[A-Za-z0-9_]+?)",
                  "{stamp}": f"(?P<stamp>{self._stamp_regex()})"}
        return re.compile("^" + "".join(groups.get(p, re.escape(p)) for p in parts) + "$")

    @property
    def file_regex(self) -> re.Pattern:
        return self._regex(self.file_name or "")

    @property
    def folder_regex(self) -> re.Pattern:
        return self._regex(self.folder_name)

    def stamp_of(self, text: str) -> str:
        """A stamp as written (stamp_format) to the 14 digits YYYYMMDDhhmmss deliveries are ordered by."""
        import datetime as dt

        return dt.datetime.strptime(text, self.stamp_format).strftime("%Y%m%d%H%M%S")

    def write_stamp(self, stamp: str) -> str:
        import datetime as dt

        return dt.datetime.strptime(stamp, "%Y%m%d%H%M%S").strftime(self.stamp_format)

    def source_table(self, source: str) -> str | None:
        return next((t for t, m in self.tables.items() if m.source == source), None)

    def lookup_path(self, name: str) -> Path:
        """The file of a look-up, which must lie inside the dialect file's folder."""
        base = (self.source_file or DIALECTS_DIR / "x.yaml").parent.resolve()
        path = (base / self.lookups[name].file).resolve()
        if not path.is_relative_to(base):
            raise ConfigError(f"lookup {name}: the file must be inside the dialect's folder {base}",
                              file=str(self.source_file))
        return path


def check_query(query: str, where: str) -> None:
    """A SQL query template: one SELECT, parameters only %(practice)s and %(watermark)s (a literal % is %%)."""
    text = query.strip().rstrip(";")
    if not re.match(r"(?is)^\s*(select|with)\b", text) or ";" in text:
        raise ValueError(f"{where}: query must be one SELECT (or WITH ... SELECT) statement")
    for m in _PLACEHOLDER_RE.finditer(text):
        if m.group(0) == "%":
            raise ValueError(f"{where}: query: write a literal % as %%")
        if m.group(1) is not None and m.group(1) not in QUERY_PARAMETERS:
            raise ValueError(f"{where}: query: unknown parameter {m.group(0)} (known: "
                             + ", ".join(f"%({p})s" for p in QUERY_PARAMETERS) + ")")


# --- finding dialects ------------------------------------------------------------------------------------------

def dialect_files(dirs: tuple[Path, ...] | None = None) -> dict[str, Path]:
    """Every dialect by name (its file's stem), from the shipped folder and GPDATA_DIALECTS_DIR; a name in both
    is an error naming both files."""
    found: dict[str, Path] = {}
    for folder in dirs if dirs is not None else dialects_dirs():
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.yaml")):
            if path.stem in found:
                raise ConfigError(f"dialect {path.stem} is defined twice, also in {found[path.stem]}: rename one",
                                  file=str(path))
            found[path.stem] = path
    return found


def resolve_dialect(name_or_path: str, dirs: tuple[Path, ...] | None = None) -> Path:
    """The file of a dialect named by name, or by path (``.yaml``) inside one of the dialect folders: relative
    paths are from GPDATA_DIALECTS_DIR (else the shipped folder). A path elsewhere is refused."""
    dirs = dirs if dirs is not None else dialects_dirs()
    if name_or_path.endswith((".yaml", ".yml")):
        path = Path(name_or_path)
        if not path.is_absolute():
            path = dirs[0] / path
        path = path.resolve()
        roots = [d.resolve() for d in dirs]
        if not any(path.is_relative_to(r) for r in roots):
            raise ConfigError(f"dialect file {name_or_path} is outside the dialect folders "
                              f"({', '.join(map(str, roots))}): set GPDATA_DIALECTS_DIR to its folder")
        if not path.exists():
            raise ConfigError(f"dialect file {path} does not exist")
        return path
    if not _NAME_RE.match(name_or_path or ""):
        raise ConfigError(f"unknown dialect {name_or_path!r}")
    files = dialect_files(dirs)
    if name_or_path not in files:
        raise ConfigError(f"unknown dialect {name_or_path!r} (known: {', '.join(files)})")
    return files[name_or_path]


@cache
def _load(path: Path, mtime_ns: int) -> Dialect:
    from gpdata.config import load_model

    return load_model(path, Dialect, "dialect")


def load_dialect(name_or_path: str) -> Dialect:
    """A dialect by name (from the dialect folders) or by path to its YAML file under one of them."""
    path = resolve_dialect(name_or_path)
    return _load(path, path.stat().st_mtime_ns)


def known_dialects() -> list[str]:
    return sorted(dialect_files())
