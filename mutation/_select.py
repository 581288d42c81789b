"""pytest plugin for ``make mutate``: keep only the tests listed (JSON) in GPDATA_MUTATE_TESTS, in that order.

A listed test that is not collected is a selection error, never a killed mutant: the run prints
GPDATA-MUTATE-SELECTION-ERROR and exits 0, and mutation/run.py reports the mutant as unexplained.
"""

from __future__ import annotations

import json
import os


def pytest_collection_modifyitems(session, config, items):
    wanted = json.loads(os.environ["GPDATA_MUTATE_TESTS"])
    order = {nodeid: i for i, nodeid in enumerate(wanted)}
    kept = sorted((item for item in items if item.nodeid in order), key=lambda item: order[item.nodeid])
    if len(kept) != len(wanted):
        missing = sorted(set(wanted) - {item.nodeid for item in kept})
        print(f"GPDATA-MUTATE-SELECTION-ERROR: not collected: {missing[:3]}", flush=True)
        os._exit(0)
    config.hook.pytest_deselected(items=[item for item in items if item.nodeid not in order])
    items[:] = kept
