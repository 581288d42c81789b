"""Each pipeline stage in a process of its own, as Airflow runs them: peak RSS and CPU time of each.

    python -m bench.stages INPUT_HOME ODS FORMAT WORK

INPUT_HOME is a generated practice set (``bench.inputs.practice_set``, e.g. one kept by ``make bench ARGS='--cache
DIR'``: ``DIR/p1x60000x100-s11``), ODS its practice, FORMAT ``emis_csv``, ``tpp_pipe`` or ``fhir``, WORK a folder
made afresh as the run's home. Prints one JSON line per stage: wall and CPU seconds of the stage (imports before
the clock), the process's RSS before the stage and its peak, and the stage's own seconds. No record or identifier
is printed.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

STAGES = ("extract", "check", "commit")


def run_stage(input_home: Path, ods: str, fmt: str, work: Path, stage: str) -> dict:
    """In this process: one stage of the practice, against the home ``work`` that ``main`` prepared."""
    import os

    from bench.worker import MAX_FILE_BYTES

    os.environ.update({"GPDATA_HOME": str(work), "GPDATA_MASTER_KEY_FILE": str(work / "dev.key"),
                       "GPDATA_INBOX_ROOT": str(input_home), "GX_ANALYTICS_ENABLED": "False",
                       "GPDATA_MAX_FILE_BYTES": str(MAX_FILE_BYTES)})
    import deltalake  # noqa: F401  (a task process's imports, before the clock)
    import great_expectations  # noqa: F401

    from bench.inputs import PracticeSet
    from gpdata import pipeline, settings

    feed = PracticeSet(input_home, (ods,), 0, 0, (fmt,), 0).feed(ods, fmt)
    cfg = settings.load()
    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    result = getattr(pipeline, stage)(feed, cfg, "bench")
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"stage": stage, "wall": round(time.perf_counter() - t0, 2),
            "cpu": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2),
            "rss_before_mib": round(before.ru_maxrss / 1024), "peak_rss_mib": round(after.ru_maxrss / 1024),
            "seconds": result.get("seconds")}


def main(argv: list[str]) -> int:
    input_home, ods, fmt, work = Path(argv[0]), argv[1], argv[2], Path(argv[3])
    if len(argv) > 4:
        print(json.dumps(run_stage(input_home, ods, fmt, work, argv[4])))
        return 0
    from bench.worker import _environment

    _environment(work, input_home)
    for stage in STAGES:
        out = subprocess.run([sys.executable, "-m", "bench.stages", *argv[:4], stage], capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-3000:], file=sys.stderr)
            return out.returncode
        print(out.stdout.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
