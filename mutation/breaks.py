"""The ten guard breaks of issue 23, applied one at a time: each must make its test in
tests/unit/privacy/test_guards.py fail. Every file is restored after its run (never commit a break).

    python mutation/breaks.py [N ...]
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = "tests/unit/privacy/test_guards.py"
BREAKS = [  # (number, file, guard, broken, tests to run)
    ("1", "include/gpdata/share/disseminate.py", "            if optouts is not None:\n",
     '            if optouts is not None and table_name == "patients":\n', "national_data_optout"),
    ("2", "include/gpdata/pipeline.py", "for name, dropped in _drop_pids(staged, active).items():",
     "for name, dropped in _drop_pids(staged, active[:0]).items():", "incremental"),
    ("3", "include/gpdata/store/erasure.py",
     "tables += [release.open_release_table(store_root, rid, name) for rid in releases]", "tables += []",
     "held_only_by_a_release"),
    ("4", "include/gpdata/privacy/deid.py", "self._master.chain(field, after)",
     'self._master.chain("nhs_number", after)', "own_derived_key or own_keys"),
    ("5", "include/gpdata/privacy/type1.py", "pc.if_else(dissent, _MAX_DAY, _MIN_DAY)",
     "pc.if_else(dissent, _MIN_DAY, _MIN_DAY)", "undated_dissent"),
    ("6", "include/gpdata/share/disseminate.py", '{"rows": suppress(out.num_rows),', '{"rows": out.num_rows,',
     "every_count"),
    ("7", "include/gpdata/share/projects.py", "        if not self.active:", "        if False:", "inactive"),
    ("8", "include/gpdata/share/disseminate.py",
     "removed_by_ndop=suppress(removed_by_ndop) if removed_by_ndop is not None else None,",
     "removed_by_ndop=removed_by_ndop,", "every_count"),
    ("9", "include/gpdata/settings.py", '.strip().lower() == "production"', '.strip() == "production"',
     "production_mode"),
    ("10", "include/gpdata/store/erasure.py", "if not all(_PID.match(p) for p in values):", "if False:",
     "erasure_refuses"),
]


def main(only: list[str]) -> int:
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'include'}:{ROOT / 'plugins'}")
    unnoticed = 0
    for number, path, guard, broken, selection in BREAKS:
        if only and number not in only:
            continue
        target = ROOT / path
        text = target.read_text()
        if text.count(guard) != 1:
            print(f"break {number}: the guard is not found once in {path}; update this script")
            unnoticed += 1
            continue
        target.write_text(text.replace(guard, broken))
        try:
            run = subprocess.run([sys.executable, "-m", "pytest", TESTS, "-n", "0", "-q", "-p", "no:cacheprovider",
                                  "-k", selection], capture_output=True, text=True, env=env, cwd=ROOT)
        finally:
            target.write_text(text)
        failed = [line for line in run.stdout.splitlines() if line.startswith("FAILED")]
        print(f"break {number} ({path}): " + ("caught by\n  " + "\n  ".join(failed) if failed else "NOT CAUGHT"))
        unnoticed += not failed
    return 1 if unnoticed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
