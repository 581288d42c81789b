"""`make bench`: gpdata's pipeline against the limit of each source format and a naive baseline, on the same
generated practices, in one run on this machine. Never part of `make test`.

    python -m bench                 # full: 0.1M, 1M and ~6M events (60,000 patients); 1, 4, 16 practices
    python -m bench --quick         # small sizes, a couple of minutes
    python -m bench --sizes 1000,10000 --practices 1,4 --naive-patients 1000
    python -m bench --only-dag-parse
    python -m bench --only status   # the GP data page with 6,500 practices, local and S3 (moto), about 2 min

Every figure is measured in this run. The generator's time never counts. Each measurement runs in its own
process (peak RSS and CPU time are its own); imports are done before the clock starts for the limit, the
pipeline and the naive baseline alike (the cold start is reported on its own). Writes bench/results/latest.json
and latest.md. Output holds counts and timings only, never an identifier.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
FULL = {"sizes": [1000, 10000, 60000, 120000], "practices": [1, 4, 16], "practice_patients": 1000,
        "naive_patients": [1000, 10000],
        "fhir_max_patients": 10000, "profile_patients": 10000, "events_per_patient": 100.0,
        "extra_dialects": ["tpp_pipe"], "increment_practices": 200}
QUICK = {"sizes": [200, 1000], "practices": [1, 2, 4], "practice_patients": 200,
         "naive_patients": [200],
         "fhir_max_patients": 1000, "profile_patients": 1000, "events_per_patient": 100.0,
         "extra_dialects": ["tpp_pipe"], "increment_practices": 20}
# The daily increment: practices of this size, each delivering about the national day's records per practice
# (1.7 M records / 6,500 practices, about 260: 10 % of a 100-patient, 20-records-per-patient practice's events).
INCREMENT = {"patients": 100, "events_per_patient": 20.0, "fraction": 0.1}
STAGES = {  # share-of-time groups: pipeline stage -> the seconds recorded by gpdata.pipeline
    "parse": ["extract_read"], "type1": ["extract_type1"], "deidentify": ["extract_deidentify"],
    "validation_rules": ["quality_rules"], "validation_gx": ["quality_expectations"], "commit": ["commit"],
    "handover": ["extract_write", "quality_read", "quality_write"],
}


IN_PROCESS = False  # tests: measure in this process (no separate peak RSS), to check the machinery quickly


def worker(spec: dict, timeout: float = 3600) -> dict:
    if IN_PROCESS:
        from bench.worker import _usage, execute

        before = _usage()["cpu_seconds"]  # this process has run other work before: count only this measurement
        result = execute(spec)
        return {**result, "cpu_seconds": result["cpu_seconds"] - before}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-m", "bench.worker", json.dumps(spec)], env=env, capture_output=True,
                         text=True, timeout=timeout)
    if out.returncode:
        raise RuntimeError(f"bench worker {spec['kind']} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def worker_limits() -> int:
    from bench.worker import MAX_FILE_BYTES

    return MAX_FILE_BYTES


def _rate(rows: int, seconds: float) -> float:
    return rows / seconds if seconds > 0 else float("nan")


def stage_table(result: dict) -> dict:
    """Seconds, rows/s and share of the pipeline's time per stage."""
    s = result["stage_seconds"]
    total = result["seconds"]
    out = {}
    for stage, keys in STAGES.items():
        sec = sum(s.get(k, 0.0) for k in keys)
        out[stage] = {"seconds": round(sec, 3), "rows_per_second": round(_rate(result["rows"], sec)),
                      "share": round(sec / total, 3)}
    return out


