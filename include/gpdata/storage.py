"""Where the curated store lives: a local folder, or an S3 URI (``s3://bucket/prefix``) on any S3 API.

``root(value)`` gives a local ``Path`` for a folder, and for an ``s3://`` URI a ``StorePath``: a pathlib-like
object (universal_pathlib) over pyarrow's S3 filesystem, so the store's code joins, globs, reads and writes
the small JSON files under the root the same way for both. Delta tables get the same credentials through
``delta_options`` (delta-rs does its own I/O).

Credentials and endpoint come from the environment when the root is made: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL`` (an S3-compatible store such as
MinIO) and ``AWS_REGION``. Without keys, both pyarrow and delta-rs fall back to the AWS default chain
(instance profile, web identity). The Airflow layer may fill these from an Airflow connection
(``GPDATA_STORE_CONN_ID``, see plugins/gpdata_airflow/store_connection.py); this module imports no Airflow.

Concurrent writers: delta-rs 1.x commits to S3 with conditional writes (put-if-absent, ``If-None-Match``),
so two writers racing for the same table version cannot overwrite each other's commit; the loser retries
or fails with a commit conflict. ``delta_options`` asks for it explicitly (``conditional_put``) and never
sets ``AWS_S3_ALLOW_UNSAFE_RENAME``. The object store must support conditional writes (AWS S3 since 2024,
MinIO, and moto's server do).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from upath.implementations.cloud import S3Path

from gpdata.errors import GpdataError

REMOTE_SCHEMES = ("s3://",)
_ENV = {"key": "AWS_ACCESS_KEY_ID", "secret": "AWS_SECRET_ACCESS_KEY", "token": "AWS_SESSION_TOKEN",
        "endpoint_url": "AWS_ENDPOINT_URL", "region": "AWS_REGION"}


class StorePath(S3Path):
    """An ``s3://`` path whose file operations go through pyarrow's S3 filesystem (no s3fs needed)."""

    _protocol_dispatch = False

    @classmethod
    def _fs_factory(cls, urlpath: str, protocol: str, storage_options: Any):
        from fsspec.implementations.arrow import ArrowFSWrapper
        from pyarrow.fs import S3FileSystem

        opts = dict(storage_options)
        kwargs: dict[str, Any] = {"region": opts.get("region") or "us-east-1"}
        if opts.get("key"):
            kwargs.update(access_key=opts["key"], secret_key=opts.get("secret"), session_token=opts.get("token"))
        if opts.get("endpoint_url"):
            endpoint = urlsplit(opts["endpoint_url"])
            kwargs.update(endpoint_override=endpoint.netloc, scheme=endpoint.scheme or "https")
        return ArrowFSWrapper(S3FileSystem(**kwargs))


# Every file gpdata writes is for its owner and group only (0640, folders 0750): the pipeline, the CLI and the
# dissemination tasks run under this umask. The public register is the one exception (share.register).
UMASK = 0o027


def restrict_umask() -> int:
    """Tighten the process umask to at least ``UMASK`` (never loosen a stricter one); returns the old one."""
    old = os.umask(UMASK)
    os.umask(old | UMASK)
    return old


def is_remote(path: Any) -> bool:
    return isinstance(path, StorePath) or str(path).startswith(REMOTE_SCHEMES)


def s3_options(env: dict[str, str] | None = None) -> dict[str, str]:
    """Credentials, endpoint and region for S3 from the environment (only those that are set)."""
    env = os.environ if env is None else env
    out = {name: env[var] for name, var in _ENV.items() if env.get(var)}
    if "endpoint_url" not in out and env.get("AWS_ENDPOINT_URL_S3"):
        out["endpoint_url"] = env["AWS_ENDPOINT_URL_S3"]
    if "region" not in out and env.get("AWS_DEFAULT_REGION"):
        out["region"] = env["AWS_DEFAULT_REGION"]
    return out


