"""What writing a chunk's increments together saves: the same practices' daily increments in one chunk process,
their increments written together (one Delta commit per table, as ``pipeline.run_chunk`` does) or each practice's
alone, in turn, from the same prepared state each time.

    python -m bench.jointwrite FOLDER [PRACTICES [ROUNDS]]     # e.g. FOLDER 200 3

The practices (default 200, made by the generator under FOLDER and reused from it) are baselined and given their
increments once, as ``bench.increment`` does (not timed). Prints one JSON line: CPU seconds per practice of each
run by mode, the Delta commits per table each mode made, and the ratio of the medians (alone / together).
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from pathlib import Path

from bench.increment import prepare, run_chunks, use_environment


def measure(folder: Path, practices: int = 200, rounds: int = 2) -> dict:
    from bench.__main__ import INCREMENT
    from bench.inputs import practice_set

    ps = practice_set(folder / "input", practices, INCREMENT["patients"], INCREMENT["events_per_patient"],
                      ("fhir", "emis_csv"))
    prepared, work = folder / "prepared", folder / "work"
    use_environment(prepared, ps.home)
    prepare(ps, prepared, INCREMENT["fraction"], 2)
    codes = list(ps.ods_codes)
    runs: dict[str, list[float]] = {"together": [], "alone": []}
    writes: dict[str, int] = {}
    for _ in range(rounds):
        for mode in runs:  # alternating, so a drift of the machine falls on both
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(prepared, work, symlinks=True)
            [result] = run_chunks([codes], ps.home, work, "delta", 1, write_alone=mode == "alone")
            committed = sum(s == "committed" for s in result["status"].values())
            if committed != len(codes):
                raise RuntimeError(f"{mode}: {committed} of {len(codes)} practices committed")
            runs[mode].append(round(result["cpu_seconds"] / len(codes), 3))
            writes[mode] = result["writes"]
    shutil.rmtree(work, ignore_errors=True)
    return {"practices": len(codes), "cpu_seconds_per_practice": runs, "delta_commits_per_table": writes,
            "alone_over_together": round(statistics.median(runs["alone"]) / statistics.median(runs["together"]), 2)}


def main(argv: list[str]) -> int:
    practices = int(argv[1]) if len(argv) > 1 else 200
    rounds = int(argv[2]) if len(argv) > 2 else 2
    print(json.dumps(measure(Path(argv[0]), practices, rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
