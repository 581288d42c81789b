"""`make demo`: synthetic practices through the real Airflow DAG, then a summary.

    python -m gpdata.ops.demo                       generate (once), run the DAG with `airflow dags test`
    python -m gpdata.ops.demo --patients 10000      the larger demo (`make demo SIZE=10000`)
    python -m gpdata.ops.demo --airflow-standalone  start Airflow standalone on the same folders

It writes GPDATA_HOME/gpdata.toml (the folders and the development key, read by every `gpdata` command as
defaults under the environment) and GPDATA_HOME/airflow/airflow.cfg (so plain `airflow` commands with
AIRFLOW_HOME set see the project). While a DAG runs it prints a line per practice and stage, followed from
the task states in Airflow's metadata database (a progress bar when a terminal is attached); when a command
fails it prints the cause last.

Everything lives under GPDATA_HOME (default ./var) except the demo's development key, which it writes under
.secrets/ in the checkout (GPDATA_SECRETS_DIR to move it), outside GPDATA_HOME: copying var/ never copies it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from gpdata import settings
from gpdata.ops.airflow_env import airflow_env, write_airflow_cfg
from gpdata.ops.report import print_summary
from gpdata.privacy.keys import write_development_key

DEMO = {"practices": 3, "patients": 2_000, "seed": 42, "events_per_patient": 100.0, "dirty_fraction": 0.01}


def _say(msg: str) -> None:
    print(f"[gpdata demo] {msg}", flush=True)


class DemoFailed(SystemExit):
    """A demo step failed: what failed, then the cause, printed last."""


_STATE_WORDS = {"running": "running", "success": "done", "failed": "FAILED", "upstream_failed": "not run (upstream "
                "failed)", "skipped": "skipped"}
# The last line of a Python traceback: ``package.module.SomeError: message`` (or a bare ``SomeError: message``).
_EXCEPTION_LINE = re.compile(r"^\s*(?:[A-Za-z_][\w]*\.)*([A-Za-z_]\w*(?:Error|Exception|Exit)): (.+)$")


class TaskFollower:
    """Follows the task instances of the DAG runs made after it was created, read from Airflow's SQLite
    metadata database (read-only; a poll that finds the database busy is skipped), and reports each change
    of state as ``<practice> <stage>: <state>``."""

    def __init__(self, db: Path, dag_id: str, report) -> None:
        self.db, self.dag_id, self.report = db, dag_id, report
        self.seen: dict[tuple[str, int], str] = {}
        self.names: dict[tuple[str, int], str] = {}
        self.after = self._query("SELECT coalesce(max(id), 0) FROM dag_run", ())[0][0] if db.exists() else 0

    def _query(self, sql: str, params: tuple) -> list[tuple]:
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=0.5)
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()

    def poll(self) -> None:
        try:
            rows = self._query(
                "SELECT ti.task_id, ti.map_index, coalesce(ti.rendered_map_index, ''), coalesce(ti.state, ''), "
                "ti.duration FROM task_instance ti JOIN dag_run dr ON dr.dag_id = ti.dag_id AND dr.run_id = ti.run_id "
                "WHERE ti.dag_id = ? AND dr.id > ? ORDER BY ti.start_date", (self.dag_id, self.after))
        except sqlite3.Error:  # busy, or the tables are not there yet: the next poll sees it
            return
        for task_id, map_index, practice, state, duration in rows:
            group, _, stage = task_id.rpartition(".")
            if practice:  # a mapped task's name (its ODS code) is rendered when it starts: the same per group
                self.names[(group, map_index)] = practice
            practice = self.names.get((group, map_index), f"practice #{map_index}" if map_index >= 0 else "")
            if state not in _STATE_WORDS or self.seen.get((task_id, map_index)) == state:
                continue
            self.seen[(task_id, map_index)] = state
            took = f" in {duration:.0f} s" if duration is not None and state in ("success", "failed") else ""
            self.report(f"{practice + ' ' if practice else ''}{stage}: {_STATE_WORDS[state]}{took}",
                        state in ("success", "failed", "skipped", "upstream_failed"), len(rows))

    def failed(self) -> list[str]:
        """The failed tasks, as ``<practice> <stage>`` for a practice's task."""
        named = []
        for (task, i), state in self.seen.items():
            if state == "failed":
                group, _, stage = task.rpartition(".")
                practice = self.names.get((group, i), f"practice #{i}" if i >= 0 else "")
                named.append(f"{practice} {stage}" if practice else task)
        return named


