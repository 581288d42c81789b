"""A real worker process for the fault-injection tests: runs one pipeline stage, as an Airflow task would.

    python -m tests.reliability.worker STAGE ODS RUN_ID [--pause-at POINT] [--go FILE] [--fsize BYTES]

STAGE is ``extract``, ``check`` or ``commit`` (``gpdata.pipeline``), or ``delta-write`` (one big synthetic
batch through ``store.replace_partition``: a long Delta write to kill midway). Settings come from the
environment (GPDATA_HOME, ...), like a task's.

``--pause-at`` stops the worker at a fault point and writes ``<GPDATA_HOME>/.paused`` (the parent then
kills it with SIGKILL, or lets it go on by creating the ``--go`` file):

* ``deidentify``: extraction, with the delivery read and identifiable data in memory;
* ``staging-write``: extraction, with two of the staged Parquet files written and the rest not;
* ``table:<name>``: the commit, before the practice's partition of table <name> is replaced.

``--fsize`` limits the size of any file the worker writes (RLIMIT_FSIZE, SIGXFSZ ignored so a write
fails with EFBIG instead of killing the process): a disk that fills during a write.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import sys
import time
from pathlib import Path

PAUSED = ".paused"
BIG_ROWS = 400_000


def _pause(go: str | None) -> None:
    Path(os.environ["GPDATA_HOME"], PAUSED).write_text(str(os.getpid()))
    while go is None or not Path(go).exists():
        time.sleep(0.02)


def _install_pause(point: str, go: str | None) -> None:
    from gpdata.privacy import deid

    if point == "deidentify":
        real_deid = deid.deidentify_people  # every extraction de-identifies the people first

        def paused_deidentify(*args, **kwargs):
            _pause(go)
            return real_deid(*args, **kwargs)

        deid.deidentify_people = paused_deidentify
    elif point == "staging-write":
        import pyarrow.parquet as pq

        real_write, calls = pq.write_table, []

        def paused_write(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                _pause(go)
            return real_write(*args, **kwargs)

        pq.write_table = paused_write
    elif point.startswith("table:"):
        from gpdata.store import tables  # commit_practice calls the module's own replace_partition

        name, real_replace = point.split(":", 1)[1], tables.replace_partition

        def paused_replace(root, table, practice, batch):
            if table == name:
                _pause(go)
            return real_replace(root, table, practice, batch)

        tables.replace_partition = paused_replace
    else:
        raise SystemExit(f"unknown pause point {point}")


def big_batch(practice: str, value: float, n: int = BIG_ROWS):
    """A large observations batch for one practice (deterministic: the same arguments, the same rows)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from gpdata.model import CURATED

    ids = pc.utf8_lpad(pa.array(np.arange(n).astype(str)), 64, "0")
    pids = pc.utf8_lpad(pa.array((np.arange(n) % 997).astype(str)), 64, "0")
    return pa.table({
        "practice_code": pa.array([practice] * n), "key_version": pa.array(["v1"] * n), "record_id": ids,
        "patient_pid": pids, "practitioner_pid": pa.nulls(n, pa.string()),
        "event_date": pa.array(19000 + np.arange(n) % 3000, pa.int32()).cast(pa.date32()),
        "category": pa.array(["observation"] * n), "code_system": pa.array(["snomed"] * n),
        "code": pa.array(["60621009"] * n), "value": pa.array(np.full(n, value)),
        "unit": pa.array(["kg/m2"] * n), "panel_id": pa.nulls(n, pa.string())}).cast(CURATED["observations"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("stage", choices=["extract", "check", "commit", "delta-write"])
    parser.add_argument("ods")
    parser.add_argument("run_id")
    parser.add_argument("--pause-at")
    parser.add_argument("--go")
    parser.add_argument("--fsize", type=int)
    parser.add_argument("--value", type=float, default=1.0)
    args = parser.parse_args(argv)

    from gpdata import pipeline, settings, store
    from gpdata.ingest.feeds import load_feed

    cfg = settings.load()
    if args.pause_at:
        _install_pause(args.pause_at, args.go)
    if args.stage == "delta-write":
        batch = big_batch(args.ods, args.value)
    else:
        feed = load_feed(cfg.feeds_dir / f"{args.ods}.yaml")
    if args.fsize is not None:  # everything imported and read: only the stage's own writes are limited
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.fsize, args.fsize))
    if args.stage == "delta-write":
        version = store.replace_partition(cfg.store, "observations", args.ods, batch)
        print(f"version {version}")
    else:
        # extract re-extracts (force): the homes are committed, and an unforced run would skip the practice
        kwargs = {"force": True} if args.stage == "extract" else {}
        counts = getattr(pipeline, args.stage)(feed, cfg, args.run_id, **kwargs)
        print(f"{args.stage} done: {sorted(counts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
