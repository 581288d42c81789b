"""One measurement in its own process, so its peak memory (RSS) and CPU time are its own.

    python -m bench.worker '{"kind": "pipeline", "input": "...", "ods": "A12345", "fmt": "emis_csv", "work": "..."}'

Kinds: ``limit`` (read the delivery, write the same records to zstd Parquet, nothing else), ``pipeline``
(gpdata's extract, quality gate and commit, with each stage's seconds) and ``naive`` (bench.naive). Prints one
JSON line: counts and timings only, never a record or an identifier.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

# A 60,000-patient practice's observations file is about 700 MB, over the default limit of 256 MB
# (include/config/limits.yaml): such a delivery would be refused unread. The bench raises the limit.
MAX_FILE_BYTES = 4 << 30


def _usage() -> dict:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_seconds": ru.ru_utime + ru.ru_stime, "peak_rss_mib": ru.ru_maxrss / 1024}  # Linux: KiB


def _environment(work: Path, input_home: Path) -> None:
    """A fresh GPDATA_HOME per measurement (store, state, staging), with the input's reference files."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copytree(input_home / "reference", work / "reference")
    os.environ.update({"GPDATA_HOME": str(work), "GPDATA_MASTER_KEY_FILE": str(work / "dev.key"),
                       "GPDATA_INBOX_ROOT": str(input_home),  # the generated deliveries, outside the fresh home
                       "GX_ANALYTICS_ENABLED": "False", "GPDATA_MAX_FILE_BYTES": str(MAX_FILE_BYTES)})
    for name in ("GPDATA_MASTER_KEY", "GPDATA_STORE", "GPDATA_MODE"):
        os.environ.pop(name, None)
    from gpdata.privacy.keys import write_development_key

    write_development_key(work / "dev.key")


# ---------------------------------------------------------------------------------------------------- limit
def limit_flatfile(folder: Path, out: Path) -> int:
    """pyarrow's CSV reader (one thread, as a practice task gets one core) straight to zstd Parquet."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from gpdata.ingest.dialects import load_dialect

    rows = 0
    for path in sorted(folder.iterdir()):
        dialect = load_dialect("tpp_pipe" if path.suffix == ".txt" else "emis_csv")
        with open(path, "rb") as fh:
            header = fh.readline().decode().rstrip("\r\n").split(dialect.delimiter)
        table = pacsv.read_csv(path, read_options=pacsv.ReadOptions(use_threads=False, block_size=1 << 24),
                               parse_options=pacsv.ParseOptions(delimiter=dialect.delimiter,
                                                                newlines_in_values=True),
                               convert_options=pacsv.ConvertOptions(column_types={h: pa.string() for h in header}))
        pq.write_table(table, out / (path.stem + ".parquet"), compression="zstd")
        rows += table.num_rows
    return rows


def limit_fhir(folder: Path, out: Path) -> int:
    """The fastest way found here to get FHIR bundles into Arrow: each bundle decoded with orjson, its resources
    grouped by type and converted with ``pa.Table.from_pylist`` (types inferred, nesting kept), then zstd
    Parquet per resource type. Nothing is flattened, renamed or checked."""
    import orjson
    import pyarrow as pa
    import pyarrow.parquet as pq

    by_type: dict[str, list] = {}
    rows = 0
    for path in sorted(folder.glob("*.json")):
        for entry in orjson.loads(path.read_bytes())["entry"]:
            res = entry["resource"]
            by_type.setdefault(res["resourceType"], []).append(res)
            rows += 1
    for rtype, resources in by_type.items():
        pq.write_table(pa.Table.from_pylist(resources), out / f"{rtype}.parquet", compression="zstd")
    return rows


def run_limit(folder: Path, fmt: str, work: Path) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    import pyarrow  # noqa: F401  (imports are not the limit's work)

    t0 = time.perf_counter()
    rows = limit_fhir(folder, work) if fmt == "fhir" else limit_flatfile(folder, work)
    seconds = time.perf_counter() - t0
    shutil.rmtree(work, ignore_errors=True)
    return {"rows": rows, "seconds": seconds}


# ------------------------------------------------------------------------------------------------- pipeline
def run_pipeline(input_home: Path, ods: str, fmt: str, work: Path) -> dict:
    from bench.inputs import PracticeSet

    _environment(work, input_home)
    from gpdata import pipeline, settings

    feed = PracticeSet(input_home, (ods,), 0, 0, (fmt,), 0).feed(ods, fmt)
    cfg = settings.load()
    c0 = time.perf_counter()
    import deltalake  # noqa: F401  (the cold start of a task process, reported on its own)
    import great_expectations  # noqa: F401

    cold = time.perf_counter() - c0
    run_id = "bench"
    t0 = time.perf_counter()
    extracted = pipeline.extract(feed, cfg, run_id)
    t1 = time.perf_counter()
    checked = pipeline.check(feed, cfg, run_id)
    t2 = time.perf_counter()
    committed = pipeline.commit(feed, cfg, run_id)
    t3 = time.perf_counter()
    seconds = {**extracted["seconds"], **checked["seconds"], **committed["seconds"]}
    result = {
        "rows": sum(extracted["records_read"].values()),
        "records_read": extracted["records_read"],
        "committed_rows": sum(committed["committed_rows"].values()),
        "quarantined_rows": sum(sum(r.values()) for r in checked["quality"]["quarantined"].values()),
        "expectations": checked["quality"]["expectations"],
        "seconds": t3 - t0,
        "cold_start_seconds": cold,
        "stage_wall": {"extract": t1 - t0, "check": t2 - t1, "commit": t3 - t2},
        "stage_seconds": seconds,
    }
    shutil.rmtree(work, ignore_errors=True)
    return result


def execute(spec: dict) -> dict:
    """One measurement (``kind`` limit, pipeline or naive) in this process."""
    kind, work = spec["kind"], Path(spec["work"])
    if spec.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    if kind == "limit":
        result = run_limit(Path(spec["folder"]), spec["fmt"], work)
    elif kind == "pipeline":
        result = run_pipeline(Path(spec["input"]), spec["ods"], spec["fmt"], work)
    elif kind == "naive":
        from bench.naive import run_naive

        _environment(work, Path(spec["input"]))
        result = run_naive(Path(spec["folder"]), spec["ods"], spec["fmt"], work)
        shutil.rmtree(work, ignore_errors=True)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    if spec.get("profile"):
        import io
        import pstats

        profiler.disable()
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("cumulative").print_stats(60)
        stats.sort_stats("tottime").print_stats(30)
        Path(spec["profile"]).write_text(text.getvalue())
    return {**result, **_usage()}


def main(argv: list[str]) -> int:
    print(json.dumps(execute(json.loads(argv[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