def root(value: Any, env: dict[str, str] | None = None) -> Path | StorePath:
    """A store location as a path object: ``Path`` for a folder, ``StorePath`` for an ``s3://`` URI
    (credentials from ``env``, default the process environment). A path object is returned as it is."""
    if isinstance(value, StorePath):
        return value
    text = str(value)
    if "://" in text and not text.startswith(REMOTE_SCHEMES):
        raise GpdataError(f"store location {text!r}: only local folders and s3:// URIs are supported")
    if text.startswith(REMOTE_SCHEMES):
        if not urlsplit(text).netloc:
            raise GpdataError(f"store location {text!r}: no bucket named")
        return StorePath(text.rstrip("/"), protocol="s3", **s3_options(env))
    return Path(value)


def uri(path: Any) -> str:
    return str(path)


def delta_options(path: Any) -> dict[str, str] | None:
    """deltalake ``storage_options`` for a table under the store (None for a local folder)."""
    if not isinstance(path, StorePath):
        return None
    opts = dict(path.storage_options)
    out = {"conditional_put": "etag"}  # put-if-absent commits: safe with concurrent writers
    out.update({_ENV[k]: v for k, v in opts.items() if k in _ENV and v})
    if opts.get("endpoint_url", "").startswith("http://"):
        out["AWS_ALLOW_HTTP"] = "true"
    return out


def delta_table(path: Any, version: int | None = None):
    """The Delta table at ``path`` (a local folder or under an s3:// root) at its newest committed version, or at
    ``version`` (time travel: always opened afresh, never cached).

    Opening a table replays its log (a few ms locally, growing with the commits since the last checkpoint; a
    LIST and several GETs on S3), and one commit of a practice asks for the same ten tables about 66 times. So
    the newest-version handle is kept per process and thread (``_handles``) and brought up to date on each call;
    the comment on Delta table handles below says why every call still sees the newest committed version. The handle is
    shared: a later call for the same table moves the same object on, so pin a version with ``version=``,
    never with ``load_as_version`` on a handle from here.
    """
    from deltalake import DeltaTable

    if version is None and _cacheable(path):
        return _cached_table(path)
    return DeltaTable(uri(path), version=version, storage_options=delta_options(path))


def write_delta(path: Any, data, **kwargs) -> None:
    """``write_deltalake`` into the table at ``path``. An existing table is written through its handle from
    ``delta_table`` (brought up to date first), which is what ``write_deltalake`` would open itself from the URI:
    the same write, conflict checks and commit, without a second replay of the log."""
    from deltalake import write_deltalake
    from deltalake.exceptions import TableNotFoundError

    target: Any = uri(path)
    if _cacheable(path):
        with contextlib.suppress(TableNotFoundError):  # a new table: created from the URI
            target = _cached_table(path)
    write_deltalake(target, data, storage_options=delta_options(path), **kwargs)


# ------------------------------------------------------------------------------------- Delta table handles
# Why a cached handle always shows the newest committed version: a Delta table's versions are the files
# _delta_log/<version, 20 digits>.json, each written once (put-if-absent on S3, rename locally) and never
# changed, and version N+1 exists before any later one. On every call, for a handle last seen at version S and
# now at V (V > S when this process wrote through it: write, merge, delete and vacuum move a handle on in place):
# - S's commit file must still be there with the same content (sha256), so the folder holds the same table, not
#   one deleted and made again, nor a copy restored over it (the content names data files by random UUIDs);
# - if V+1's commit file exists, ``update_incremental`` reads the newer commits, as a fresh open would;
# - the digest of the version reached is recorded for the next call (reading it fails if V's file is gone).
# Any doubt (a file missing or changed, an I/O error, a handle older than _MAX_AGE) opens the table afresh, so
# no handle outlives a clean-up of old log files (30 days by default). One case is not seen: a copy restored
# over the table between two calls that has history identical up to S and has already passed V; a restore under
# live writers loses their commits anyway (never restore a table while the pipeline runs).
# Writers are unchanged: delta-rs commits against the newest version with its conflict checks, as before.
_MAX_AGE = 600.0  # seconds a handle is reused before the table is opened afresh
_MAX_HANDLES = 64  # tables kept per thread; the oldest is dropped first (a store has ten, releases add copies)
_LOCAL = threading.local()


