"""What a chunk's size changes: the same practices' daily increments run in chunk processes of each size, one
process after another (so no two share the machine's cores), CPU summed per size.

    python -m bench.chunksize FOLDER [PRACTICES [SIZES]]     # e.g. FOLDER 50 10,25,50

The practices (default 50, made by the generator under FOLDER and reused from it) are baselined and given their
increments once, as ``bench.increment`` does (not timed); each size then starts from a copy of that state. Fits
CPU per practice = fixed per chunk process / practices per chunk + per practice, by least squares over the
sizes (a size above PRACTICES is one chunk of them all), and prints
one JSON line: each size's CPU seconds per practice and peak RSS, and the fit.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from bench.increment import prepare, run_chunks, use_environment


def fit(points: list[tuple[float, float]]) -> dict:
    """Least squares of ``cpu = fixed / size + per_practice`` over (practices per chunk, CPU seconds per
    practice)."""
    xs, ys = [1 / size for size, _ in points], [cpu for _, cpu in points]
    n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mx) ** 2 for x in xs)
    fixed = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / spread if n > 1 and spread else 0.0
    return {"fixed_cpu_seconds_per_chunk": round(fixed, 2), "cpu_seconds_per_practice": round(my - fixed * mx, 3)}


def measure(folder: Path, practices: int = 50, sizes: tuple[int, ...] = (10, 25, 50)) -> dict:
    from bench.__main__ import INCREMENT
    from bench.inputs import practice_set

    ps = practice_set(folder / "input", practices, INCREMENT["patients"], INCREMENT["events_per_patient"],
                      ("fhir", "emis_csv"))
    prepared, work = folder / "prepared", folder / "work"
    use_environment(prepared, ps.home)
    prepare(ps, prepared, INCREMENT["fraction"], 2)
    codes, out = list(ps.ods_codes), []
    for size in sizes:
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(prepared, work, symlinks=True)
        results = run_chunks([codes[i:i + size] for i in range(0, len(codes), size)], ps.home, work, "delta", 1)
        committed = sum(s == "committed" for r in results for s in r["status"].values())
        if committed != len(codes):
            raise RuntimeError(f"chunks of {size}: {committed} of {len(codes)} practices committed")
        out.append({"size": size, "chunks": len(results),
                    "cpu_seconds_per_practice": round(sum(r["cpu_seconds"] for r in results) / len(codes), 3),
                    "max_peak_rss_mib": round(max(r["peak_rss_mib"] for r in results))})
    shutil.rmtree(work, ignore_errors=True)
    return {"practices": len(codes), "sizes": out,
            "fit": fit([(len(codes) / r["chunks"], r["cpu_seconds_per_practice"]) for r in out])}


def main(argv: list[str]) -> int:
    practices = int(argv[1]) if len(argv) > 1 else 50
    sizes = tuple(int(s) for s in argv[2].split(",")) if len(argv) > 2 else (10, 25, 50)
    print(json.dumps(measure(Path(argv[0]), practices, sizes)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
