"""pytest plugin for ``make mutate`` (mutation/run.py): records which lines of one module each test executes.

GPDATA_MUTATE_TARGET names the module file, GPDATA_MUTATE_TRACE the JSON written at the end:
``{"lines": {test id or "<import>": [line, ...]}, "seconds": {test id: s}, "exitstatus": n}``. Lines run while
modules are imported (definitions, constants, default values) are recorded under ``"<import>"``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import pytest

_TARGET = os.path.realpath(os.environ["GPDATA_MUTATE_TARGET"])
_context = "<import>"
_lines: dict[str, set[int]] = {}
_seconds: dict[str, float] = {}
_is_target: dict[str, bool] = {}


def _local(frame, event, arg):
    if event == "line":
        _lines.setdefault(_context, set()).add(frame.f_lineno)
    return _local


def _global(frame, event, arg):
    name = frame.f_code.co_filename
    hit = _is_target.get(name)
    if hit is None:
        hit = _is_target[name] = os.path.realpath(name) == _TARGET
    if hit:
        _lines.setdefault(_context, set()).add(frame.f_lineno)
        return _local
    return None


def _start() -> None:
    sys.settrace(_global)
    threading.settrace(_global)


_start()  # loaded with -p, before the test modules (and the target module) are imported


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    global _context
    _context, started = item.nodeid, time.perf_counter()
    _start()  # in case something reset the tracer
    yield
    _seconds[item.nodeid] = round(time.perf_counter() - started, 3)
    _context = "<between tests>"


def pytest_sessionfinish(session, exitstatus):
    sys.settrace(None)
    threading.settrace(None)
    with open(os.environ["GPDATA_MUTATE_TRACE"], "w") as out:
        json.dump({"lines": {k: sorted(v) for k, v in _lines.items()}, "seconds": _seconds,
                   "exitstatus": int(exitstatus)}, out)
