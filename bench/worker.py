"""One measurement in its own process, so its peak memory (RSS) and CPU time are its own.

    python -m bench.worker '{"kind": "pipeline", "input": "...", "ods": "A12345", "fmt": "emis_csv", "work": "..."}'

Kinds: ``limit`` (read the delivery, write the same records to zstd Parquet, nothing else; for FHIR every
candidate of FHIR_LIMITS, the fastest being the limit), ``pipeline``
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


def _reset_peak_rss() -> bool:
    """Start this process's peak RSS (VmHWM) again from its current RSS (Linux >= 4.0: ``5`` to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_since_reset() -> float:
    """VmHWM in MiB: the peak RSS since the last ``_reset_peak_rss`` (or since the process began)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return _usage()["peak_rss_mib"]


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


def _write_by_type(tables: dict, out: Path) -> dict[str, int]:
    """Each resource type's table to ``out/<type>.parquet`` (zstd); rows written per type."""
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    for rtype, table in tables.items():
        pq.write_table(table, out / f"{rtype}.parquet", compression="zstd")
    return {rtype: table.num_rows for rtype, table in tables.items()}


def fhir_orjson(folder: Path, out: Path) -> dict[str, int]:
    """Each bundle decoded with orjson, its resources grouped by type and converted with ``pa.Table.from_pylist``
    (types inferred, nesting kept), then zstd Parquet per resource type. Nothing is flattened, renamed or checked."""
    import orjson
    import pyarrow as pa

    by_type: dict[str, list] = {}
    for path in sorted(folder.glob("*.json")):
        for entry in orjson.loads(path.read_bytes())["entry"]:
            res = entry["resource"]
            by_type.setdefault(res["resourceType"], []).append(res)
    return _write_by_type({rtype: pa.Table.from_pylist(rs) for rtype, rs in by_type.items()}, out)


def _msgspec_types():
    """msgspec Structs for the Bundle envelope: resources as dicts, or as ``msgspec.Raw`` (the resource's bytes
    in the file, not decoded) with a struct holding only ``resourceType`` to sort them by type."""
    import msgspec

    dict_entry = msgspec.defstruct("DictEntry", [("resource", dict)])
    raw_entry = msgspec.defstruct("RawEntry", [("resource", msgspec.Raw)])
    return (msgspec.defstruct("DictBundle", [("entry", list[dict_entry])]),
            msgspec.defstruct("RawBundle", [("entry", list[raw_entry])]),
            msgspec.defstruct("Head", [("resourceType", str)]))


def fhir_msgspec(folder: Path, out: Path) -> dict[str, int]:
    """msgspec with typed Structs for the Bundle and its entries, each resource decoded to a dict (``msgspec.Raw``
    decoded to dicts afterwards was no faster), grouped by type, ``pa.Table.from_pylist``, zstd Parquet per type. Typed
    Structs for the resources themselves were tried and not kept: they decode faster, but Arrow takes no
    Struct, and turning them back into builtins or columns costs more than it saves (docs/performance.md)."""
    import msgspec
    import pyarrow as pa

    decoder = msgspec.json.Decoder(_msgspec_types()[0])
    by_type: dict[str, list] = {}
    for path in sorted(folder.glob("*.json")):
        for entry in decoder.decode(path.read_bytes()).entry:
            res = entry.resource
            by_type.setdefault(res["resourceType"], []).append(res)
    return _write_by_type({rtype: pa.Table.from_pylist(rs) for rtype, rs in by_type.items()}, out)


FHIR_JSON_BLOCK_BYTES = 1 << 26  # pyarrow's JSON reader: bytes per block (16 and 256 MiB: no faster here)


