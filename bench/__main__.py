"""`make bench`: measure the pipeline's stages on generated practices; report ratios, not verdicts.

    python -m bench [--patients N] [--events-per-patient N]

Writes bench/results/latest.json and latest.md. Everything is measured in this run on this machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def measure_practice(patients: int, events: float) -> dict:
    from gpdata import pipeline, quality, settings
    from gpdata.feeds import Feed
    from gpdata.keys import write_development_key
    from gpdata.synth import generate

    home = Path(tempfile.mkdtemp(prefix="gpdata-bench-"))
    os.environ.update({"GPDATA_HOME": str(home), "GPDATA_MASTER_KEY_FILE": str(home / "dev.key")})
    os.environ.pop("GPDATA_MASTER_KEY", None)
    os.environ.pop("GPDATA_STORE", None)
    write_development_key(home / "dev.key")
    truth = generate(home, n_practices=1, n_patients=patients, events_per_patient=events, seed=11)[0]
    feed = Feed(ods_code=truth.ods_code, name="bench", location=str(home / "sources" / truth.ods_code))
    cfg = settings.load()
    t0 = time.perf_counter()
    counts = pipeline.extract(feed, cfg, "bench")
    t1 = time.perf_counter()
    counts = pipeline.check(feed, cfg, "bench")
    t2 = time.perf_counter()
    counts = pipeline.commit(feed, cfg, "bench")
    t3 = time.perf_counter()
    rows = sum(counts["staged_rows"].values())
    # The Great Expectations part of the quality stage alone, on the same passed rows.
    from gpdata.model import TABLES
    from gpdata.store import read_table

    passed = {name: read_table(cfg.store, name, feed.ods_code) for name in TABLES}
    g0 = time.perf_counter()
    quality.run_suites(passed, feed.ods_code, dt.date.today())
    gx_seconds = time.perf_counter() - g0
    total = t3 - t0
    return {
        "patients": patients, "events_per_patient": events, "rows": rows,
        "extract_seconds": round(t1 - t0, 3), "quality_seconds": round(t2 - t1, 3),
        "commit_seconds": round(t3 - t2, 3), "pipeline_seconds": round(total, 3),
        "validation_seconds_per_million_rows": round((t2 - t1) / rows * 1e6, 3),
        "gx_seconds_per_million_rows": round(gx_seconds / rows * 1e6, 3),
        "validation_share_of_pipeline": round((t2 - t1) / total, 3),
        "pipeline_rows_per_second": round(rows / total),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=3000)
    parser.add_argument("--events-per-patient", type=float, default=100.0)
    args = parser.parse_args(argv)
    command = f"make bench  (python -m bench --patients {args.patients} --events-per-patient {args.events_per_patient})"
    print(f"gpdata bench: one synthetic practice, {args.patients} patients x {args.events_per_patient} records",
          flush=True)
    result = measure_practice(args.patients, args.events_per_patient)
    result.update({"cpu_count": os.cpu_count(), "python": sys.version.split()[0], "command": command,
                   "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(result, indent=2))
    lines = ["| measure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in result.items()]
    (RESULTS / "latest.md").write_text("# gpdata benchmark\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten to {RESULTS / 'latest.json'} and latest.md; rerun with: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
