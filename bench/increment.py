"""A national daily cadence in small: ``n`` practices, each baselined, then each delivering a small incremental
flat-file delivery, run through the code path the extraction DAG takes for them (``pipeline.plan_chunks``, then
``pipeline.run_chunk`` for each chunk, each chunk in a process of its own as a mapped task would run it).

    python -m bench.increment '{"input": "...", "work": "...", "ods": [...], "run_id": "delta"}'   # one chunk

Measured per chunk process: CPU seconds (imports and set-up included: what a task process pays) and peak RSS. The
national figure is projected from the CPU per practice. Generating the practices, their baselines and writing the
increments are never timed.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NATIONAL_PRACTICES = 6500
DIALECT = "emis_csv"
STAMP = "20260102020000"


def _env(work: Path, input_home: Path) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "GPDATA_HOME": str(work), "GPDATA_MASTER_KEY_FILE": str(work / "dev.key"),
            "GPDATA_INBOX_ROOT": str(input_home), "GX_ANALYTICS_ENABLED": "False"}


def use_environment(work: Path, input_home: Path) -> None:
    """This process's environment as a chunk process's (the store under ``work``, deliveries under ``input_home``),
    for the set-up and planning done here."""
    os.environ.update({k: v for k, v in _env(work, input_home).items() if k != "PYTHONPATH"})


def _feeds(input_home: Path, codes: list[str]):
    from gpdata.ingest.feeds import Feed

    return [Feed(ods_code=ods, name="bench", supplier="synthetic", location=str(input_home / "inbox" / ods),
                 format="flatfile", dialect=DIALECT, mode="incremental", max_quarantine_fraction=0.5)
            for ods in codes]


def run_one_chunk(spec: dict) -> dict:
    """In this process: one chunk of practices through ``pipeline.run_chunk``; counts and usage only."""
    from bench.worker import _usage

    t0 = time.perf_counter()
    from gpdata import pipeline, settings

    if spec.get("write_alone"):  # bench.jointwrite's comparison: each practice's increment written alone
        pipeline._write_increments = lambda settings, ready: {}
    out = pipeline.run_chunk(_feeds(Path(spec["input"]), spec["ods"]), settings.load(), spec["run_id"])
    usage = _usage()
    return {"seconds": time.perf_counter() - t0, **usage,
            "status": {ods: r["status"] for ods, r in out.items()},
            # why practices failed, by stage and cause (a file's token and row left out): counts only
            "failures": [f"{r['stage']}: {r['cause'].split(' (file ')[0]}" for r in out.values()
                         if r["status"] == "failed"],
            "rows": sum(sum(r.get("records_read", {}).values()) for r in out.values()),
            # Delta commits per table: one when the chunk's increments were written together
            "writes": len({json.dumps(r.get("table_versions"), sort_keys=True) for r in out.values()
                           if r["status"] == "committed"}),
            # checks after the commits' writes: one per group of commits checked together, one per lone commit
            "commit_checks": round(sum(1 / r.get("commit_checked_with", 1) for r in out.values()
                                       if r["status"] == "committed"))}


def _chunk_process(spec: dict, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.increment", json.dumps(spec)], env=env, capture_output=True,
                         text=True, timeout=3600)
    if out.returncode:
        raise RuntimeError(f"bench increment chunk failed:\n{out.stderr[-3000:]}")
    if os.environ.get("GPDATA_BENCH_LOGS"):  # a chunk's log (counts, causes and tracebacks' frames, no values)
        Path(os.environ["GPDATA_BENCH_LOGS"], f"chunk-{spec['run_id']}-{spec['ods'][0]}.log").write_text(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_chunks(chunks: list[list[str]], input_home: Path, work: Path, run_id: str, workers: int,
               **extra) -> list[dict]:
    env = _env(work, input_home)
    specs = [{"input": str(input_home), "work": str(work), "ods": c, "run_id": run_id, **extra} for c in chunks]
    with cf.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda s: _chunk_process(s, env), specs))


def prepare(ps, work: Path, fraction: float, workers: int) -> None:
    """Not timed: inbox folders with each practice's flat-file baseline, the baselines committed (in chunks, to be
    quick), then each practice's increment written as its next delivery."""
    from gpdata.ingest.dialects import load_dialect
    from gpdata.ingest.sources.flatfile import write_delivery
    from gpdata.privacy.keys import write_development_key
    from gpdata.synth import exports

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copytree(ps.home / "reference", work / "reference")
    write_development_key(work / "dev.key")
    for ods in ps.ods_codes:
        inbox = ps.home / "inbox" / ods
        shutil.rmtree(inbox, ignore_errors=True)
        shutil.copytree(ps.folder(ods, DIALECT), inbox)
    codes = list(ps.ods_codes)
    run_chunks([codes[i:i + 25] for i in range(0, len(codes), 25)], ps.home, work, "baseline", workers)
    dialect = load_dialect(DIALECT)
    for number, ods in enumerate(codes):
        canonical = exports.canonical_of(ps.folder(ods, "fhir"), ods)
        # a new type 1 dissent in one practice in ten (nationally, a day brings far fewer)
        inc = exports.make_increment(canonical, seed=number, fraction=fraction, dissent=number % 10 == 0)
        write_delivery(inc.changed, ps.home / "inbox" / ods, ods, dialect, STAMP, deleted=inc.deleted)