def _cacheable(path: Any) -> bool:
    """A local folder or a StorePath (an ``s3://`` string carries no credentials: opened as it is, uncached)."""
    return isinstance(path, StorePath) or not is_remote(path)


def _handles() -> dict:
    """This thread's handles (none are shared between threads, or inherited by a forked process)."""
    if getattr(_LOCAL, "pid", None) != os.getpid():
        _LOCAL.pid, _LOCAL.handles = os.getpid(), {}
    return _LOCAL.handles


def forget_delta_tables() -> None:
    """Drop this thread's cached handles (the next call of ``delta_table`` opens each table afresh)."""
    _handles().clear()


def _commit_file(path: Any, version: int) -> Any:
    return path / "_delta_log" / f"{version:020d}.json"


def _digest(path: Any, version: int) -> bytes:
    return hashlib.sha256(_commit_file(path, version).read_bytes()).digest()


def _cached_table(path: Any):
    """The newest committed version of the table at ``path`` (which exists; else TableNotFoundError)."""
    import time

    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError

    path = path if isinstance(path, StorePath) else Path(os.path.abspath(path))
    options = delta_options(path)
    key = (uri(path), tuple(sorted((options or {}).items())))
    handles = _handles()
    entry = handles.pop(key, None)
    if entry is not None:
        table, seen, digest, opened = entry
        try:
            if time.monotonic() - opened < _MAX_AGE and _digest(path, seen) == digest:
                if _commit_file(path, table.version() + 1).exists():
                    table.update_incremental()
                if table.version() != seen:
                    seen, digest = table.version(), _digest(path, table.version())
                handles[key] = (table, seen, digest, opened)
                return table
        except (OSError, DeltaError):
            pass  # unreadable, gone or not readable by delta-rs: open it afresh below
    table = DeltaTable(uri(path), storage_options=options)
    version = table.version()
    try:
        handles[key] = (table, version, _digest(path, version), time.monotonic())
    except OSError:
        return table  # its commit file is not readable (cleaned up?): used once, not cached
    while len(handles) > _MAX_HANDLES:
        handles.pop(next(iter(handles)))
    return table


def retry_concurrent(action, what: str, attempts: int = 6):
    """Run an idempotent Delta operation (a DELETE, MERGE, partition overwrite or VACUUM) again when another
    writer got in its way: a conflicting commit (``CommitFailedError``) or a data file another writer's vacuum
    removed while this one read (``FileNotFoundError``). Each attempt asks ``delta_table`` anew, so it starts from
    the newest version. Practices commit in parallel and a late opt-out's erasure touches every practice's rows."""
    import logging
    import random
    import time

    from deltalake.exceptions import CommitFailedError

    for attempt in range(1, attempts + 1):
        try:
            return action()
        except (CommitFailedError, FileNotFoundError) as exc:
            if attempt == attempts:
                raise
            logging.getLogger("gpdata.storage").warning(
                "%s: another writer got in the way (%s); trying again (%d of %d)", what, type(exc).__name__,
                attempt + 1, attempts)
            time.sleep(random.uniform(0.1, 0.3) * 2 ** attempt)