class Progress:
    """A rich progress bar over the tasks of a DAG run where a terminal is attached; plain lines otherwise."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.bar = None
        if sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as Bar

            self.bar = Bar(TextColumn("[gpdata demo] {task.description}", markup=False), BarColumn(),
                           MofNCompleteColumn(), TimeElapsedColumn(), transient=True)
            self.task = self.bar.add_task(title, total=None)
            self.done = 0

    def __enter__(self):
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    def __call__(self, line: str, finished: bool, total: int) -> None:
        if self.bar is None:
            _say(f"  {line}")
            return
        self.done += finished
        self.bar.update(self.task, completed=self.done, total=max(total, self.done))
        self.bar.console.print(f"[gpdata demo]   {line}", markup=False, highlight=False)


def failure_causes(text: str, limit: int = 3) -> list[str]:
    """The exception lines of the tracebacks in a log (``Type: message``), last ones first, without repeats."""
    causes: list[str] = []
    for line in reversed(text.splitlines()):
        m = _EXCEPTION_LINE.match(line)
        if m and f"{m[1]}: {m[2]}" not in causes:
            causes.append(f"{m[1]}: {m[2].strip()}")
            if len(causes) == limit:
                break
    return causes


def _airflow(args: list[str], env: dict, log: Path, follow: str | None = None, title: str = "") -> None:
    """Run an airflow command, its output appended to a log file; with ``follow`` (a DAG id), report its task
    states while it runs. On failure: what failed, where the log is, and the cause last."""
    with open(log, "a") as fh:
        fh.write(f"\n$ airflow {' '.join(args)}\n")
        fh.flush()
        start = fh.tell()
        db = Path(env["AIRFLOW_HOME"]) / "airflow.db"
        with Progress(title or f"airflow {' '.join(args)}") if follow else contextlib.nullcontext() as progress:
            follower = TaskFollower(db, follow, progress) if follow else None
            proc = subprocess.Popen([str(Path(sys.executable).with_name("airflow")), *args], env=env,
                                    stdout=fh, stderr=subprocess.STDOUT)
            while True:
                try:
                    proc.wait(timeout=1)
                    break
                except subprocess.TimeoutExpired:
                    if follower:
                        follower.poll()
            if follower:
                follower.poll()
    if proc.returncode:
        with open(log) as fh:
            fh.seek(start)
            text = fh.read()
        failed = follower.failed() if follower else []
        causes = failure_causes(text) or [text.strip().splitlines()[-1] if text.strip() else "no output"]
        raise DemoFailed(f"[gpdata demo] airflow {' '.join(args)} failed (exit {proc.returncode}); full log: {log}"
                         + (f"\n[gpdata demo] failed tasks: {', '.join(failed)}" if failed else "")
                         + "".join(f"\n[gpdata demo] earlier: {c}" for c in reversed(causes[1:]))
                         + f"\n[gpdata demo] cause: {causes[0]}")


def _check_key_folder(cfg: settings.Settings) -> None:
    if cfg.secrets.is_relative_to(cfg.home):
        raise SystemExit(f"the key folder {cfg.secrets} lies inside GPDATA_HOME ({cfg.home}): set "
                         "GPDATA_SECRETS_DIR to a folder outside it")


def prepare(cfg: settings.Settings, params: dict) -> Path:
    key_file = cfg.secrets / "dev-master.key"
    _check_key_folder(cfg)
    if write_development_key(key_file):
        _say(f"made a development pseudonymisation key at {key_file} (synthetic data only; "
             "refused when GPDATA_MODE=production)")
    else:
        _say(f"using the development key at {key_file}")
    stamp = cfg.sources / ".synth.json"
    if stamp.exists() and json.loads(stamp.read_text()) == params and cfg.feeds_dir.is_dir():
        _say(f"synthetic practices already generated under {cfg.sources}")
    else:
        from gpdata.ops.cli import main as cli

        _say(f"generating {params['practices']} synthetic practices of {params['patients']} patients")
        started = time.monotonic()
        rc = cli(["synth", "--out", str(cfg.home), "--feeds-dir", str(cfg.feeds_dir),
                  "--practices", str(params["practices"]), "--patients", str(params["patients"]),
                  "--seed", str(params["seed"]), "--events-per-patient", str(params["events_per_patient"]),
                  "--dirty-fraction", str(params["dirty_fraction"])])
        if rc:
            raise SystemExit(rc)
        stamp.write_text(json.dumps(params))
        _say(f"generated in {time.monotonic() - started:.0f} s")
    return key_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--airflow-standalone", action="store_true", help="start Airflow on the demo folders")
    parser.add_argument("--patients", type=int, default=DEMO["patients"])
    parser.add_argument("--practices", type=int, default=DEMO["practices"])
    args = parser.parse_args(argv)

    os.environ.setdefault("GPDATA_FEEDS_DIR", str(Path(os.environ.get("GPDATA_HOME", "var")).resolve() / "feeds"))
    cfg = settings.load()
    params = {**DEMO, "patients": args.patients, "practices": args.practices}
    stamp = cfg.sources / ".synth.json"
    if args.airflow_standalone and stamp.exists():  # the UI on whatever the last demo made (any SIZE)
        params = json.loads(stamp.read_text())
    demo_started = time.monotonic()
    _check_key_folder(cfg)
    key_file = cfg.secrets / "dev-master.key"
    settings.write_settings_file(cfg, key_file)
    write_airflow_cfg(cfg)
    env = {**os.environ, **airflow_env(cfg, key_file)}
    # Airflow starts its own components (standalone) as `airflow` subprocesses: this venv's first on PATH.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    log = cfg.airflow_home / "demo.log"

    if args.airflow_standalone:
        prepare(cfg, params)
        _say("starting Airflow standalone on the demo folders: open http://localhost:8080 "
             f"(the admin password is printed below and kept in {cfg.airflow_home})")
        os.execve(str(Path(sys.executable).with_name("airflow")), ["airflow", "standalone"], env)  # noqa: S606

    # The metadata database is made while the practices are generated: two processes for two cores.
    migrated: list[BaseException | None] = []

    def migrate() -> None:
        try:
            _airflow(["db", "migrate"], env, log)
            migrated.append(None)
        except BaseException as exc:  # noqa: BLE001  (re-raised in the main thread)
            migrated.append(exc)

    migration = threading.Thread(target=migrate, daemon=True)
    _say(f"preparing the Airflow metadata database (SQLite under {cfg.airflow_home}) meanwhile; log: {log}")
    migration.start()
    prepare(cfg, params)
    started = time.monotonic()
    migration.join()
    if migrated[0] is not None:
        raise migrated[0]
    _say(f"database ready ({time.monotonic() - started:.0f} s more)")
    _say(f"running DAG gpdata_extract through Airflow (airflow dags test): {params['practices']} practices, "
         "each extract -> quality -> commit")
    started = time.monotonic()
    _airflow(["dags", "test", "gpdata_extract"], env, log, follow="gpdata_extract", title="gpdata_extract")
    _say(f"DAG run finished in {time.monotonic() - started:.0f} s")
    _say("running DAG gpdata_release through Airflow")
    started = time.monotonic()
    _airflow(["dags", "test", "gpdata_release"], env, log, follow="gpdata_release", title="gpdata_release")
    _say(f"DAG run finished in {time.monotonic() - started:.0f} s")
    from gpdata.store.release import latest_release, verify_audit

    latest = latest_release(cfg.store)
    _say(f"release {latest['release_id']} published (gpdata release list; gpdata release show "
         f"{latest['release_id']})")
    ndop_file = cfg.reference / "ndop.csv"
    if ndop_file.exists():
        from gpdata.privacy import ndop
        from gpdata.privacy.keys import load_master_key

        # The synthetic list is made with the practices, so it is published today.
        meta = ndop.ingest(ndop_file, cfg.store, load_master_key({"GPDATA_MASTER_KEY_FILE": str(key_file)}),
                           published=dt.date.today())
        _say(f"National Data Opt-out list ingested: {meta['patients']} patients, pseudonymised; "
             "the identifiable file was deleted")
    _say("running DAG gpdata_disseminate through Airflow (one task per approved project)")
    started = time.monotonic()
    _airflow(["dags", "test", "gpdata_disseminate"], env, log, follow="gpdata_disseminate",
             title="gpdata_disseminate")
    _say(f"DAG run finished in {time.monotonic() - started:.0f} s")
    from gpdata import audit

    venv_bin = Path(sys.executable).parent
    _say(f"demo finished in {time.monotonic() - demo_started:.0f} s (the install not counted)")
    print()
    rc = print_summary(cfg)
    for manifest in sorted(cfg.extracts.glob(f"*/{latest['release_id']}/manifest.json")):
        m = json.loads(manifest.read_text())
        print(f"project {m['project']} ({m['organisation']}; National Data Opt-out {m['national_data_optout']}): "
              + ", ".join(f"{t} {e['rows']}" for t, e in m["tables"].items()) + f"\n    {manifest.parent}")
    print(f"audit log: {verify_audit(cfg.store)} entries, chain intact ({audit.audit_dir(cfg.store)}; "
          "gpdata audit verify)")
    print(f"""
