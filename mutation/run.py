"""Mutation testing of the privacy guards (issue 23): ``make mutate``, never part of ``make test``.

For each guard module, cosmic-ray (pinned in requirements.txt) mutates a throw-away copy of the tracked files
(the working tree is never touched) and runs only the tests that cover that module. A surviving mutant is either
listed, reviewed, in mutation/equivalent.txt (``path:line operator  # reason``) or reported as unexplained, and
the run then exits 1. Writes mutation/results.json and mutation/summary.md.

Speed (the whole scope must fit in 30 minutes on 2 cores): two workers, each with its own copy of the tree,
take modules longest first; each module's tests run once unmutated under coverage.py (mutation/_trace.py),
recording which lines each test executes; then each mutant runs only the tests that execute the mutated
statement, fastest first, stopping at the first failure (mutation/_mutant.py), in a child forked from a server
that imported pytest, hypothesis and pyarrow once (mutation/_forkserver.py). A mutant no test executes is
reported as "not covered" without running anything.

    python mutation/run.py [MODULE ...]     # default: every module in MODULES, e.g. include/gpdata/privacy/type1.py
    python mutation/run.py --rescore        # re-apply equivalent.txt to the last results (no mutant is run)
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "mutation"
BIN = Path(sys.executable).parent
G = "tests/unit/privacy/test_guards.py"

# module -> the tests that cover it (kept tight: the whole run must fit in 30 minutes on 2 cores)
MODULES: dict[str, list[str]] = {
    "include/gpdata/privacy/type1.py": ["tests/unit/privacy/test_type1.py", "tests/unit/privacy/test_type1_register.py",
                                        "tests/unit/privacy/test_type1_encodings.py",
                                        f"{G}::test_an_undated_dissent_beats_every_withdrawal",
                                        f"{G}::test_an_undated_withdrawal_loses_to_every_dated_dissent"],
    "include/gpdata/privacy/deid.py": ["tests/unit/privacy/test_deid.py", "tests/unit/privacy/test_deid_hmac.py",
                                       "tests/unit/privacy/test_restricted.py",
                                       f"{G}::test_every_pseudonymised_field_uses_its_own_derived_key"],
    "include/gpdata/privacy/keys.py": ["tests/unit/privacy/test_keys.py", "tests/unit/privacy/test_key_checks.py",
                                       f"{G}::test_production_mode_is_recognised_in_any_case",
                                       *(f"tests/unit/ops/test_home.py::{t}" for t in (
                                           "test_the_development_key_is_found_through_the_settings_file",
                                           "test_an_explicit_environment_is_taken_as_given",
                                           "test_production_mode_never_takes_the_key_from_the_settings_file",
                                           "test_a_real_key_named_only_by_the_settings_file_is_refused"))],
    "include/gpdata/privacy/ndop.py": ["tests/unit/privacy/test_ndop_rules.py",
                                       "tests/unit/privacy/test_optouts_everywhere.py::test_a_bad_ndop_list_is_refused"
                                       "_and_the_list_in_force_stays",
                                       "tests/unit/privacy/test_optouts_everywhere.py::test_a_shrunken_ndop_list_is_"
                                       "refused_and_staleness_counts_from_publication",
                                       f"{G}::test_the_national_data_optout_removes_every_record_of_the_patient_not_"
                                       "only_the_patient_row"],
    # test_disseminate.py is left out: each of its tests runs the pipeline to build its store (minutes per
    # surviving mutant); test_disseminate_guards.py pins the same decisions on one store built once.
    "include/gpdata/share/disseminate.py": ["tests/unit/share/test_disseminate_guards.py",
                                            f"{G}::test_the_national_data_optout_removes_every_record_of_the_patient"
                                            "_not_only_the_patient_row",
                                            f"{G}::test_every_count_in_summary_json_and_the_audit_entry_is_suppressed",
                                            f"{G}::test_an_inactive_project_is_refused_and_nothing_is_written"],
    "include/gpdata/share/publish.py": ["tests/unit/share/test_suppress.py", "tests/unit/share/test_publishable.py",
                                        f"{G}::test_every_count_in_summary_json_and_the_audit_entry_is_suppressed"],
    "include/gpdata/audit.py": ["tests/unit/test_audit.py", "tests/unit/test_audit_rules.py"],
    # The two erasure tests that run the pipeline twice (a release-only patient, the commit's recheck)
    # are left out for time: test_erasure_guards.py pins the same decisions on one store built once.
    "include/gpdata/store/erasure.py": ["tests/unit/store/test_erasure_guards.py",
                                        f"{G}::test_erasure_refuses_anything_but_a_pseudonym",
                                        f"{G}::test_erasure_refuses_raw_nhs_numbers_and_quoting_strings"],
    "include/gpdata/ops/leakscan.py": ["tests/unit/ops/test_leakscan.py", "tests/unit/ops/test_leakscan_rules.py"],
}

# Operators kept: negated conditions, and/or swaps, boolean constants, boundary and (in)equality swaps, loops
# skipped. Arithmetic, number, variable and exception operators are left out: they multiply mutants of
# formatting code without reaching a guard's decision.
KEEP_COMPARISONS = "Eq_NotEq|NotEq_Eq|Lt_LtE|LtE_Lt|Gt_GtE|GtE_Gt|Is_IsNot|IsNot_Is"
EXCLUDE_OPERATORS = [
    r"core/ReplaceBinaryOperator_.*", r"core/ReplaceUnaryOperator_.*", r"core/NumberReplacer",
    r"core/VariableReplacer", r"core/VariableInserter", r"core/RemoveDecorator", r"core/ReplaceBreakWithContinue",
    r"core/ReplaceContinueWithBreak", r"core/ExceptionReplacer",
    rf"core/ReplaceComparisonOperator_(?!({KEEP_COMPARISONS})$).*",
]
WORKERS = 2  # two copies of the tree, each mutating and testing one module at a time (2 cores)
HELPERS = ("_trace.py", "_select.py", "_mutant.py", "_forkserver.py")
PYTEST = ["-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
          "-p", "no:anyio"]


ENTRY = re.compile(r"^(?P<module>\S+) (?P<operator>\S+) `(?P<code>[^`]*)`\s+#\s*(?P<reason>.+)$")


def _equivalent() -> dict[tuple[str, str, str], str]:
    """``(module, operator, source line)`` -> reason, from mutation/equivalent.txt (the line's code, not its
    number: an edit elsewhere in the module keeps an entry, an edit of the line itself voids it)."""
    out = {}
    path = HERE / "equivalent.txt"
    for number, raw in enumerate(path.read_text().splitlines() if path.exists() else [], 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        entry = ENTRY.match(line)
        if not entry:
            raise SystemExit(f"mutation/equivalent.txt line {number}: not `path operator `code`  # reason`")
        out[(entry["module"], entry["operator"], entry["code"].strip())] = entry["reason"].strip()
    return out


def _explain(surviving: list[dict]) -> tuple[list[dict], list[dict]]:
    """(reviewed equivalents, unexplained survivors), each equivalent with its reason."""
    equivalent = _equivalent()
    explained, unexplained = [], []
    for m in surviving:
        reason = equivalent.get((m["module"], m["operator"], m.get("source", "")))
        if reason:
            explained.append({**m, "reason": reason})
        else:
            unexplained.append({k: v for k, v in m.items() if k != "reason"})
    return explained, unexplained


def _copy_tree(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for name in files:
        src = ROOT / name
        if src.is_file() and not name.startswith(("mutation/", "docs/", "tests/system", "tests/browser",
                                                   "tests/stack")):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    for helper in HELPERS:
        shutil.copy2(HERE / helper, dest / helper)


def _toml(value) -> str:
    return json.dumps(value)


def _env(work: Path) -> dict[str, str]:
    # GPDATA_MUTATE_CACHE: test fixtures may keep what they build between mutants, keyed by the sources that
    # build it (tests/unit/share/test_disseminate_guards.py)
    return dict(os.environ, PYTHONPATH=f"{work / 'include'}:{work / 'plugins'}:{work}", PYTHONDONTWRITEBYTECODE="1",
                GPDATA_MUTATE_CACHE=str(work / ".mutate-cache"))


def trace_module(work: Path, module: str, tests: list[str], trace: Path) -> dict:
    """Runs the module's tests once, unmutated, recording the lines of the module each test executes."""
    env = dict(_env(work), GPDATA_MUTATE_TARGET=str(work / module), GPDATA_MUTATE_TRACE=str(trace))
    run = subprocess.run([sys.executable, *PYTEST, "-p", "_trace", *tests], cwd=work, env=env, capture_output=True,
                         text=True)
    if run.returncode != 0 or not trace.exists():
        raise SystemExit(f"{module}: its tests fail unmutated (exit {run.returncode}):\n{run.stdout[-3000:]}")
    data = json.loads(trace.read_text())
    if not any(data["lines"].values()):
        raise SystemExit(f"{module}: its tests never ran {work / module} (is another copy of gpdata imported?)")
    data["source"] = (work / module).read_text()
    trace.write_text(json.dumps(data))
    return data