def measure_size(ps, fmt: str, work: Path, naive: bool, profile: Path | None = None) -> dict:
    """Limit and pipeline (and the naive baseline) for one practice in one format, one after the other."""
    ods = ps.ods_codes[0]
    folder = ps.folder(ods, fmt)
    limit = worker({"kind": "limit", "folder": str(folder), "fmt": fmt, "work": str(work)})
    spec = {"kind": "pipeline", "input": str(ps.home), "ods": ods, "fmt": fmt, "work": str(work)}
    pipe = worker(spec)
    row = {
        "format": fmt, "patients": ps.patients, "events_per_patient": ps.events_per_patient,
        "rows": pipe["rows"], "events": pipe["rows"] - pipe["records_read"]["patients"]
        - pipe["records_read"]["practitioners"],
        "limit_seconds": round(limit["seconds"], 3), "limit_rows_per_second": round(_rate(limit["rows"],
                                                                                          limit["seconds"])),
        "pipeline_seconds": round(pipe["seconds"], 3),
        "pipeline_rows_per_second": round(_rate(pipe["rows"], pipe["seconds"])),
        "pipeline_rows_per_cpu_second": round(_rate(pipe["rows"], pipe["cpu_seconds"])),
        "pipeline_over_limit": round(limit["seconds"] / pipe["seconds"], 3),  # FHIR: the fastest candidate's
        "peak_rss_mib": round(pipe["peak_rss_mib"]), "limit_peak_rss_mib": round(limit["peak_rss_mib"]),
        # each stage is a task: its peak, measured from the RSS it started with (bench.worker.run_pipeline)
        "stage_peak_rss_mib": {k: round(v) for k, v in pipe["stage_peak_rss_mib"].items()},
        "task_peak_rss_mib": round(max(pipe["stage_peak_rss_mib"].values())),
        "cold_start_seconds": round(pipe["cold_start_seconds"], 2),
        "committed_rows": pipe["committed_rows"], "quarantined_rows": pipe["quarantined_rows"],
        "expectations": pipe["expectations"], "stages": stage_table(pipe),
    }
    if "candidates" in limit:  # FHIR: every candidate limit measured in the same process, fastest first
        row["fhir_limit"] = limit["limit"]
        row["fhir_limit_candidates"] = {name: round(_rate(c["rows"], c["seconds"])) for name, c in sorted(
            limit["candidates"].items(), key=lambda item: item[1]["seconds"])}
        row["fhir_limit_candidates_per_cpu_second"] = {name: round(_rate(c["rows"], c["cpu_seconds"]))
                                                       for name, c in limit["candidates"].items()}
    if naive:
        nv = worker({"kind": "naive", "input": str(ps.home), "folder": str(folder), "ods": ods, "fmt": fmt,
                     "work": str(work)}, timeout=7200)
        row.update(naive_seconds=round(nv["seconds"], 3), naive_rows_per_second=round(_rate(nv["rows"],
                                                                                            nv["seconds"])),
                   naive_peak_rss_mib=round(nv["peak_rss_mib"]),
                   pipeline_over_naive=round(nv["seconds"] / pipe["seconds"], 2))
    if profile is not None:
        worker({**spec, "profile": str(profile)})
        row["profile"] = str(profile.relative_to(REPO)) if profile.is_relative_to(REPO) else str(profile)
    return row


def measure_practices(ps, n: int, fmt: str, work: Path, workers: int) -> dict:
    """``n`` practices through the pipeline, ``workers`` processes at a time (as Celery workers would)."""
    codes = ps.ods_codes[:n]
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(max_workers=1 if IN_PROCESS else workers) as pool:
        results = list(pool.map(lambda ods: worker({"kind": "pipeline", "input": str(ps.home), "ods": ods,
                                                    "fmt": fmt, "work": str(work / ods)}), codes))
    wall = time.perf_counter() - t0
    rows = sum(r["rows"] for r in results)
    busy = min(n, workers)
    return {"practices": n, "workers": workers, "rows": rows, "wall_seconds": round(wall, 2),
            "rows_per_second": round(_rate(rows, wall)), "rows_per_second_per_busy_core": round(_rate(rows, wall)
                                                                                              / busy),
            "rows_per_cpu_second": round(_rate(rows, sum(r["cpu_seconds"] for r in results))),
            "max_peak_rss_mib": round(max(r["peak_rss_mib"] for r in results))}