def write_bytes_atomic(path: Any, data: bytes) -> None:
    """Readers see the old content or the new, never part: rename locally; one PUT (atomic) on S3."""
    if isinstance(path, StorePath):
        path.write_bytes(data)
        return
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock on a local lock file (made if missing), held for the ``with`` block."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def append_text(path: Any, text: str) -> None:
    """Append to a log file (locally with fsync). On S3, where objects cannot be appended to, the object is
    rewritten whole: callers serialise their appends (one writer at a time)."""
    if isinstance(path, StorePath):
        before = path.read_text() if path.exists() else ""
        path.write_text(before + text)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def write_parquet(path: Any, table) -> None:
    import io

    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    write_bytes_atomic(path, buf.getvalue())


def read_parquet(path: Any):
    import pyarrow.parquet as pq

    if isinstance(path, StorePath):
        with path.open("rb") as fh:
            return pq.read_table(fh)
    return pq.read_table(path)


def json_bytes(doc: dict) -> bytes:
    """A document as the pipeline writes JSON: indented, keys sorted, anything else (a date, a path) as its
    ``str``. By orjson: a practice's quality results and manifests took 12 % of a chunk's CPU with ``json``."""
    import orjson

    return orjson.dumps(doc, default=str, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
                        | orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME
                        | orjson.OPT_PASSTHROUGH_DATACLASS)


def write_json_atomic(path: Path, doc: dict) -> None:
    """Write JSON atomically (by rename locally, one PUT on S3): a reader sees the old file or the new one,
    never half of one."""
    write_bytes_atomic(root(path), json_bytes(doc))


_BY_FILE: dict[tuple[str, str], tuple[tuple[int, ...], Any]] = {}
# A file is known unchanged by its ``file_signature`` only once its change time is this old: the file system's
# clock is coarse, and any change after that carries a later change time (git's rule for racily clean files).
SETTLED_NS = 2_000_000_000


def file_signature(st: os.stat_result) -> tuple[int, ...]:
    """A local file's identity and times (device, inode, size, modification and change times in ns): a
    replacement (a rename over it) or a change in place gives a new change time, which the kernel sets."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def cached_by_file(path: Any, kind: str, build: Any) -> Any:
    """``build()`` of a local file (reference data, configuration), made once per process while the file is
    unchanged (``file_signature``, once settled). A file on an object store is read each time. What ``build``
    returns is shared: never change it."""
    import time

    if isinstance(path, StorePath):
        return build()
    name = str(path)
    try:
        st = os.stat(name)
    except OSError:
        return build()  # it reports the missing file itself
    signature = file_signature(st)
    known = _BY_FILE.get((kind, name))
    if known is not None and known[0] == signature:
        return known[1]
    value = build()
    if st.st_ctime_ns < time.time_ns() - SETTLED_NS:
        _BY_FILE[(kind, name)] = (signature, value)
    return value


def read_json(path: Path) -> dict | None:
    """A JSON document written by write_json_atomic, or None if there is none."""
    path = root(path)
    return json.loads(path.read_text()) if path.exists() else None


# ------------------------------------------------------------------------- A partition's data files, written here
# ``write_deltalake`` reads a RecordBatchReader ahead of its Parquet encoder with no bound (delta-rs 1.6.6: the
# same 594 k-row table written 1, 2, 4 and 8 times over in one write peaked at 607, 748, 876 and 1,026 MiB; written
# here, 404, 445, 451 and 462 MiB: docs/performance.md, Streaming commit), so a
# partition to replace is written here instead: Parquet files by pyarrow, a row group at a time, then committed
# by ``DeltaTable.create_write_transaction`` in one transaction that removes the partition's old files and adds the
# new ones, with the per-file statistics delta-rs would write (``FileStats``). What is held is a row group.
TARGET_FILE_BYTES = 100 * 1024 * 1024  # delta-rs's default target file size: a new file after a row group past it
PARQUET_COMPRESSION = "snappy"  # delta-rs's default codec


def arrow_filesystem(path: Any):
    """pyarrow's filesystem for a table's location and the location's path on it."""
    from pyarrow import fs

    if isinstance(path, StorePath):
        return path.fs.fs, path.path
    return fs.LocalFileSystem(), os.path.abspath(path)