def _start_server(work: Path) -> subprocess.Popen | None:
    """The fork server (mutation/_forkserver.py), or None when it cannot start: mutants then run in new processes."""
    sock = work / "forkserver.sock"
    # One BLAS thread and no jemalloc background thread: numpy and pyarrow then start no thread on import, so
    # the server may fork with them loaded (it checks, and refuses to start otherwise).
    env = dict(_env(work), OPENBLAS_NUM_THREADS="1", JE_ARROW_MALLOC_CONF="background_thread:false")
    server = subprocess.Popen([sys.executable, "_forkserver.py", str(sock)], cwd=work, env=env)
    while not sock.exists() and server.poll() is None:
        time.sleep(0.1)
    if server.poll() is not None:
        print(f"fork server not started (exit {server.returncode}): each mutant runs in a new process", flush=True)
        return None
    return server


def _outcome(result: dict) -> str:
    output = result.get("output") or ""
    if "GPDATA-MUTATE-SELECTION-ERROR" in output:
        return "selection error"
    if "GPDATA-MUTATE-NOT-COVERED" in output:
        return "not covered"
    return result.get("test_outcome") or "incompetent"


def run_module(work: Path, module: str, tests: list[str]) -> list[dict]:
    name = module.replace("/", "_").removesuffix(".py")
    config, session, trace = work / f"{name}.toml", work / f"{name}.sqlite", work / f"{name}.trace.json"
    data = trace_module(work, module, tests, trace)
    timeout = max(60.0, 5 * sum(data["seconds"].values()))  # a mutant that hangs past this counts as killed
    command = " ".join(shlex.quote(a) for a in (sys.executable, "_mutant.py", module, str(trace)))
    config.write_text(
        "[cosmic-ray]\n"
        f"module-path = {_toml(module)}\n"
        f"timeout = {timeout:.1f}\n"
        "excluded-modules = []\n"
        f"test-command = {_toml(command)}\n"
        "[cosmic-ray.distributor]\nname = \"local\"\n"
        "[cosmic-ray.filters.operators-filter]\n"
        f"exclude-operators = {_toml(EXCLUDE_OPERATORS)}\n")
    env = dict(_env(work), GPDATA_MUTATE_TIMEOUT=str(timeout))
    if (work / "forkserver.sock").exists():
        env["GPDATA_MUTATE_SERVER"] = str(work / "forkserver.sock")
    for step in ([str(BIN / "cosmic-ray"), "init", str(config), str(session)],
                 [str(BIN / "cr-filter-operators"), str(session), str(config)],
                 [str(BIN / "cosmic-ray"), "exec", str(config), str(session)]):
        subprocess.run(step, cwd=work, env=env, check=True, capture_output=True)
    dump = subprocess.run([str(BIN / "cosmic-ray"), "dump", str(session)], cwd=work, env=env, check=True,
                          capture_output=True, text=True).stdout
    out = []
    for line in dump.splitlines():
        item, result = json.loads(line)
        if not result or result.get("worker_outcome") == "skipped":
            continue
        m = item["mutations"][0]
        diff = [d for d in (result.get("diff") or "").splitlines() if d[:1] in "+-" and d[:3] not in ("---", "+++")]
        original = [d[1:].strip() for d in diff if d.startswith("-")]
        out.append({"module": module, "line": m["start_pos"][0], "operator": m["operator_name"],
                    "source": original[0] if original else "",
                    "occurrence": m["occurrence"], "outcome": _outcome(result),
                    "worker": result.get("worker_outcome"), "mutation": " / ".join(d.strip() for d in diff)})
    return out