def fhir_pyarrow_json(folder: Path, out: Path) -> dict[str, int]:
    """pyarrow's JSON reader (one thread), which reads only line-delimited JSON, so the bundles are first turned
    into NDJSON, one per resource type, and that conversion is timed as part of this limit (a pipeline gets
    bundles, not NDJSON): msgspec splits each bundle into its resources' raw bytes (``msgspec.Raw``, not decoded;
    a struct holding only ``resourceType`` sorts them by type), the bytes are joined with newlines, and
    ``pyarrow.json.read_json`` decodes them into Arrow (types inferred, nesting kept; if a bundle is written over
    several lines, told that a resource may span lines). Then zstd Parquet per type."""
    import io

    import msgspec
    import pyarrow.json as pajson

    _, raw_bundle, head = _msgspec_types()
    bundle_decoder, head_decoder = msgspec.json.Decoder(raw_bundle), msgspec.json.Decoder(head)
    by_type: dict[str, list] = {}
    multiline = False
    for path in sorted(folder.glob("*.json")):
        data = path.read_bytes()
        multiline = multiline or b"\n" in data
        for entry in bundle_decoder.decode(data).entry:
            by_type.setdefault(head_decoder.decode(entry.resource).resourceType, []).append(entry.resource)
    options = pajson.ReadOptions(use_threads=False, block_size=FHIR_JSON_BLOCK_BYTES)
    parse = pajson.ParseOptions(newlines_in_values=multiline)
    return _write_by_type({rtype: pajson.read_json(io.BytesIO(b"\n".join(raws)), read_options=options,
                                                   parse_options=parse) for rtype, raws in by_type.items()}, out)


FHIR_LIMITS = {"orjson": fhir_orjson, "msgspec": fhir_msgspec, "pyarrow_json": fhir_pyarrow_json}


def fhir_limits(folder: Path, work: Path) -> dict[str, dict]:
    """Every FHIR candidate limit in turn on the same bundles, in this process: name -> rows, seconds (wall
    clock, what the limit is) and CPU seconds (steadier than the wall clock on a shared machine).

    The files are read once before the clocks start (so no candidate pays for the disk and the others for the
    page cache), and Python's cyclic garbage collector is paused while each candidate runs (millions of small
    dicts otherwise set off repeated full collections, which any bulk decoder can avoid; it matters only for
    the two candidates that build Python objects)."""
    import gc

    for path in folder.glob("*.json"):
        path.read_bytes()
    found = {}
    for name, candidate in FHIR_LIMITS.items():
        gc.collect()
        gc.disable()
        try:
            t0, c0 = time.perf_counter(), time.process_time()
            rows = candidate(folder, work / name)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        finally:
            gc.enable()
        shutil.rmtree(work / name, ignore_errors=True)
        found[name] = {"rows": sum(rows.values()), "seconds": seconds, "cpu_seconds": cpu}
    return found


def run_limit(folder: Path, fmt: str, work: Path) -> dict:
    """The limit of one format. FHIR: every candidate of FHIR_LIMITS, the fastest being the limit (``rows`` and
    ``seconds`` are its own, ``candidates`` has them all); peak RSS is then the largest candidate's."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    import pyarrow  # noqa: F401  (imports are not the limit's work)

    if fmt == "fhir":
        import msgspec  # noqa: F401
        import orjson  # noqa: F401
        import pyarrow.json  # noqa: F401
        import pyarrow.parquet  # noqa: F401

        candidates = fhir_limits(folder, work)
        fastest = min(candidates, key=lambda name: candidates[name]["seconds"])
        shutil.rmtree(work, ignore_errors=True)
        return {**candidates[fastest], "limit": fastest, "candidates": candidates}
    t0 = time.perf_counter()
    rows = limit_flatfile(folder, work)
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
    # Each stage is an Airflow task of its own process; here they run in one, and each stage's peak RSS is measured
    # from the RSS it starts with (what the stages before it left, the imports included): an upper bound on the
    # task's own peak, where the stage starts from the imports alone.
    stage_peak = {}
    before = _peak_rss_since_reset()  # a reset also lowers getrusage's peak: the process's is the max of these
    resettable = _reset_peak_rss()
    t0 = time.perf_counter()
    extracted = pipeline.extract(feed, cfg, run_id)
    stage_peak["extract"] = _peak_rss_since_reset()
    _reset_peak_rss()
    t1 = time.perf_counter()
    checked = pipeline.check(feed, cfg, run_id)
    stage_peak["check"] = _peak_rss_since_reset()
    _reset_peak_rss()
    t2 = time.perf_counter()
    committed = pipeline.commit(feed, cfg, run_id)
    t3 = time.perf_counter()
    stage_peak["commit"] = _peak_rss_since_reset()
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
        # without clear_refs (not Linux), every stage's figure is the process's peak so far: still an upper bound
        "stage_peak_rss_mib": stage_peak, "stage_peak_rss_resettable": resettable,
        "peak_rss_mib": max(before, *stage_peak.values()),
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
    return {**_usage(), **result}  # the pipeline's peak RSS is its own (run_pipeline resets the kernel's)


def main(argv: list[str]) -> int:
    print(json.dumps(execute(json.loads(argv[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
