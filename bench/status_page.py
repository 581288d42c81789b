"""The GP data page's server-side time with a national number of practices (issue 24).

Writes 6,500 synthetic practices' feeds and run manifests (``latest.json``, ``committed.json``) directly (no
pipeline run), with their rows of the status index, on the local store and on an S3 store (moto's server, as
in the tests), then times what the page's route does: ``status.overview`` (default query: the summary, the
practices needing attention, the first page of the table) and the render of the HTML. The page runs in a
long-lived web server process, so the figure is the median of ``REPEATS`` calls after one warm-up call (which
surveys the feed folder and, on S3, lists the per-practice objects: a process does that at most once a minute;
the first, cold call is reported on its own, as ``cold_seconds``). Counts and timings only.

    python -m bench --only status
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
N_PRACTICES = 6500
REPEATS = 5
FAILED_EVERY = 650   # 10 failures among 6,500
LATE_EVERY = 1300    # 5 practices whose last delivery is two days old


def _ods(i: int) -> str:
    return f"{chr(ord('A') + i // 100000)}{i % 100000:05d}"


def _manifests(i: int, now: dt.datetime) -> tuple[dict, dict]:
    from gpdata.model import TABLES

    ods = _ods(i)
    age = dt.timedelta(days=2) if i % LATE_EVERY == 7 else dt.timedelta(hours=3)
    finished = (now - age).isoformat(timespec="seconds")
    committed = {
        "practice": ods, "run_id": "scheduled__1", "status": "committed", "finished_at": finished,
        "patients_read": 9500 + i % 1000, "type1_optout": {"patients_excluded": 300 + i % 50},
        "quality": {"quarantined": {"observations": {"future_date": i % 7, "invalid_code": i % 3}},
                    "rows_in": {t: 10000 for t in TABLES}, "passed": True, "failures": [],
                    "expectations": {"evaluated": 40, "failed": 0}},
        "committed_rows": {t: 9000 + i % 100 for t in TABLES},
        "seconds": {"extract": 20.0 + i % 10, "quality": 8.0, "commit": 3.0},
    }
    latest = committed
    if i % FAILED_EVERY == 3:
        latest = {"practice": ods, "run_id": "scheduled__2", "status": "failed", "finished_at": now.isoformat(),
                  "error": {"stage": "extract", "cause": "delivery folder /data/inbox/x does not exist"}}
    return latest, committed


def _write(cfg, n: int, now: dt.datetime, put=None) -> None:
    """Feeds, manifests and the status index of ``n`` practices (the index written once, as a rebuild would).
    ``put(path, doc)`` writes one JSON object (default ``storage.write_json_atomic``); not timed."""
    import json

    from gpdata import storage
    from gpdata.store import statusindex

    put = put or storage.write_json_atomic
    cfg.feeds_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        ods = _ods(i)
        (cfg.feeds_dir / f"{ods}.yaml").write_text(
            f"ods_code: {ods}\nname: Practice {i}\nsupplier: {('EMIS', 'TPP', 'synthetic')[i % 3]}\n"
            f"format: flatfile\ndialect: emis_csv\nmode: incremental\nlocation: /data/inbox/{ods}\n"
            f"schedule: '@daily'\n")
    root = storage.root(cfg.manifests)
    objects = statusindex.status_root(cfg.manifests) / "practices"

    def one(i: int) -> tuple[str, dict]:
        ods = _ods(i)
        latest, committed = _manifests(i, now)
        put(root / ods / "latest.json", latest)
        put(root / ods / "committed.json", committed)
        row = statusindex.row_from(ods, latest, committed, statusindex.add_point([], committed))
        put(objects / f"{ods}.json", json.loads(json.dumps({"practice": ods, "row": row})))
        return ods, row

    with cf.ThreadPoolExecutor(4) as pool:
        rows = dict(pool.map(one, range(n)))
    # As statusindex._put does, in bulk: the index with the stamps of every practice's object.
    stamps = statusindex._stamps(objects)
    statusindex._write_index_rows(cfg.manifests, {o: statusindex._encode(r, stamps[o]) for o, r in rows.items()})


def _time_page(cfg, now: dt.datetime) -> dict:
    from gpdata.ops import status

    sys.path.insert(0, str(REPO / "plugins"))
    from gpdata_ui.ui_app import render_page

    def once() -> tuple[float, dict]:
        t0 = time.perf_counter()
        doc = status.overview(cfg, now=now)
        render_page(doc)
        return time.perf_counter() - t0, doc

    cold, doc = once()
    times = [once()[0] for _ in range(REPEATS)]
    return {"seconds": round(statistics.median(times), 3), "cold_seconds": round(cold, 3),
            "max_seconds": round(max(times), 3), "practices": doc["summary"]["practices"],
            "by_state": doc["summary"]["by_state"]}


def _settings(home: Path, store: str | None = None, extra: dict | None = None):
    from gpdata import settings

    env = {**os.environ, "GPDATA_HOME": str(home), "GPDATA_FEEDS_DIR": str(home / "feeds"), **(extra or {})}
    env.pop("GPDATA_STORE", None)
    if store:
        env["GPDATA_STORE"] = store
    return settings.load(env)


def measure_local(n: int = N_PRACTICES) -> dict:
    now = dt.datetime.now(dt.UTC)
    with tempfile.TemporaryDirectory(prefix="gpdata-bench-status-") as tmp:
        cfg = _settings(Path(tmp))
        t0 = time.perf_counter()
        _write(cfg, n, now)
        written = time.perf_counter() - t0
        out = _time_page(cfg, now)
        # What one more commit costs the index (one row rewritten in a 6,500-row index, under the lock).
        from gpdata import store

        latest, committed = _manifests(1, now)
        t0 = time.perf_counter()
        store.write_manifest(cfg.manifests, _ods(1), "scheduled__3", committed)
        out["index_update_seconds"] = round(time.perf_counter() - t0, 3)
    return {**out, "setup_seconds": round(written, 1)}


def measure_s3(n: int = N_PRACTICES) -> dict:
    from tests.support.s3 import create_bucket, moto_server

    now = dt.datetime.now(dt.UTC)
    aws = {"AWS_ACCESS_KEY_ID": "gpdata-bench-key", "AWS_SECRET_ACCESS_KEY": "gpdata-bench-secret",
           "AWS_REGION": "eu-west-2"}
    with moto_server() as endpoint, tempfile.TemporaryDirectory(prefix="gpdata-bench-status-s3-") as tmp:
        aws["AWS_ENDPOINT_URL"] = endpoint
        client = create_bucket(endpoint, "gpdata-bench", aws["AWS_ACCESS_KEY_ID"],
                               aws["AWS_SECRET_ACCESS_KEY"])  # boto3 also makes the untimed bulk writes
        saved = {k: os.environ.get(k) for k in aws}
        os.environ.update(aws)
        try:
            cfg = _settings(Path(tmp), "s3://gpdata-bench/store", aws)

            def put(path, doc):
                bucket, _, key = str(path).removeprefix("s3://").partition("/")
                client.put_object(Bucket=bucket, Key=key, Body=json.dumps(doc).encode())

            t0 = time.perf_counter()
            _write(cfg, n, now, put)
            written = time.perf_counter() - t0
            out = _time_page(cfg, now)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return {**out, "setup_seconds": round(written, 1)}


def measure(n: int = N_PRACTICES) -> dict:
    local, s3 = measure_local(n), measure_s3(n)
    return {f"status_page_seconds_{n}_practices": local["seconds"],
            f"status_page_seconds_{n}_practices_s3": s3["seconds"],
            "status_page": {"local": local, "s3": s3, "repeats": REPEATS, "note": "median of warm calls of "
                            "status.overview + render (the page's server-side work); cold: the first call"}}
