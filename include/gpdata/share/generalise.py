"""Generalisation of an extract to the precision its project is approved for (coarsest unless declared).

* ``birth_month`` -> ``birth_month`` (month), ``birth_year`` (year) or ``birth_band`` (5-year band, "1980-1984");
* ``lsoa_code`` -> ``lsoa_code``, ``msoa_code`` or ``lad_code`` (local authority) through the area lookup;
* ``ethnic_category`` -> the category (A-Z) or ``ethnic_group`` (White, Mixed, Asian, Black, Other, Not stated);
* date columns -> the day, the first of the month or of the year, or shifted by a per-patient, per-project
  offset (keyed HMAC of the patient pseudonym: the same patient moves by the same days in every table, so
  intervals survive, and no two projects share offsets);
* codes held by fewer than ``rare_codes.min_patients`` patients -> kept, grouped to the cohort code list that
  holds them, or dropped.

Functions over Arrow tables; the patient pseudonym is still the curated one here (re-keyed afterwards).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from gpdata.arrowutil import isin, read_lookup
from gpdata.errors import ConfigError
from gpdata.privacy.deid import hmac_hex
from gpdata.share.projects import DATE_COLUMNS, Project

SHIFT_DAYS = 182  # a shifted date moves by -182..+182 days
BIRTH_COLUMN = {"month": "birth_month", "year": "birth_year", "band5": "birth_band"}
AREA_COLUMN = {"lsoa": "lsoa_code", "msoa": "msoa_code", "local_authority": "lad_code"}
# NHS ethnic category letters -> the five census groups and "not stated" (NHS Data Model and Dictionary).
ETHNIC_GROUPS = {**dict.fromkeys("ABC", "White"), **dict.fromkeys("DEFG", "Mixed"), **dict.fromkeys("HJKL", "Asian"),
                 **dict.fromkeys("MNP", "Black"), **dict.fromkeys("RS", "Other"), "Z": "Not stated"}


@dataclass(frozen=True)
class AreaLookup:
    lsoa: pa.Array
    msoa: pa.Array
    lad: pa.Array

    @classmethod
    def load(cls, path: Path) -> AreaLookup:
        cols = read_lookup(path, ("lsoa_code", "msoa_code", "lad_code"), "area lookup",
                           ": it is needed to generalise lsoa_code")
        return cls(cols["lsoa_code"], cols["msoa_code"], cols["lad_code"])

    def to(self, level: str, lsoas: pa.Array) -> pa.Array:
        if level == "lsoa":
            return lsoas
        target = self.msoa if level == "msoa" else self.lad
        return pc.take(target, pc.index_in(lsoas, value_set=self.lsoa))


def birth(values: pa.Array, level: str) -> pa.Array:
    if level == "month":
        return values
    year = pc.year(values)
    if level == "year":
        return year.cast(pa.int16())
    start = pc.multiply(pc.divide(year, 5), 5)
    return pc.binary_join_element_wise(start.cast(pa.string()), pc.add(start, 4).cast(pa.string()), "-")


def offsets(key: bytes, pids: pa.Array) -> pa.Array:
    """Days (int32) each patient's dates move by: -SHIFT_DAYS..+SHIFT_DAYS from a keyed HMAC of the pseudonym."""
    digests = hmac_hex(key, pids)
    head = pc.utf8_slice_codeunits(digests, 0, 8)
    as_int = pa.array([None if h is None else int(h, 16) for h in head.to_pylist()], pa.int64())
    return pc.subtract(_mod(as_int, 2 * SHIFT_DAYS + 1), SHIFT_DAYS).cast(pa.int32())


def _mod(values: pa.Array, m: int) -> pa.Array:
    return pc.subtract(values, pc.multiply(pc.divide(values, m), m))


def date(values: pa.Array, level: str, shift: pa.Array | None = None) -> pa.Array:
    if level == "day":
        return values
    typ = values.type
    if level == "shift":
        if shift is None:
            raise ValueError("a shifted date needs the patient offsets")
        if pa.types.is_timestamp(typ):
            return pc.add(values, pc.multiply(shift.cast(pa.int64()), 86_400_000_000).cast(pa.duration("us")))
        days = pc.add(values.cast(pa.int32()), shift)
        return days.cast(pa.date32())
    unit = "month" if level == "month" else "year"
    if pa.types.is_timestamp(typ):
        return pc.floor_temporal(values, unit=unit)
    return pc.floor_temporal(values.cast(pa.timestamp("s")), unit=unit).cast(pa.date32())


