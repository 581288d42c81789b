"""The generator's other export formats: a practice's records as a supplier flat-file delivery or loaded
into a supplier database, and increments (amendments, deletions, new records, a new type 1 opt-out) for
testing incremental extraction.

Every format starts from the canonical tables the FHIR adapter reads from the generated bundles, so the same
practice delivered in any format carries the same records (and ``PracticeTruth`` holds for all of them).
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from gpdata.arrowutil import isin
from gpdata.ingest.dialects import Dialect, load_dialect
from gpdata.ingest.sources.fhir import read_bundles
from gpdata.ingest.sources.flatfile import write_delivery
from gpdata.model import CANONICAL, POSITION, TABLES

FLATFILE_DIALECTS = ("emis_csv", "tpp_pipe", "research_tab")
DISSENT = ("snomed", "827241000000103")
FIRST_STAMP = "20260101020000"


def canonical_of(fhir_folder: Path, practice: str) -> dict[str, pa.Table]:
    return read_bundles(fhir_folder, practice)


def extra_columns(dialect: Dialect, stamp: str) -> dict[str, str] | None:
    """Columns beyond the canonical model, for a dialect that ignores unmapped columns (as a research database's
    export carries): a practice number and the date the export was made."""
    if dialect.unmapped_columns != "ignore":
        return None
    return {"pracid": "1", "extractdate": f"{stamp[6:8]}/{stamp[4:6]}/{stamp[:4]}"}


def export_flatfile(fhir_folder: Path, out: Path, practice: str, dialect: str, stamp: str = FIRST_STAMP) -> list[Path]:
    """A practice's records as one delivery in any flat-file dialect (shipped, or from GPDATA_DIALECTS_DIR)."""
    d = load_dialect(dialect)
    return write_delivery(canonical_of(fhir_folder, practice), out, practice, d, stamp,
                          extra_columns=extra_columns(d, stamp))


@dataclass
class Increment:
    """One delivery's worth of change, and what it should do to the store."""

    changed: dict[str, pa.Table]              # amended and new rows (canonical)
    deleted: dict[str, pa.Table]              # rows the source deletes (canonical)
    amended_ids: dict[str, list[str]] = field(default_factory=dict)
    new_ids: dict[str, list[str]] = field(default_factory=dict)
    deleted_ids: dict[str, list[str]] = field(default_factory=dict)
    new_dissent_patient: str | None = None    # source id of a patient who opts out in this delivery


def _unique_rows(table: pa.Table) -> np.ndarray:
    ids = table["source_id"].to_pylist()
    counts: dict = {}
    for i in ids:
        counts[i] = counts.get(i, 0) + 1
    return np.array([n for n, i in enumerate(ids) if i is not None and counts[i] == 1], dtype=np.int64)