def rescore() -> int:
    """Re-apply mutation/equivalent.txt to the last run's results (``--rescore``), without running any mutant
    again: for survivors reviewed after the run. A survivor killed by a new test needs a new run."""
    results = json.loads((HERE / "results.json").read_text())
    for m in results["survivors"] + results["equivalents"]:  # results written before "source" was recorded
        m.setdefault("source", m["mutation"].split(" / +", 1)[0].removeprefix("-").strip())
    explained, unexplained = _explain(results["survivors"] + results["equivalents"])
    results.update(survived=len(unexplained), equivalent=len(explained), survivors=unexplained,
                   equivalents=explained, rescored=True)
    return _write(results)


def _write(results: dict) -> int:
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    per_module, unexplained = results["modules"], results["survivors"]
    lines = ["# Mutation testing of the privacy guards", "",
             f"{results['total']} mutants, {results['killed']} killed, {results['equivalent']} equivalent "
             f"(reviewed, mutation/equivalent.txt), **{results['survived']} unexplained survivors**; "
             f"{results['seconds']} s on {WORKERS} workers.", "", "| module | mutants | seconds |", "|---|---|---|",
             *[f"| {m} | {v['mutants']} | {v['seconds']} |" for m, v in per_module.items()], ""]
    if results.get("rescored"):
        lines += ["(Equivalents re-applied after the run with `--rescore`; no mutant was run again.)", ""]
    if unexplained:
        lines += ["## Unexplained survivors (kill with a test, or review into equivalent.txt)", "",
                  *[f"- `{m['module']}:{m['line']} {m['operator']}` ({m['outcome']}): `{m['mutation']}`"
                    for m in unexplained], ""]
    (HERE / "summary.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 1 if unexplained else 0


def main(selected: list[str]) -> int:
    unknown = [m for m in selected if m not in MODULES]
    if unknown:
        raise SystemExit(f"not a configured module: {unknown} (see MODULES in mutation/run.py)")
    modules = {m: MODULES[m] for m in (selected or MODULES)}
    _equivalent()  # a malformed list stops the run before any mutant
    started = time.monotonic()
    mutants, per_module = [], {}
    pending = queue.Queue()
    for module in sorted(modules, key=lambda m: -len((ROOT / m).read_text())):  # longest first
        pending.put(module)

    def worker(work: Path) -> None:
        _copy_tree(work)
        server = _start_server(work)
        try:
            while True:
                try:
                    module = pending.get_nowait()
                except queue.Empty:
                    return
                t0 = time.monotonic()
                found = run_module(work, module, modules[module])
                mutants.extend(found)
                per_module[module] = {"mutants": len(found), "seconds": round(time.monotonic() - t0, 1)}
                print(f"{module}: {len(found)} mutants in {per_module[module]['seconds']} s", flush=True)
        finally:
            if server:
                server.terminate()
                server.wait()

    with tempfile.TemporaryDirectory(prefix="gpdata-mutate-") as tmp:
        with ThreadPoolExecutor(WORKERS) as pool:
            for job in [pool.submit(worker, Path(tmp) / f"w{i}") for i in range(WORKERS)]:
                job.result()
    per_module = {m: per_module[m] for m in modules if m in per_module}
    mutants.sort(key=lambda m: (list(modules).index(m["module"]), m["line"], m["operator"], m["occurrence"]))
    killed = [m for m in mutants if m["outcome"] == "killed"]
    surviving = [m for m in mutants if m["outcome"] != "killed"]  # survived, incompetent or timed out
    explained, unexplained = _explain(surviving)
    results = {"modules": per_module, "total": len(mutants), "killed": len(killed), "survived": len(unexplained),
               "equivalent": len(explained), "seconds": round(time.monotonic() - started, 1),
               "operators_excluded": EXCLUDE_OPERATORS, "survivors": unexplained, "equivalents": explained}
    return _write(results)


if __name__ == "__main__":
    sys.exit(rescore() if sys.argv[1:] == ["--rescore"] else main(sys.argv[1:]))