@dataclass
class Generalised:
    tables: dict[str, pa.Table]
    columns: dict[str, list[str]]                 # per table, the columns as delivered (renamed)
    rare: dict = field(default_factory=dict)      # rare codes: count, action, rows affected


def apply(project: Project, tables: dict[str, pa.Table], *, areas: Path | None, shift_key: bytes,
          code_lists: dict[str, pa.Array] | None = None) -> Generalised:
    """Generalise the selected ``tables`` (approved columns only, curated pseudonyms) to the project's precision.
    ``code_lists``: label -> codes of the project's cohort lists (for grouping rare codes)."""
    lookup = None
    out, columns = {}, {}
    shifts = None
    if any(project.level(c) == "shift" for t in tables.values() for c in t.column_names if c in DATE_COLUMNS):
        pids = pc.unique(pa.concat_arrays([t["patient_pid"].combine_chunks().cast(pa.string())
                                           for t in tables.values() if "patient_pid" in t.column_names]))
        shifts = (pids, offsets(shift_key, pids))
    for name, table in tables.items():
        for column in list(table.column_names):
            i = table.schema.get_field_index(column)
            if column == "birth_month":
                level = project.level(column)
                table = table.set_column(i, BIRTH_COLUMN[level], birth(table[column].combine_chunks(), level))
            elif column == "lsoa_code":
                level = project.level(column)
                if level != "lsoa" and lookup is None:
                    if areas is None:
                        raise ConfigError("an area lookup is needed to generalise lsoa_code")
                    lookup = AreaLookup.load(areas)
                values = table[column].combine_chunks()
                table = table.set_column(i, AREA_COLUMN[level], values if level == "lsoa" else lookup.to(level, values))
            elif column == "ethnic_category" and project.level(column) == "group":
                keys = pa.array(list(ETHNIC_GROUPS), pa.string())
                groups = pc.take(pa.array(list(ETHNIC_GROUPS.values()), pa.string()),
                                 pc.index_in(table[column], value_set=keys))
                table = table.set_column(i, "ethnic_group", groups)
            elif column in DATE_COLUMNS:
                level = project.level(column)
                shift = None
                if level == "shift":
                    shift = pc.take(shifts[1], pc.index_in(table["patient_pid"], value_set=shifts[0]))
                table = table.set_column(i, column, date(table[column].combine_chunks(), level, shift))
        out[name] = table
        columns[name] = table.column_names
    rare = _rare_codes(project, out, code_lists or {})
    return Generalised(out, columns, rare)


def _rare_codes(project: Project, tables: dict[str, pa.Table], code_lists: dict[str, pa.Array]) -> dict:
    """Apply the project's rare-code rule in place; returns what it did (counts only)."""
    rule = project.rare_codes
    found = {"min_patients": rule.min_patients, "action": rule.action, "rare_codes": 0, "rows": 0}
    for name, table in list(tables.items()):
        if "code" not in table.column_names or "patient_pid" not in table.column_names or not table.num_rows:
            continue
        held = table.group_by("code").aggregate([("patient_pid", "count_distinct")])
        rare = held.filter(pc.less(held["patient_pid_count_distinct"], rule.min_patients))["code"]
        hit = isin(table["code"], rare)
        found["rare_codes"] += len(rare)
        found["rows"] += pc.sum(hit).as_py() or 0
        if rule.action == "keep" or not len(rare):
            continue
        if rule.action == "group":
            label = pa.nulls(table.num_rows, pa.string())
            for name_, codes in code_lists.items():
                label = pc.coalesce(label, pc.if_else(isin(table["code"], codes),
                                                      pa.scalar(f"group:{name_}"), pa.scalar(None, pa.string())))
            grouped = pc.if_else(hit, label, table["code"])
            table = table.set_column(table.schema.get_field_index("code"), "code", grouped)
            if "code_system" in table.column_names:
                table = table.set_column(table.schema.get_field_index("code_system"), "code_system",
                                         pc.if_else(pc.and_(hit, pc.is_valid(label)), pa.scalar("group"),
                                                    table["code_system"]))
            hit = pc.and_(hit, pc.is_null(label))  # rare and in no list: dropped
        tables[name] = table.filter(pc.invert(hit))
    return found