def make_increment(tables: dict[str, pa.Table], *, seed: int = 7, fraction: float = 0.03,
                   when: dt.date = dt.date(2025, 12, 30), dissent: bool = True) -> Increment:
    """Amend the values of some observations, delete some observations and medications, add new
    observations, and (``dissent``) record a type 1 dissent for one patient."""
    rng = np.random.default_rng(seed)
    inc = Increment(changed={n: CANONICAL[n].empty_table() for n in TABLES},
                    deleted={n: CANONICAL[n].empty_table() for n in TABLES})
    obs = tables["observations"]
    # type 1 codes are never amended, deleted or copied as new records: the one new dissent is made below
    dissent_codes = {"827241000000103", "9Nu0.", "XaZ89", "827261000000102", "9Nu1.", "XaZ8A"}
    type1_row = isin(obs["code"], pa.array(sorted(dissent_codes)))
    type1_row = type1_row.to_numpy(zero_copy_only=False)
    rows = _unique_rows(obs)
    rows = rows[~type1_row[rows]]
    rng.shuffle(rows)
    k = max(1, int(len(rows) * fraction))
    with_value = [r for r in rows[: 4 * k] if obs["value"][int(r)].is_valid][:k]
    amended = obs.take(pa.array(with_value, pa.int64()))
    amended = amended.set_column(amended.schema.get_field_index("value"), "value",
                                 pc.add(amended["value"], pa.scalar(1.0)))
    gone = obs.take(pa.array(rows[4 * k: 5 * k], pa.int64()))
    new = obs.take(pa.array(rows[5 * k: 6 * k], pa.int64()))
    new_ids = [f"inc-{seed}-{i:06d}" for i in range(new.num_rows)]
    new = new.set_column(new.schema.get_field_index("source_id"), "source_id", pa.array(new_ids, pa.string()))
    new = new.set_column(new.schema.get_field_index("event_date"), "event_date",
                         pa.array([when] * new.num_rows, pa.date32()))
    # a patient with a valid NHS number and no opt-out code so far dissents in this delivery
    coded = set(obs.filter(pc.is_in(obs["code"], pa.array(sorted(dissent_codes))))["patient_ref"].to_pylist())
    patients = tables["patients"]
    from gpdata.privacy import nhsnumber

    valid = nhsnumber.is_valid(nhsnumber.normalise(patients["nhs_number"].combine_chunks())).to_pylist()
    candidates = [p for p, ok in zip(patients["source_id"].to_pylist(), valid, strict=True)
                  if ok and p not in coded and p is not None]
    dissent_rows = []
    if candidates and dissent:
        who = candidates[int(rng.integers(len(candidates)))]
        inc.new_dissent_patient = who
        template = {f.name: None for f in CANONICAL["observations"]}
        template.update(source_id=f"inc-{seed}-dissent", patient_ref=who, event_date=when, code_system=DISSENT[0],
                        code=DISSENT[1], category="observation", _src_file="increment", _src_entry=0)
        dissent_rows.append(template)
    dissent = pa.Table.from_pylist(dissent_rows, schema=CANONICAL["observations"])
    inc.changed["observations"] = pa.concat_tables([amended, new, dissent])
    meds = tables["medications"]
    mrows = _unique_rows(meds)
    rng.shuffle(mrows)
    inc.deleted["observations"] = gone
    inc.deleted["medications"] = meds.take(pa.array(mrows[:k], pa.int64()))
    inc.amended_ids = {"observations": amended["source_id"].to_pylist()}
    inc.new_ids = {"observations": new_ids}
    inc.deleted_ids = {"observations": gone["source_id"].to_pylist(),
                       "medications": inc.deleted["medications"]["source_id"].to_pylist()}
    return inc


def apply_increment(tables: dict[str, pa.Table], inc: Increment) -> dict[str, pa.Table]:
    """The full state after the increment (what a baseline delivered afterwards would hold)."""
    out = {}
    for name in TABLES:
        table = tables[name]
        drop = pa.concat_arrays([inc.changed[name]["source_id"].combine_chunks(),
                                 inc.deleted[name]["source_id"].combine_chunks()]).cast(pa.string())
        kept = table.filter(pc.invert(isin(table["source_id"], drop)))
        out[name] = pa.concat_tables([kept, inc.changed[name]])
    return out


# --- a supplier database ---------------------------------------------------------------------------------

def _pg_type(t: pa.DataType) -> str:
    if pa.types.is_date32(t):
        return "date"
    if pa.types.is_timestamp(t):
        return "timestamptz"
    if pa.types.is_floating(t):
        return "double precision"
    if pa.types.is_integer(t):
        return "integer"
    return "text"