def measure_airflow_overhead(work: Path) -> dict:
    """One tiny practice through `airflow dags test gpdata_extract` against the same practice through
    gpdata.pipeline.run_practice in a fresh process (imports included in both)."""
    from bench.airflow_overhead import measure

    return measure(work)


def _fmt_rate(v) -> str:
    return f"{v / 1e6:.2f}M" if v >= 1e5 else f"{v / 1e3:.0f}k"


def render(doc: dict) -> str:
    lines = [f"# gpdata benchmark ({doc['measured_at']}, {doc['cpu_count']} cores, Python {doc['python']})", "",
             f"Rerun: `{doc['command']}`", "", "## Headline (ratios measured in this run)", "",
             "| measure | value | target | met |", "|---|---|---|---|"]
    for key, target, ok in doc["targets"]:
        verdict = "not measured in this run" if doc.get(key) is None else "yes" if ok else "NOT MET"
        lines.append(f"| {key} | {doc.get(key)} | {target} | {verdict} |")
    lines += ["", "## One practice, by size and format (limit and pipeline on the same files)", "",
              "| format | patients | rows | limit rows/s | pipeline rows/s | pipeline/limit | rows/CPU-s | "
              "peak RSS MiB (process) | task peak RSS MiB (extract, check, commit) | naive rows/s | pipeline/naive |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["sizes"]:
        lines.append(f"| {r['format']} | {r['patients']} | {r['rows']} | {_fmt_rate(r['limit_rows_per_second'])} | "
                     f"{_fmt_rate(r['pipeline_rows_per_second'])} | {r['pipeline_over_limit']} | "
                     f"{_fmt_rate(r['pipeline_rows_per_cpu_second'])} | {r['peak_rss_mib']} | "
                     f"{', '.join(str(v) for v in r['stage_peak_rss_mib'].values())} | "
                     f"{_fmt_rate(r['naive_rows_per_second']) if 'naive_rows_per_second' in r else ''} | "
                     f"{r.get('pipeline_over_naive', '')} |")
    fhir = [r for r in doc["sizes"] if r.get("fhir_limit_candidates")]
    if fhir:
        lines += ["", "FHIR limit candidates (rows/s, measured one after the other in one process; the fastest is "
                  "the limit): " + "; ".join(f"{r['patients']} patients: " + ", ".join(
                      f"{name} {_fmt_rate(v)}" for name, v in r["fhir_limit_candidates"].items()) for r in fhir)]
    lines += ["", "## Stages (share of the pipeline's time; rows/s of the stage alone)", "",
              "| format | patients | " + " | ".join(STAGES) + " |", "|---|---|" + "---|" * len(STAGES)]
    for r in doc["sizes"]:
        lines.append(f"| {r['format']} | {r['patients']} | " + " | ".join(
            f"{r['stages'][s]['share']:.0%} ({_fmt_rate(r['stages'][s]['rows_per_second'])})" for s in STAGES) + " |")
    lines += ["", "## Practices in parallel (one process per practice task)", "",
              "| practices | workers | rows | wall s | rows/s | rows/s per busy core | rows/CPU-s | max RSS MiB |",
              "|---|---|---|---|---|---|---|---|"]
    for r in doc["practices"]:
        lines.append(f"| {r['practices']} | {r['workers']} | {r['rows']} | {r['wall_seconds']} | "
                     f"{_fmt_rate(r['rows_per_second'])} | {_fmt_rate(r['rows_per_second_per_busy_core'])} | "
                     f"{_fmt_rate(r['rows_per_cpu_second'])} | {r['max_peak_rss_mib']} |")
    lines += ["", "## Other figures", "", "| measure | value |", "|---|---|"]
    for k, v in doc.items():
        if not isinstance(v, (list, dict)) and k not in ("command",):
            lines.append(f"| {k} | {v} |")
    if doc.get("airflow"):
        for k, v in doc["airflow"].items():
            lines.append(f"| airflow.{k} | {v} |")
    inc = doc.get("increment")
    if inc:
        lines += ["", "## Daily increment (practices planned into chunks as the extraction DAG does; a process per "
                  "chunk)", "", "| " + " | ".join(inc) + " |", "|" + "---|" * len(inc),
                  "| " + " | ".join(str(v) for v in inc.values()) + " |"]
    proj = doc.get("national_projection")
    if proj:
        lines += ["", "## National projection (from this run's rates)", "",
                  "Assumptions: " + ", ".join(f"{k} {v}" for k, v in proj["assumptions"].items()), "",
                  "| run | rows | core-hours | workers (one core each) to finish in | on this machine |",
                  "|---|---|---|---|---|"]
        for name in ("baseline", "daily_increment"):
            p = proj[name]
            lines.append(f"| {name} | {p['rows']:,} | {p['core_hours']} | {int(p['workers_for_window'])} in "
                         f"{p['window_hours']:g} h | {p['hours_on_cpu_count_cores']} h |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (a couple of minutes)")
    parser.add_argument("--sizes", help="patients per practice for the size series, comma-separated "
                                        f"(default {FULL['sizes']}; the largest is the peak-RSS case)")
    parser.add_argument("--practices", help=f"practice counts for the parallel series (default {FULL['practices']})")
    parser.add_argument("--naive-patients", help="practice sizes the naive baseline runs at, comma-separated "
                                                 "(default 1000,10000: 10,000 is about the national average)")
    parser.add_argument("--events-per-patient", type=float, help="generator record density (default 100)")
    parser.add_argument("--cache", help="keep generated input here and reuse it in later runs (default: a "
                                        "temporary folder removed at the end)")
    parser.add_argument("--no-airflow", action="store_true", help="skip the Airflow per-task overhead")
    parser.add_argument("--no-dag-parse", action="store_true", help="skip the DAG parse time with 6,500 feeds")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile run (flat files, "
                                                                    "profile_patients: 10,000 by default)")
    parser.add_argument("--out", default=str(RESULTS), help="results folder (default bench/results)")
    parser.add_argument("--only-dag-parse", action="store_true", help="measure only the DAG parse time")
    parser.add_argument("--only", choices=["status", "increment"], help="increment: only the daily increment "
                        "(--increment-practices, default 200); status: measure only the GP data page with 6,500 "
                                                          "practices and merge its keys into latest.json")
    parser.add_argument("--no-status", action="store_true", help="skip the GP data page with 6,500 practices")
    parser.add_argument("--increment-practices", type=int, help="practices in the daily increment (default "
                        f"{FULL['increment_practices']}; --quick {QUICK['increment_practices']}; 0 skips it)")
    args = parser.parse_args(argv)
    if args.only == "status":
        return only_status(Path(args.out))
    if args.only == "increment":
        n = FULL["increment_practices"] if args.increment_practices is None else args.increment_practices
        return only_increment(Path(args.out), n, Path(args.cache) if args.cache else None)
    if args.only_dag_parse:
        from bench.dagparse import measure_dag_parse

        print(json.dumps(measure_dag_parse(6500), indent=2))
        return 0
    plan = dict(QUICK if args.quick else FULL)
    if args.sizes:
        plan["sizes"] = [int(x) for x in args.sizes.split(",")]
    if args.practices:
        plan["practices"] = [int(x) for x in args.practices.split(",")]
    if args.naive_patients:
        plan["naive_patients"] = [int(x) for x in args.naive_patients.split(",")]
    if args.events_per_patient:
        plan["events_per_patient"] = args.events_per_patient
    if args.increment_practices is not None:
        plan["increment_practices"] = args.increment_practices
    command = "make bench ARGS='" + " ".join(argv if argv is not None else sys.argv[1:]) + "'"
    doc = run(plan, Path(args.cache) if args.cache else None, Path(args.out), airflow=not args.no_airflow,
              dag_parse=not args.no_dag_parse, profile=not args.no_profile, command=command,
              status=not args.no_status)
    print(render(doc))
    print(f"written to {Path(args.out) / 'latest.json'} and latest.md")
    return 0


def only_status(out: Path) -> int:
    """The GP data page's keys, merged into an existing latest.json (or a new one)."""
    from bench.status_page import measure

    log("GP data page with 6,500 practices: local store, then S3 (moto)")
    found = measure()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "latest.json"
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc.update(found)
    doc["targets"] = [t for t in (doc.get("targets") or []) if not t[0].startswith("status_page")] + \
        status_targets(doc)
    path.write_text(json.dumps(doc, indent=2))
    print(json.dumps({k: v for k, v in found.items()}, indent=2))
    print(f"merged into {path}")
    return 0


def only_increment(out: Path, n: int, cache: Path | None) -> int:
    """The daily increment's keys, merged into an existing latest.json (or a new one); Airflow's overhead per task
    is taken from that file when an earlier run measured it."""
    from bench import increment
    from bench.inputs import practice_set

    with tempfile.TemporaryDirectory(prefix="gpdata-bench-") as tmp:
        log(f"daily increment: {n} practices (set-up not timed)")
        ps = practice_set(cache or Path(tmp), n, INCREMENT["patients"], INCREMENT["events_per_patient"],
                          ("fhir", "emis_csv"))
        found = increment.measure(ps, Path(tmp) / "work", fraction=INCREMENT["fraction"], workers=os.cpu_count() or 1)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "latest.json"
    doc = json.loads(path.read_text()) if path.exists() else {"sizes": []}
    doc["increment"] = found
    doc.update({k: v for k, v in cadence(doc).items() if v is not None or k not in doc})
    keys = ("fixed_cpu_seconds_per_practice", "daily_increment_core_hours")
    doc["targets"] = [t for t in (doc.get("targets") or []) if t[0] not in keys] + \
        [t for t in targets({**{"flatfile_rows_per_cpu_second_spread": None}, **doc}) if t[0] in keys]
    path.write_text(json.dumps(doc, indent=2))
    print(json.dumps({"increment": found, **{k: doc[k] for k in keys}}, indent=2))
    print(f"merged into {path}")
    return 0


def status_targets(doc: dict) -> list[tuple[str, str, bool]]:
    local, s3 = doc.get("status_page_seconds_6500_practices"), doc.get("status_page_seconds_6500_practices_s3")
    return [("status_page_seconds_6500_practices", "< 0.5", local is not None and local < 0.5),
            ("status_page_seconds_6500_practices_s3", "< 2", s3 is not None and s3 < 2)]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(plan: dict, cache: Path | None, out: Path, *, airflow: bool = True, dag_parse: bool = True,
        profile: bool = True, command: str = "python -m bench", status: bool = False) -> dict:
    from bench.inputs import practice_set

    tmp = tempfile.TemporaryDirectory(prefix="gpdata-bench-")
    root = cache or Path(tmp.name)
    work = Path(tmp.name) / "work"
    cores = os.cpu_count() or 1
    epp = plan["events_per_patient"]
    sizes, errors, largest = [], [], max(plan["sizes"])
    out.mkdir(parents=True, exist_ok=True)
    try:
        for patients in sorted(plan["sizes"]):
            formats = ["emis_csv"]
            if patients <= plan["fhir_max_patients"]:
                formats.append("fhir")
            if patients == min(plan["sizes"]):
                formats += plan.get("extra_dialects", [])
            log(f"generating 1 practice x {patients} patients x {epp:g} records ({', '.join(formats)}; not timed)")
            ps = practice_set(root, 1, patients, epp, tuple(formats))
            for fmt in formats:
                log(f"measuring {fmt}, {patients} patients")
                naive = fmt == "emis_csv" and patients in plan["naive_patients"]
                prof = out / f"profile-flatfile-{patients}-patients.txt" if profile and fmt == "emis_csv" and \
                    patients == plan["profile_patients"] else None
                try:
                    sizes.append(measure_size(ps, fmt, work, naive=naive, profile=prof))
                except (RuntimeError, subprocess.TimeoutExpired) as exc:  # record it and go on
                    log(f"FAILED: {fmt}, {patients} patients: {str(exc)[-1500:]}")
                    errors.append({"format": fmt, "patients": patients, "error": str(exc)[-1500:]})
                (out / "partial.json").write_text(json.dumps({"sizes": sizes, "errors": errors}, indent=2))
        practices = []
        n_max = max(plan["practices"], default=0)
        if n_max:
            log(f"generating {n_max} practices x {plan['practice_patients']} patients (not timed)")
            ps = practice_set(root, n_max, plan["practice_patients"], epp, ("emis_csv",))
        for n in sorted(plan["practices"]):
            log(f"measuring {n} practice(s) on {cores} worker process(es)")
            practices.append(measure_practices(ps, n, "emis_csv", work, cores))
        doc: dict = {}
        if plan.get("increment_practices"):
            from bench import increment

            n = plan["increment_practices"]
            log(f"daily increment: {n} practices x {INCREMENT['patients']} patients, baselined, then a small "
                "delivery each, run in chunks as the extraction DAG plans them (set-up not timed)")
            inc_ps = practice_set(root, n, INCREMENT["patients"], INCREMENT["events_per_patient"],
                                  ("fhir", "emis_csv"))
            doc["increment"] = increment.measure(inc_ps, work / "increment", fraction=INCREMENT["fraction"],
                                                 workers=cores)
        if dag_parse:
            from bench.dagparse import measure_dag_parse

            log("DAG parse with 6,500 feeds (fresh processes)")
            doc.update(measure_dag_parse(6500))
        if status:
            from bench.status_page import measure as measure_status_page

            log("GP data page with 6,500 practices: local store, then S3 (moto)")
            doc.update(measure_status_page())
        if airflow:
            log("Airflow per-task overhead (airflow dags test of one tiny practice)")
            doc["airflow"] = measure_airflow_overhead(work / "airflow")
    finally:
        tmp.cleanup()
    doc.update(summarise(sizes, practices, largest, plan))
    doc.update({"sizes": sizes, "practices": practices, "errors": errors, "plan": plan, "cpu_count": cores,
                "max_file_bytes": worker_limits(),
                "python": sys.version.split()[0], "command": command,
                "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})
    doc.setdefault("dag_parse_seconds_6500_feeds", None)  # every headline key is present, measured or not
    doc.setdefault("status_page_seconds_6500_practices", None)
    doc.setdefault("status_page_seconds_6500_practices_s3", None)
    doc["national_projection"] = projection(doc)
    doc.update(cadence(doc))
    doc["targets"] = targets(doc)
    (out / "latest.json").write_text(json.dumps(doc, indent=2))
    (out / "latest.md").write_text(render(doc))
    return doc


def summarise(sizes: list[dict], practices: list[dict], largest: int, plan: dict) -> dict:
    """The headline keys: each ratio at the largest size the format ran at."""
    def at_largest(fmt):
        rows = [r for r in sizes if r["format"] == fmt]
        return max(rows, key=lambda r: r["patients"]) if rows else None

    flat, fhir = at_largest("emis_csv"), at_largest("fhir")
    naive = [r for r in sizes if "pipeline_over_naive" in r]
    per_cpu = [r["pipeline_rows_per_cpu_second"] for r in sizes if r["format"] == "emis_csv"]
    per_wall = [r["pipeline_rows_per_second"] for r in sizes if r["format"] == "emis_csv"]
    big = flat or {"patients": largest, "peak_rss_mib": None, "events": 0, "pipeline_rows_per_second": None,
                   "pipeline_rows_per_cpu_second": None}
    return {
        "flatfile_pipeline_over_limit": flat["pipeline_over_limit"] if flat else None,
        "flatfile_ratio_at_patients": flat["patients"] if flat else None,
        "fhir_pipeline_over_limit": fhir["pipeline_over_limit"] if fhir else None,
        "fhir_ratio_at_patients": fhir["patients"] if fhir else None,
        "fhir_limit": fhir.get("fhir_limit") if fhir else None,  # the fastest candidate at that size
        "pipeline_over_naive": naive[-1]["pipeline_over_naive"] if naive else None,  # the largest naive size
        "naive_at_patients": naive[-1]["patients"] if naive else None,
        "pipeline_over_naive_by_patients": {r["patients"]: r["pipeline_over_naive"] for r in naive},
        "pipeline_over_naive_min": min((r["pipeline_over_naive"] for r in naive), default=None),  # the target's
        "flatfile_rows_per_cpu_second_spread": round(max(per_cpu) / min(per_cpu) - 1, 3) if per_cpu else None,
        "flatfile_rows_per_second_spread": round(max(per_wall) / min(per_wall) - 1, 3) if per_wall else None,
        f"peak_rss_mib_{big['patients'] // 1000}k_patients": big["peak_rss_mib"],
        "peak_rss_mib_60k_patients": _flat_at(sizes, 60000, "peak_rss_mib"),
        "task_peak_rss_mib_60k_patients": _flat_at(sizes, 60000, "task_peak_rss_mib"),
        "task_peak_rss_mib_120k_patients": _flat_at(sizes, 120000, "task_peak_rss_mib"),  # twice the records
        "peak_rss_events": big["events"],
        "peak_rss_events_per_patient": round(big["events"] / big["patients"], 1) if big["patients"] else None,
        "flatfile_pipeline_rows_per_second_largest": big["pipeline_rows_per_second"],
        "flatfile_pipeline_rows_per_cpu_second_largest": big["pipeline_rows_per_cpu_second"],
    }


NATIONAL = {"patients": 62_000_000, "practices": 6_500, "baseline_window_hours": 24.0,
            "increment_window_hours": 2.0, "history_days": 3_650}


def projection(doc: dict) -> dict | None:
    """Time and workers for the national collection, from this run's measured rates (see docs/performance.md).

    Per practice: CPU seconds = fixed + rows x seconds per row, a line through the smallest and the largest
    flat-file practice of the run (CPU time of the whole task process, imports included), plus Airflow's
    measured overhead per task instance for each of a practice's three tasks. The daily increment is the
    baseline's records over ``history_days`` (records accrue over about ten years), every practice running its
    three tasks every day, costed as a baseline of that size (the incremental MERGE is not measured here)."""
    flat = sorted((r for r in doc["sizes"] if r["format"] == "emis_csv"), key=lambda r: r["rows"])
    if len(flat) < 2:
        return None
    small, big = flat[0], flat[-1]
    cpu_small = small["rows"] / small["pipeline_rows_per_cpu_second"]  # whole task process: imports included
    cpu_big = big["rows"] / big["pipeline_rows_per_cpu_second"]
    per_row = (cpu_big - cpu_small) / (big["rows"] - small["rows"])    # a line through the two sizes
    air = (doc.get("airflow") or {}).get("overhead_seconds_per_task") or 0.0
    fixed = max(cpu_small - per_row * small["rows"], 0.0) + 3 * max(air, 0.0)
    density = big["rows"] / big["patients"]
    per_practice = NATIONAL["patients"] / NATIONAL["practices"]
    rows = NATIONAL["patients"] * density
    out = {"assumptions": {**NATIONAL, "records_per_patient": round(density, 1),
                           "rows_per_cpu_second": round(1 / per_row) if per_row > 0 else None,
                           "fixed_seconds_per_practice": round(fixed, 2), "patients_per_practice": round(per_practice)}}
    for name, fraction, window in (("baseline", 1.0, NATIONAL["baseline_window_hours"]),
                                   ("daily_increment", 1 / NATIONAL["history_days"],
                                    NATIONAL["increment_window_hours"])):
        cpu = NATIONAL["practices"] * fixed + rows * fraction * per_row
        out[name] = {"rows": round(rows * fraction), "core_hours": round(cpu / 3600, 1),
                     "workers_for_window": max(1, -(-cpu // (window * 3600))), "window_hours": window,
                     "hours_on_cpu_count_cores": round(cpu / 3600 / doc["cpu_count"], 1)}
    return out


def _flat_at(sizes: list[dict], patients: int, key: str):
    """``key`` of the flat-file practice of ``patients`` patients, None when this run did not measure it."""
    rows = [r for r in sizes if r["format"] == "emis_csv" and r["patients"] == patients]
    return rows[0][key] if rows else None


def cadence(doc: dict) -> dict:
    """The national daily cadence from the measured increment: CPU per practice (each chunk's whole process, imports
    and set-up included, so this is an upper bound on the fixed cost: it holds the increment's own rows' work too)
    plus the type 1 register's cost at England's size (``bench.increment.national_register``), plus Airflow's
    measured overhead per task instance for each chunk task, over the practices; projected to every practice in
    England. The baseline's projection is the one-practice-per-task line above."""
    inc = doc.get("increment")
    air = (doc.get("airflow") or {}).get("overhead_seconds_per_task") or 0.0
    fixed = None
    if inc:
        fixed = round(inc["cpu_seconds_per_practice"] + inc.get("register_cpu_seconds_per_practice", 0.0)
                      + max(air, 0.0) * (inc["chunks"] + 3 * inc["alone"]) / inc["practices"], 3)
    proj = doc.get("national_projection") or {}
    return {
        "fixed_cpu_seconds_per_practice": fixed,
        "daily_increment_core_hours": None if fixed is None else round(fixed * NATIONAL["practices"] / 3600, 3),
        "baseline_core_hours": (proj.get("baseline") or {}).get("core_hours"),
        # 1,000 patients x 100 records: 0.1 M rows; 60,000 patients: about 6 M rows
        "rows_per_cpu_second_0_1m": _flat_at(doc["sizes"], 1000, "pipeline_rows_per_cpu_second"),
        "rows_per_cpu_second_6m": _flat_at(doc["sizes"], 60000, "pipeline_rows_per_cpu_second"),
    }


def targets(doc: dict) -> list[tuple[str, str, bool]]:
    def ge(k, v):
        return doc.get(k) is not None and doc[k] >= v

    rss = [doc.get("task_peak_rss_mib_60k_patients"), doc.get("task_peak_rss_mib_120k_patients")]
    parse = doc.get("dag_parse_seconds_6500_feeds")
    return [
        ("flatfile_pipeline_over_limit", ">= 0.5", ge("flatfile_pipeline_over_limit", 0.5)),
        ("fhir_pipeline_over_limit", ">= 0.5", ge("fhir_pipeline_over_limit", 0.5)),
        ("pipeline_over_naive_min", ">= 5 at every naive size", ge("pipeline_over_naive_min", 5)),
        ("flatfile_rows_per_cpu_second_spread", "<= 0.2 (0.1M to the largest)",
         doc["flatfile_rows_per_cpu_second_spread"] is not None and doc["flatfile_rows_per_cpu_second_spread"] <= 0.2),
        ("task_peak_rss_mib_60k_patients", "< 1536 (each stage's task)", rss[0] is not None and rss[0] < 1536),
        ("task_peak_rss_mib_120k_patients", "< 1536 (twice the records)", rss[1] is not None and rss[1] < 1536),
        ("fixed_cpu_seconds_per_practice", "< 2 (daily increment)", doc.get("fixed_cpu_seconds_per_practice")
         is not None and doc["fixed_cpu_seconds_per_practice"] < 2),
        ("daily_increment_core_hours", "< 1 (6,500 practices)", doc.get("daily_increment_core_hours") is not None
         and doc["daily_increment_core_hours"] < 1),
        ("dag_parse_seconds_6500_feeds", "< 10", parse is not None and parse < 10),
        *status_targets(doc),
    ]


if __name__ == "__main__":
    sys.exit(main())