def overwrite_partition(path: Any, column: str, value: str, batches, schema, row_group_rows: int, what: str) -> None:
    """Replace the rows of the Delta table at ``path`` whose partition ``column`` is ``value`` with ``batches``
    (record batches in ``schema``, the table's schema, every row in that partition), in one commit.

    The data files are written first, into the partition's folder under names no other writer uses; then one
    transaction (``create_write_transaction``, mode overwrite with a filter on the partition) removes the
    partition's files and adds them, retried when another writer got in the way (``retry_concurrent``; files are
    not written again). If anything fails, nothing is committed and the files written are deleted unless the
    table's newest version refers to them (a commit whose answer was lost)."""
    fs, base = arrow_filesystem(path)
    written: list[str] = []
    try:
        adds = list(_write_files(fs, base, column, value, batches, schema, row_group_rows, written))
        retry_concurrent(lambda: _commit_overwrite(path, column, value, adds), what)
    except BaseException:
        _discard(path, fs, base, written)
        raise


def _commit_overwrite(path: Any, column: str, value: str, adds: list) -> None:
    table = delta_table(path)
    table.create_write_transaction(adds, "overwrite", table.schema(), partition_by=[column],
                                   partition_filters=[(column, "=", value)])


def _discard(path: Any, fs, base: str, written: list[str]) -> None:
    """Delete the files a failed write made, except any the table's newest version refers to; a file that cannot
    be checked or deleted is left (unreferenced: a VACUUM removes it)."""
    if not written:
        return
    import logging

    try:
        referenced = set(delta_table(path).get_add_actions(flatten=False).column("path").to_pylist())
    except Exception:  # noqa: BLE001 - whatever the cause, the files may be referenced: keep them
        logging.getLogger("gpdata.storage").warning("%d data files of a failed write kept (the table could not be "
                                                    "read to check them)", len(written))
        return
    for name in written:
        if name not in referenced:
            for leftover in (name, f"{name}.tmp"):  # the file, or its local temporary name if it never was whole
                with contextlib.suppress(OSError):
                    fs.delete_file(f"{base}/{leftover}")


def _row_groups(batches, rows: int):
    """Tables of ``rows`` rows (the last may be shorter) from record batches of any size."""
    import pyarrow as pa

    held, count = [], 0
    for batch in batches:
        if not batch.num_rows:
            continue
        held.append(batch)
        count += batch.num_rows
        while count >= rows:
            table = pa.Table.from_batches(held)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            held, count = rest.to_batches(), rest.num_rows
    if count:
        yield pa.Table.from_batches(held)


def _write_files(fs, base: str, column: str, value: str, batches, schema, row_group_rows: int, written: list[str]):
    """Yields a Delta ``AddAction`` for each Parquet file written (the partition column is not in the files, as
    Delta keeps it in the path); each file's name is put in ``written`` before the file is opened. A file left by a
    writer killed midway (``<name>.tmp`` locally, or a whole file never committed) is never referenced: a full
    VACUUM (``full=True``) removes it, as it does the files of a delta-rs write killed midway."""
    import time
    import uuid

    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from deltalake.transaction import AddAction
    from pyarrow.fs import LocalFileSystem

    from gpdata.errors import GpdataError

    folder = f"{column}={value}"
    file_schema = schema.remove(schema.get_field_index(column))
    fs.create_dir(f"{base}/{folder}", recursive=True)
    sink = writer = stats = None
    name = ""

    # A local file is written under a temporary name and renamed when whole (as delta-rs's object store does), so
    # a writer killed midway leaves no partial Parquet file under a data file's name; on S3 an object appears
    # whole when its upload completes.
    staged = ".tmp" if isinstance(fs, LocalFileSystem) else ""

    def close():
        writer.close()
        size = sink.tell()
        sink.close()
        if staged:
            fs.move(f"{base}/{name}{staged}", f"{base}/{name}")
        return AddAction(name, size, {column: value}, int(time.time() * 1000), True, stats.json())

    try:
        for group in _row_groups(batches, row_group_rows):
            if not pc.all(pc.equal(group[column], value)).as_py():
                raise GpdataError(f"rows outside the partition {column} = {value} in a write to it")
            data = group.drop_columns([column])
            if writer is None:
                name = f"{folder}/part-{uuid.uuid4()}-c000.{PARQUET_COMPRESSION}.parquet"
                written.append(name)
                sink = fs.open_output_stream(f"{base}/{name}{staged}")
                writer = pq.ParquetWriter(sink, file_schema, compression=PARQUET_COMPRESSION)
                stats = FileStats(file_schema)
            writer.write_table(data, row_group_size=row_group_rows)
            stats.add(data)
            if sink.tell() >= TARGET_FILE_BYTES:
                yield close()
                writer = None
        if writer is not None:
            yield close()
    except BaseException:
        if writer is not None:  # closed before it is deleted: an S3 upload left open would complete later
            for end in (writer.close, sink.close):
                with contextlib.suppress(Exception):
                    end()
        raise