def create_supplier_schema(conn, dialect: Dialect) -> None:
    from psycopg import sql

    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(dialect.schema_name)))
        for name in TABLES:
            m = dialect.tables[name]
            cols = [sql.SQL("{} text NOT NULL").format(sql.Identifier(dialect.practice_column))]
            cols += [sql.SQL("{} " + _pg_type(CANONICAL[name].field(f).type)).format(sql.Identifier(c))
                     for f, c in m.columns.items()]
            cols += [sql.SQL("{} boolean NOT NULL DEFAULT false").format(sql.Identifier(dialect.deleted.column)),
                     sql.SQL("{} timestamptz NOT NULL").format(sql.Identifier(dialect.updated_column))]
            table = sql.Identifier(dialect.schema_name, m.source)
            cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(table, sql.SQL(", ").join(cols)))
            cur.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({}, {})").format(
                sql.Identifier(f"{m.source}_changes"), table, sql.Identifier(dialect.practice_column),
                sql.Identifier(dialect.updated_column)))


def _copy_rows(cur, dialect: Dialect, name: str, practice: str, table: pa.Table, deleted: bool,
               at: dt.datetime) -> None:
    from psycopg import sql

    m = dialect.tables[name]
    cols = {dialect.practice_column: pa.array([practice] * table.num_rows, pa.string())}
    for f, c in m.columns.items():
        column = table[f]
        if pa.types.is_timestamp(column.type):
            column = pc.strftime(column, format="%Y-%m-%dT%H:%M:%S+00:00")
        cols[c] = column
    cols[dialect.deleted.column] = pa.array([deleted] * table.num_rows, pa.bool_())
    cols[dialect.updated_column] = pa.array([at.isoformat()] * table.num_rows, pa.string())
    buf = io.BytesIO()
    pacsv.write_csv(pa.table(cols), buf)
    query = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv, HEADER true)").format(
        sql.Identifier(dialect.schema_name, m.source), sql.SQL(", ").join(sql.Identifier(c) for c in cols))
    with cur.copy(query) as copy:
        copy.write(buf.getvalue())


def load_supplier_db(uri: str, practice: str, tables: dict[str, pa.Table], *, dialect: str = "supplier_sql",
                     at: dt.datetime | None = None) -> None:
    """Load a practice's records into a supplier database (replacing any rows of the practice)."""
    import psycopg
    from psycopg import sql

    d = load_dialect(dialect)
    at = at or dt.datetime(2026, 1, 1, 2, 0, tzinfo=dt.UTC)
    with psycopg.connect(uri) as conn:
        create_supplier_schema(conn, d)
        with conn.cursor() as cur:
            for name in TABLES:
                cur.execute(sql.SQL("DELETE FROM {} WHERE {} = %s").format(
                    sql.Identifier(d.schema_name, d.tables[name].source), sql.Identifier(d.practice_column)),
                    (practice,))
                _copy_rows(cur, d, name, practice, tables[name], False, at)


def apply_to_supplier_db(uri: str, practice: str, inc: Increment, *, dialect: str = "supplier_sql",
                         at: dt.datetime | None = None) -> None:
    """Apply an increment as a supplier system would: amended rows rewritten, deleted rows flagged, each with
    a new last-updated time."""
    import psycopg
    from psycopg import sql

    d = load_dialect(dialect)
    at = at or dt.datetime.now(dt.UTC)
    with psycopg.connect(uri) as conn, conn.cursor() as cur:
        for name in TABLES:
            m = d.tables[name]
            ids = [*inc.changed[name]["source_id"].to_pylist(), *inc.deleted[name]["source_id"].to_pylist()]
            if ids:
                cur.execute(sql.SQL("DELETE FROM {} WHERE {} = %s AND {} = ANY(%s)").format(
                    sql.Identifier(d.schema_name, m.source), sql.Identifier(d.practice_column),
                    sql.Identifier(m.columns["source_id"])), (practice, ids))
            _copy_rows(cur, d, name, practice, inc.changed[name], False, at)
            _copy_rows(cur, d, name, practice, inc.deleted[name], True, at)


__all__ = ["FLATFILE_DIALECTS", "POSITION", "Increment", "apply_increment", "apply_to_supplier_db", "canonical_of",
           "export_flatfile", "extra_columns", "load_supplier_db", "make_increment"]
