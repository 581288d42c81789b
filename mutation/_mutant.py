"""cosmic-ray's test command in ``make mutate``: runs, for the mutant currently applied, only the tests that
execute the mutated statement (from the unmutated run's trace), fastest first, stopping at the first failure.

    python _mutant.py MODULE TRACE.json

* a mutated statement that some test executes: those tests;
* a statement run only while modules are imported (a definition, a constant, a default value): every test of
  the module's selection;
* a statement that no test executes: nothing is run; prints GPDATA-MUTATE-NOT-COVERED and exits 0 (the mutant
  survives, and mutation/run.py reports it as not covered: such a mutant cannot change any test's result).
"""

from __future__ import annotations

import ast
import difflib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

PYTEST = ["-m", "pytest", "-x", "-q", "-o", "addopts=", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
          "-p", "no:anyio", "-p", "_select"]


def statement_lines(tree: ast.AST, line: int) -> range:
    """The lines of the innermost statement holding ``line`` (a compound statement's header only)."""
    best = None
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt) and node.lineno <= line <= (node.end_lineno or node.lineno):
            if best is None or node.lineno >= best.lineno and (node.end_lineno or 0) <= (best.end_lineno or 0):
                best = node
    if best is None:
        return range(line, line + 1)
    start = min([best.lineno, *(d.lineno for d in getattr(best, "decorator_list", []))])
    body = [s for field in ("body", "orelse", "finalbody", "handlers") for s in getattr(best, field, []) or []
            if isinstance(s, (ast.stmt, ast.excepthandler))]
    end = min(s.lineno for s in body) - 1 if body else (best.end_lineno or best.lineno)
    return range(start, max(end, line) + 1)


def changed_lines(before: str, after: str) -> set[int]:
    a, b = before.splitlines(), after.splitlines()
    out = set()
    for tag, i1, i2, _j1, _j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag != "equal":
            out.update(range(i1 + 1, max(i2, i1 + 1) + 1))
    return out


def main(module: str, trace_file: str) -> int:
    trace = json.loads(Path(trace_file).read_text())
    source, seconds = trace["source"], trace["seconds"]
    tree = ast.parse(source)
    lines = {ctx: set(v) for ctx, v in trace["lines"].items()}
    tests, imported = set(), False
    for line in changed_lines(source, Path(module).read_text()):
        span = set(statement_lines(tree, line))
        tests |= {t for t in seconds if lines.get(t, set()) & span}
        imported |= bool(lines.get("<import>", set()) & span)
    if not tests and imported:
        tests = set(seconds)
    if not tests:
        print("GPDATA-MUTATE-NOT-COVERED: no test executes the mutated statement", flush=True)
        return 0
    ordered = sorted(tests, key=lambda t: (seconds[t], t))
    files = sorted({t.split("::")[0] for t in ordered})
    env = dict(os.environ, GPDATA_MUTATE_TESTS=json.dumps(ordered))
    server = os.environ.get("GPDATA_MUTATE_SERVER")
    if not server:
        return subprocess.run([sys.executable, *PYTEST, *files], env=env).returncode
    output = Path(trace_file).with_suffix(".out")
    request = {"args": [*PYTEST[2:], *files], "cwd": os.getcwd(), "env": env, "output": str(output),
               "timeout": float(os.environ.get("GPDATA_MUTATE_TIMEOUT", "600"))}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(server)
            conn.sendall((json.dumps(request) + "\n").encode())
            answer = conn.makefile("r").readline()
    except OSError:  # no server after all: a failure to reach it is never a killed mutant
        return subprocess.run([sys.executable, *PYTEST, *files], env=env).returncode
    sys.stdout.write(output.read_text(errors="replace") if output.exists() else "")
    return int(answer) if answer.strip() else 70


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