Outputs
  development key        {key_file}   (outside GPDATA_HOME; refused when GPDATA_MODE=production)
  curated Delta tables   {cfg.store}/<table>   (how to read them: docs/analysts.md)
  quarantined rows       {cfg.store}/_quarantine   (reason and position, no identifiers)
  run manifests          {cfg.manifests}/<ODS>/
  quality                {cfg.data_docs}/<ODS>/index.html (Data Docs); {cfg.quality}/<ODS>/<run>.json
  releases               {cfg.store}/_releases/<id>/ (release.json, data_dictionary.md and .json)
  project extracts       {cfg.extracts}/<project>/<release>/ (Parquet per table, manifest.json, summary.json)
  public register        {cfg.register}/register.html and register.csv
  synthetic sources      {cfg.sources}/<ODS>/   (identifiable test data; never copied to the store)
  Airflow log of the run {log}
  settings of this home   {settings.settings_file()}   (read by every gpdata command; the environment wins)
See it in the Airflow UI: make airflow   (Airflow standalone on the same folders, http://localhost:8080)

The gpdata and airflow commands on the demo, with no flags or variables:
  source {venv_bin}/activate     (puts gpdata and airflow on PATH; sets GPDATA_HOME and AIRFLOW_HOME)
  gpdata feeds list; gpdata keys show; gpdata release list; airflow dags list
  (without activating: export PATH="{venv_bin}:$PATH", run gpdata from {Path.cwd()}, and
   gpdata airflow dags list for Airflow)""")
    return rc


if __name__ == "__main__":
    sys.exit(main())