def national_register(folder: Path, practices: int = NATIONAL_PRACTICES) -> dict:
    """``bench.register`` in a process of its own: the CPU of reading a register of ``practices`` practices' files,
    first in a process, later with none changed or with 50 practices' changed, and a commit's check after its
    write."""
    out = subprocess.run([sys.executable, "-m", "bench.register", str(folder), str(practices)], capture_output=True,
                         text=True, timeout=3600, env=_env(folder, folder))
    if out.returncode:
        raise RuntimeError(f"bench register failed:\n{out.stderr[-3000:]}")
    shutil.rmtree(folder, ignore_errors=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(ps, work: Path, *, fraction: float = 0.06, workers: int = 2,
            register_practices: int = NATIONAL_PRACTICES) -> dict:
    """The increment of every practice of ``ps``, planned and run as the DAG would; CPU per practice and the
    national projection. The projection adds what the type 1 register costs at ``register_practices`` practices
    and the increment's own small register does not show (``bench.register``): each check after commits' writes
    (one per ``pipeline.CHECK_SECONDS`` of a chunk's commits, counted in this run), and each chunk process's first
    read and its read after the chunk's dissents are recorded, shared by the practices; each of the later reads
    and checks finding 50 more practices' files changed (other chunks commit meanwhile)."""
    use_environment(work, ps.home)
    prepare(ps, work, fraction, workers)
    from gpdata import pipeline, settings

    alone, chunks = pipeline.plan_chunks(_feeds(ps.home, list(ps.ods_codes)), settings.load())
    t0 = time.perf_counter()
    results = run_chunks(chunks + [[ods] for ods in alone], ps.home, work, "delta", workers)
    wall = time.perf_counter() - t0
    status: dict[str, str] = {}
    causes: dict[str, int] = {}
    for r in results:
        status.update(r["status"])
        for cause in r["failures"]:
            causes[cause] = causes.get(cause, 0) + 1
    n = len(ps.ods_codes)
    cpu = sum(r["cpu_seconds"] for r in results)
    rows = sum(r["rows"] for r in results)
    per_practice = round(cpu / n, 3)  # the national figure is projected from the figure reported
    register = national_register(work.parent / "national-register", register_practices)
    processes, checks = len(chunks) + len(alone), sum(r["commit_checks"] for r in results)
    reads = register["first_read_cpu_seconds"] + register["changed_read_cpu_seconds"]
    register_cpu = round((register["check_cpu_seconds"] * checks + reads * processes) / n, 3)
    return {
        "practices": n, "chunks": len(chunks), "alone": len(alone), "rows": rows,
        "rows_per_practice": round(rows / n, 1),
        "committed": sum(s == "committed" for s in status.values()),
        "failed": sum(s == "failed" for s in status.values()), "failure_causes": causes,
        "commit_checks": checks, "wall_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
        "cpu_seconds_per_practice": per_practice,
        "max_peak_rss_mib": round(max(r["peak_rss_mib"] for r in results)),
        "national_register": register, "register_cpu_seconds_per_practice": register_cpu,
        "national_practices": NATIONAL_PRACTICES,
        "national_core_hours": round((per_practice + register_cpu) * NATIONAL_PRACTICES / 3600, 3),
    }


def main(argv: list[str]) -> int:
    print(json.dumps(run_one_chunk(json.loads(argv[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
