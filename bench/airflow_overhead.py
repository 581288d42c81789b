"""What running a practice through Airflow costs on top of the pipeline itself.

One tiny synthetic practice (flat files) is run twice from a fresh process each time: through
``airflow dags test gpdata_extract`` (the extraction DAG with that one feed: DAG parse, a run, the practice's
tasks) and through ``gpdata.pipeline.run_practice`` (the same library calls, no Airflow). Both include their
imports. The difference, divided by the number of task instances the DAG run had, is the per-task overhead.
``airflow db migrate`` (once per installation) is not counted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

_DIRECT = """
import sys
from gpdata import pipeline, settings
from gpdata.ingest.feeds import load_feeds
cfg = settings.load()
for feed in load_feeds(cfg.feeds_dir):
    pipeline.run_practice(feed, cfg, "direct")
"""


def _run(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - t0
    if out.returncode:
        raise RuntimeError(f"{cmd[:3]} failed:\n{(out.stdout + out.stderr)[-3000:]}")
    return seconds


def _home(base: Path, name: str, patients: int):
    from gpdata import settings
    from gpdata.ops.airflow_env import airflow_env
    from gpdata.privacy import keys
    from gpdata.synth import generate
    from gpdata.synth.feeds import write_synthetic_feeds

    home = base / name
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "GPDATA"))}
    env.update({"GPDATA_HOME": str(home), "GPDATA_FEEDS_DIR": str(home / "feeds")})
    cfg = settings.load(env)
    truths = generate(home, n_practices=1, n_patients=patients, events_per_patient=30, seed=5)
    write_synthetic_feeds([t.ods_code for t in truths], cfg.sources, cfg.feeds_dir, formats=["emis_csv"])
    keys.write_development_key(cfg.secrets / "dev.key")
    env.update(airflow_env(cfg, cfg.secrets / "dev.key"))
    return env


def _task_instances(env: dict) -> int:
    code = ("from airflow.models import TaskInstance\nfrom airflow.utils.session import create_session\n"
            "with create_session() as s:\n    print(s.query(TaskInstance).count())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    try:
        return int(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return 0


def measure(base: Path, patients: int = 50) -> dict:
    airflow = str(Path(sys.executable).with_name("airflow"))
    env = _home(base, "airflow", patients)
    _run([airflow, "db", "migrate"], env)
    through_airflow = _run([airflow, "dags", "test", "gpdata_extract"], env)
    tasks = _task_instances(env)
    direct_env = _home(base, "direct", patients)
    direct = _run([sys.executable, "-c", _DIRECT], direct_env)
    shutil.rmtree(base, ignore_errors=True)
    overhead = through_airflow - direct
    return {"practice_patients": patients, "dags_test_seconds": round(through_airflow, 2),
            "direct_seconds": round(direct, 2), "overhead_seconds": round(overhead, 2), "task_instances": tasks,
            "overhead_seconds_per_task": round(overhead / tasks, 2) if tasks else None,
            "note": "airflow dags test of a 1-feed DAG vs run_practice, both from a fresh process"}
