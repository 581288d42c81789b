"""A supplier's reporting database (PostgreSQL), read with watermark queries.

One read-only REPEATABLE READ transaction per run gives every table the same snapshot. Each table is read
with ``COPY (SELECT ...) TO STDOUT`` into Arrow: rows of the practice whose ``updated_column`` is later than
the last committed watermark (less an overlap, since a transaction that started earlier may commit later; a
re-read row is simply merged again). Identifiers are quoted by psycopg, never formatted into SQL by hand.
The connection string comes from the feed's Airflow connection (``AIRFLOW_CONN_<ID>`` outside Airflow).
"""

from __future__ import annotations

import datetime as dt
import io
import os

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


def _select(dialect: Dialect, table: str, practice: str, since: str | None):
    from psycopg import sql

    mapping = dialect.tables[table].columns
    cols = []
    for field, column in mapping.items():
        ident = sql.Identifier(column)
        ftype = CANONICAL[table].field(field).type
        if pa.types.is_timestamp(ftype):
            cols.append(sql.SQL("to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS') AS {}").format(ident,
                                                                                                      ident))
        elif pa.types.is_date32(ftype):
            cols.append(sql.SQL("to_char({}, 'YYYY-MM-DD') AS {}").format(ident, ident))
        else:
            cols.append(sql.SQL("{}::text AS {}").format(ident, ident))
    deleted = sql.Identifier(dialect.deleted.column)
    updated = sql.Identifier(dialect.updated_column)
    cols.append(sql.SQL("CASE WHEN {} THEN 'true' ELSE 'false' END AS {}").format(deleted, deleted))
    cols.append(sql.SQL("to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US') AS \"_updated\"")
                .format(updated))
    where = sql.SQL("{} = {}").format(sql.Identifier(dialect.practice_column), sql.Literal(practice))
    if since:
        start = dt.datetime.fromisoformat(since).replace(tzinfo=dt.UTC) - WATERMARK_OVERLAP
        where = sql.SQL("{} AND {} > {}").format(where, updated, sql.Literal(start))
    return sql.SQL("COPY (SELECT {} FROM {}.{} WHERE {} ORDER BY {}) TO STDOUT WITH (FORMAT csv, HEADER true)").format(
        sql.SQL(", ").join(cols), sql.Identifier(dialect.schema_name), sql.Identifier(dialect.tables[table].source),
        where, updated)


def read_changes(uri: str, dialect: Dialect, practice: str,
                 since: str | None) -> tuple[dict[str, pa.Table], str | None]:
    """Canonical rows (with ``_deleted``) changed since the watermark (all rows when ``since`` is None), and the
    new watermark: the latest ``updated_column`` value read, or the old one when nothing changed."""
    import psycopg

    if dialect.kind != "sql":
        raise ConfigError(f"dialect {dialect.name} is not a sql dialect", practice=practice)
    dialect = dialect.model_copy(update={"date_format": "%Y-%m-%d", "datetime_format": SQL_DATETIME})
    tables: dict[str, pa.Table] = {}
    watermark = since
    try:
        with psycopg.connect(_dsn(uri), connect_timeout=15) as conn:
            conn.read_only = True
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            with conn.transaction(), conn.cursor() as cur:
                for name in TABLES:
                    buf = io.BytesIO()
                    with cur.copy(_select(dialect, name, practice, since)) as copy:
                        for block in copy:
                            buf.write(block)
                    buf.seek(0)
                    header = dialect.columns(name) + ["_updated"]
                    raw = pacsv.read_csv(buf, convert_options=pacsv.ConvertOptions(
                        column_types={h: pa.string() for h in header}, null_values=[""],
                        strings_can_be_null=True))
                    tables[name] = to_canonical(name, raw, dialect, practice,
                                                f"{dialect.schema_name}.{dialect.tables[name].source}")
                    if raw.num_rows:
                        latest = max(v for v in raw["_updated"].to_pylist() if v)
                        watermark = max(watermark or latest, latest)
    except psycopg.Error as exc:
        # psycopg messages name tables and columns, not values; keep only the first line
        raise SourceError(f"supplier database: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                          practice=practice) from None
    return tables, watermark