class FileStats:
    """The statistics Delta keeps for a data file (``numRecords``, ``minValues``, ``maxValues``, ``nullCount``),
    as delta-rs 1.6.6 writes them, gathered a table at a time: min and max of the non-null values (a float's NaN
    ignored, a column of only NaN has none; an infinite bound is written as null, a zero bound as -0.0 / 0.0 as
    Parquet has it), dates as ``YYYY-MM-DD``, timestamps as UTC to the millisecond below (``...T12:30:01.123Z``),
    strings whole. A type not listed here gets a null count only (allowed by Delta; readers then read the file)."""

    def __init__(self, schema) -> None:
        self.schema = schema
        self.rows = 0
        self.nulls = {f.name: 0 for f in schema}
        self.low: dict[str, Any] = {}
        self.high: dict[str, Any] = {}

    @staticmethod
    def _bounded(typ) -> bool:
        import pyarrow as pa

        return (pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_integer(typ)
                or pa.types.is_floating(typ) or pa.types.is_date32(typ)
                or (pa.types.is_timestamp(typ) and typ.tz is not None))  # an instant, kept as UTC

    def add(self, table) -> None:
        import math

        import pyarrow as pa
        import pyarrow.compute as pc

        self.rows += table.num_rows
        for field in self.schema:
            column = table[field.name]
            self.nulls[field.name] += column.null_count
            if not self._bounded(field.type) or column.null_count == len(column):
                continue
            if pa.types.is_timestamp(field.type):
                column = column.cast(pa.int64())  # its count of the unit since the epoch, compared as such
            low, high = (s.as_py() for s in pc.min_max(column).values())
            if low is None or (isinstance(low, float) and math.isnan(low)):
                continue  # only NaN
            if field.name not in self.low or low < self.low[field.name]:
                self.low[field.name] = low
            if field.name not in self.high or high > self.high[field.name]:
                self.high[field.name] = high

    def _json_value(self, name: str, value: Any, low: bool) -> Any:
        import datetime as dt
        import math

        import pyarrow as pa

        typ = self.schema.field(name).type
        if pa.types.is_floating(typ):
            if math.isinf(value):
                return None
            return (-0.0 if low else 0.0) if value == 0 else value
        if pa.types.is_timestamp(typ):
            millis = value * {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[typ.unit] // 10**6
            moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=millis)
            return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        if pa.types.is_date32(typ):
            return value.isoformat()
        return value

    def json(self) -> str:
        return json.dumps({
            "numRecords": self.rows,
            "minValues": {k: self._json_value(k, v, True) for k, v in self.low.items()},
            "maxValues": {k: self._json_value(k, v, False) for k, v in self.high.items()},
            "nullCount": self.nulls}, separators=(",", ":"), ensure_ascii=False)
