"""pytest plugin for ``make mutate`` (mutation/run.py): records which lines of one module each test executes,
with coverage.py's C tracer (pinned in requirements.txt) limited to that module.

GPDATA_MUTATE_TARGET names the module file, GPDATA_MUTATE_TRACE the JSON written at the end:
``{"lines": {test id or "<import>": [line, ...]}, "seconds": {test id: s}, "exitstatus": n}``. Lines run while
modules are imported (definitions, constants, default values) are recorded under ``"<import>"``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import coverage
import pytest

_TARGET = os.path.realpath(os.environ["GPDATA_MUTATE_TARGET"])
_DATA = tempfile.mkdtemp(prefix="gpdata-mutate-trace-")
_cov = coverage.Coverage(data_file=os.path.join(_DATA, "cov"), include=[_TARGET], branch=False, config_file=False)
_cov.start()  # loaded with -p, before the test modules (and the target module) are imported
_seconds: dict[str, float] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _cov.switch_context(item.nodeid)
    started = time.perf_counter()
    yield
    _seconds[item.nodeid] = round(time.perf_counter() - started, 3)
    _cov.switch_context("<between tests>")


def pytest_sessionfinish(session, exitstatus):
    _cov.stop()
    data = _cov.get_data()
    lines: dict[str, set[int]] = {}
    for name in data.measured_files():
        if os.path.realpath(name) != _TARGET:
            continue
        for line, contexts in data.contexts_by_lineno(name).items():
            for context in contexts:
                lines.setdefault(context or "<import>", set()).add(line)  # "": before the first test
    with open(os.environ["GPDATA_MUTATE_TRACE"], "w") as out:
        json.dump({"lines": {k: sorted(v) for k, v in lines.items() if v}, "seconds": _seconds,
                   "exitstatus": int(exitstatus)}, out)
    shutil.rmtree(_DATA, ignore_errors=True)
