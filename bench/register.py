"""What reading the store-wide type 1 register costs as the number of practices grows, which the 200-practice daily
increment does not show: every practice's commit reads it after its write (the check for a dissent recorded
meanwhile must see the register as it is), and each chunk's process reads it first for all its practices.

    python -m bench.register FOLDER [PRACTICES [DISSENTERS [READS [CHANGED]]]]

Writes PRACTICES register files (default 6,500, England's practices) of DISSENTERS random patient pseudonyms each
(default 280: about 3 % of a practice's 9,300 patients have a type 1 opt-out) into FOLDER (made afresh), then reads
the register as a chunk of commits does: the first read in a process that has decoded none of the files
(``type1.snapshot``); READS - 1 later ones (default 5 in all) that find every file unchanged; READS - 1 that each
follow CHANGED practices (default 50) recording a new dissent (``type1.record``, not timed), as the read after a
chunk records its dissents does, other chunks committing meanwhile; and READS - 1 checks after a commit's write
(``type1.dissented_since`` of an earlier read, for a practice's 9,300 patients, one of them among the new
dissents), each after CHANGED more practices recorded one. Prints one JSON line with CPU seconds (means of the
later reads); no pseudonym is printed.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
import time
from pathlib import Path

NATIONAL_PRACTICES = 6500
DISSENTERS = 280
KEY_VERSION = "v1"


def write_register(store_root: Path, practices: int, dissenters: int) -> None:
    import secrets

    import pyarrow as pa

    from gpdata.privacy import type1

    start = dt.date(2018, 5, 25)
    for number in range(practices):
        pids = [secrets.token_hex(32) for _ in range(dissenters)]
        dates = [start + dt.timedelta(days=(number * 7 + i) % 3000) for i in range(dissenters)]
        events = pa.table({"patient_pid": pids, "event_date": dates,
                           "dissent": [i % 20 != 0 for i in range(dissenters)]}, schema=type1.EVENTS)
        type1.write(store_root, f"P{number:05d}", events, KEY_VERSION)


def _timed(call):
    t0 = time.process_time()
    out = call()
    return time.process_time() - t0, out


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 3) if values else 0.0


def main(argv: list[str]) -> int:
    import secrets

    import pyarrow as pa

    from gpdata import storage
    from gpdata.privacy import type1

    root = Path(argv[0])
    practices = int(argv[1]) if len(argv) > 1 else NATIONAL_PRACTICES
    dissenters = int(argv[2]) if len(argv) > 2 else DISSENTERS
    reads = int(argv[3]) if len(argv) > 3 else 5
    changed = min(int(argv[4]) if len(argv) > 4 else 50, practices)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    write_register(root, practices, dissenters)
    time.sleep(storage.SETTLED_NS / 1e9)  # written a while before the run reads them, as a national register is
    done = iter(range(10**9))

    def record_some() -> list[str]:
        new = [secrets.token_hex(32) for _ in range(changed)]
        for pid in new:
            event = pa.table({"patient_pid": [pid], "event_date": [dt.date(2026, 11, 30)], "dissent": [True]},
                             schema=type1.EVENTS)
            type1.record(root, f"P{next(done) % practices:05d}", event, KEY_VERSION)
        return new

    def snapshot():
        return type1.snapshot(root, KEY_VERSION)

    first, _ = _timed(snapshot)
    unchanged = [_timed(snapshot)[0] for _ in range(reads - 1)]
    after_changes = []
    for _ in range(reads - 1):
        record_some()
        after_changes.append(_timed(snapshot)[0])
    read, checks, late = snapshot(), [], 0
    for _ in range(reads - 1):
        patients = pa.array([secrets.token_hex(32) for _ in range(9300 - 1)] + record_some()[:1])
        seconds, found = _timed(lambda patients=patients: type1.dissented_since(root, read, patients))
        checks.append(seconds)
        late += len(found)
    print(json.dumps({"practices": practices, "dissenters_per_practice": dissenters,
                      "active_dissenters": len(snapshot().active), "changed_between_reads": changed,
                      "first_read_cpu_seconds": round(first, 3), "later_read_cpu_seconds": _mean(unchanged),
                      "changed_read_cpu_seconds": _mean(after_changes), "check_cpu_seconds": _mean(checks),
                      "dissented_since_found": late}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
