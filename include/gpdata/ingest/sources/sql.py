"""A supplier's reporting database (PostgreSQL), read with watermark queries.

One read-only REPEATABLE READ transaction per run gives every table the same snapshot. Each table is read
with ``COPY (SELECT ...) TO STDOUT`` into Arrow: rows of the practice whose ``updated_column`` is later than
the last committed watermark (less an overlap, since a transaction that started earlier may commit later; a
re-read row is simply merged again). Identifiers are quoted by psycopg, never formatted into SQL by hand.
The connection string comes from the feed's Airflow connection (``AIRFLOW_CONN_<ID>`` outside Airflow).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import re

import pyarrow as pa
import pyarrow.csv as pacsv

from gpdata.errors import ConfigError, SourceError
from gpdata.ingest.dialects import Dialect
from gpdata.ingest.sources.convert import to_canonical
from gpdata.model import CANONICAL, TABLES

SQL_DATETIME = "%Y-%m-%dT%H:%M:%S"
WATERMARK_OVERLAP = dt.timedelta(minutes=10)


def connection_uri(conn_id: str) -> str:
    """The URI of an Airflow connection given by environment (AIRFLOW_CONN_<ID>), as Airflow itself reads it.
    In Airflow tasks the operator resolves the connection through Airflow instead."""
    value = os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}")
    if not value:
        raise ConfigError(f"no connection {conn_id!r}: define it in Airflow or as AIRFLOW_CONN_{conn_id.upper()}")
    if value.lstrip().startswith("{"):
        import json

        doc = json.loads(value)
        host, port, schema = doc.get("host", "localhost"), doc.get("port", 5432), doc.get("schema", "")
        auth = doc.get("login", "") + (f":{doc['password']}" if doc.get("password") else "")
        value = f"postgresql://{auth + '@' if auth else ''}{host}:{port}/{schema}"
    return value.replace("postgres://", "postgresql://", 1)


def _dsn(uri: str) -> str:
    return uri.replace("postgresql+psycopg2://", "postgresql://", 1)


def _from(dialect: Dialect, table: str, practice: str, start: dt.datetime | None):
    """The table's rows as a FROM item: the schema's table or view, or the dialect's query with its named
    parameters bound (client-side, as literals: COPY takes no server-side parameters)."""
    from psycopg import sql

    t = dialect.tables[table]
    if t.query is None:
        return sql.SQL("{} AS q").format(sql.Identifier(dialect.schema_name, t.source))
    values = {"practice": sql.Literal(practice),
              "watermark": sql.Literal(start) if start else sql.SQL("'-infinity'::timestamptz")}
    parts = []
    text = t.query.strip().rstrip(";")
    at = 0
    for m in re.finditer(r"%\((\w+)\)s|%%", text):
        parts.append(sql.SQL(text[at:m.start()]))
        parts.append(values[m.group(1)] if m.group(1) else sql.SQL("%"))
        at = m.end()
    parts.append(sql.SQL(text[at:]))
    return sql.SQL("({}) AS q").format(sql.Composed(parts))


def _start(since: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(since).replace(tzinfo=dt.UTC) - WATERMARK_OVERLAP if since else None


def _select(dialect: Dialect, table: str, practice: str, since: str | None):
    from psycopg import sql

    mapping = dialect.tables[table].fields
    cols = []
    for field, spec in mapping.items():
        ftype = CANONICAL[table].field(field).type
        if spec.value is not None:
            continue  # a constant: nothing read
        ident = sql.Identifier("q", spec.column)
        alias = sql.Identifier(spec.column)
        if pa.types.is_timestamp(ftype):
            cols.append(sql.SQL("to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS') AS {}").format(ident,
                                                                                                      alias))
        elif pa.types.is_date32(ftype):
            cols.append(sql.SQL("to_char({}, 'YYYY-MM-DD') AS {}").format(ident, alias))
        else:
            cols.append(sql.SQL("{}::text AS {}").format(ident, alias))
    flag = dialect.deleted_of(table)
    if flag is not None:
        deleted = sql.Identifier(flag.column)
        cols.append(sql.SQL("CASE WHEN {}::text = {} THEN 'true' ELSE 'false' END AS {}").format(
            sql.Identifier("q", flag.column), sql.Literal(flag.when_deleted), deleted))
    watermark = dialect.watermark_of(table)
    start = _start(since)
    where = []
    if dialect.practice_column:
        where.append(sql.SQL("{} = {}").format(sql.Identifier("q", dialect.practice_column), sql.Literal(practice)))
    order = sql.SQL("")
    if watermark:
        updated = sql.Identifier("q", watermark)
        cols.append(sql.SQL("to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US') AS \"_updated\"")
                    .format(updated))
        if start:
            where.append(sql.SQL("{} > {}").format(updated, sql.Literal(start)))
        order = sql.SQL(" ORDER BY {}").format(updated)
    return sql.SQL("COPY (SELECT {} FROM {}{}{}) TO STDOUT WITH (FORMAT csv, HEADER true)").format(
        sql.SQL(", ").join(cols), _from(dialect, table, practice, start),
        sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""), order)


def _label(dialect: Dialect, table: str) -> str:
    t = dialect.tables[table]
    return f"{dialect.schema_name}.{t.source}" if t.query is None else f"{table} (query)"


def _check_columns(cur, dialect: Dialect, table: str, practice: str) -> None:
    """Every column the dialect reads from the table (or query) is there: else an error naming the table and
    the missing columns, before any row is read."""
    from psycopg import sql

    cur.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(_from(dialect, table, practice, None)))
    present = {d.name for d in cur.description or ()}
    wanted = [*dialect.columns(table), *[c for c in (dialect.watermark_of(table), dialect.practice_column) if c]]
    missing = [c for c in dict.fromkeys(wanted) if c not in present]
    if missing:
        raise SourceError(f"supplier database, table {table} ({_label(dialect, table)}): no column "
                          f"{', '.join(missing)}", practice=practice)


def _database_error(exc, table: str | None, dialect: Dialect, practice: str) -> SourceError:
    """psycopg's error, naming the table and, when the server says, the column; a data error's message can quote
    the offending value, so only its first clause is kept."""
    import psycopg

    diag = getattr(exc, "diag", None)
    primary = (getattr(diag, "message_primary", None) or str(exc)).splitlines()[0] if str(exc) or diag else ""
    if isinstance(exc, psycopg.DataError):
        primary = primary.split(":")[0]
    column = getattr(diag, "column_name", None)
    where = f", table {table} ({_label(dialect, table)})" if table else ""
    return SourceError(f"supplier database{where}: {type(exc).__name__}: {primary}"
                       + (f" (column {column})" if column else ""), practice=practice)


def read_changes(uri: str, dialect: Dialect, practice: str, since: str | None,
                 digests: dict[str, str] | None = None) -> tuple[dict[str, pa.Table], str | None]:
    """Canonical rows (with ``_deleted``) changed since the watermark (all rows for a baseline, and for a table
    the dialect marks a snapshot), and the new watermark: the latest watermark column value read, or the old one
    when nothing changed. Tables the dialect does not carry are empty. ``digests`` gets the SHA-256 of each
    snapshot table's rows as read, so an unchanged snapshot can be told apart."""
    import psycopg

    if dialect.kind != "sql":
        raise ConfigError(f"dialect {dialect.name} is not a sql dialect", practice=practice)
    dialect = dialect.model_copy(update={"date_format": "%Y-%m-%d", "datetime_format": SQL_DATETIME})
    tables: dict[str, pa.Table] = {}
    watermark = since
    current = None
    try:
        with psycopg.connect(_dsn(uri), connect_timeout=15) as conn:
            conn.read_only = True
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            with conn.transaction(), conn.cursor() as cur:
                for name in TABLES:
                    if name not in dialect.tables:
                        tables[name] = to_canonical_empty(name)
                        continue
                    current = name
                    _check_columns(cur, dialect, name, practice)
                    buf = io.BytesIO()
                    with cur.copy(_select(dialect, name, practice, since)) as copy:
                        for block in copy:
                            buf.write(block)
                    buf.seek(0)
                    if digests is not None and dialect.watermark_of(name) is None:
                        digests[name] = hashlib.sha256(buf.getbuffer()).hexdigest()
                    has_watermark = dialect.watermark_of(name) is not None
                    header = dialect.columns(name) + (["_updated"] if has_watermark else [])
                    raw = pacsv.read_csv(buf, convert_options=pacsv.ConvertOptions(
                        column_types={h: pa.string() for h in header}, null_values=[""],
                        strings_can_be_null=True))
                    tables[name] = to_canonical(name, raw, dialect, practice, _label(dialect, name))
                    if raw.num_rows and has_watermark:
                        latest = max(v for v in raw["_updated"].to_pylist() if v)
                        watermark = max(watermark or latest, latest)
                current = None
    except psycopg.Error as exc:
        raise _database_error(exc, current, dialect, practice) from None
    return tables, watermark


def to_canonical_empty(table: str) -> pa.Table:
    from gpdata.ingest.sources.convert import DELETED

    return CANONICAL[table].empty_table().append_column(DELETED, pa.array([], pa.bool_()))
