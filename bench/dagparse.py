"""DAG parse time of the extraction DAG file with a national number of feeds (6,500 practices).

Measured as the DAG processor sees it: in a fresh process with Airflow already imported, the time DagBag
takes to process dags/gpdata_extract.py (Airflow's per-file parse timeout, 30 s by default, applies to
this), next to the same with 3 feeds, as a baseline in the same run. The first parse reads every feed file;
later ones reuse the parsed YAML of unchanged files (gpdata.ingest.feeds caches it under GPDATA_HOME).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_PROBE = """
import json, sys, time
import airflow  # imported before timing, as in the DAG processor
from airflow.dag_processing.dagbag import DagBag
t0 = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
seconds = time.perf_counter() - t0
groups = {d: [len(t.ods_codes) for t in bag.dags[d].tasks if t.task_id.endswith(".plan")] for d in bag.dags}
print(json.dumps({"seconds": seconds, "errors": list(bag.import_errors.values()), "groups": groups,
                  "tasks": {d: len(bag.dags[d].task_ids) for d in bag.dags}}))
"""


def _write_feeds(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        ods = f"{chr(ord('A') + i // 100000)}{i % 100000:05d}"
        (folder / f"{ods}.yaml").write_text(
            f"ods_code: {ods}\nname: Practice {i}\nsupplier: synthetic\nformat: flatfile\ndialect: emis_csv\n"
            f"mode: incremental\nlocation: /data/inbox/{ods}\n")


def _parse(feeds: Path, home: Path, runs: int = 3) -> tuple[dict, dict]:
    """(first parse, with no cache of the feed files; best of the later parses, as the DAG processor's
    re-parses see it)."""
    env = {**os.environ, "GPDATA_FEEDS_DIR": str(feeds), "AIRFLOW_HOME": str(home / "airflow"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "GPDATA_HOME": str(home),
           "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), env_path]) if (env_path := os.environ.get(
               "PYTHONPATH")) else str(REPO / "plugins")}
    docs = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", _PROBE, str(REPO / "dags" / "gpdata_extract.py")], env=env,
                             capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"DAG parse probe failed: {out.stderr[-2000:]}")
        doc = json.loads(out.stdout.strip().splitlines()[-1])
        if doc["errors"]:
            raise RuntimeError(f"the DAG file failed to parse: {doc['errors']}")
        docs.append(doc)
    return docs[0], min(docs[1:], key=lambda d: d["seconds"])


def measure_dag_parse(n_feeds: int = 6500) -> dict:
    with tempfile.TemporaryDirectory(prefix="gpdata-dagparse-") as tmp:
        home = Path(tmp)
        _write_feeds(home / "feeds_small", 3)
        _write_feeds(home / "feeds_national", n_feeds)
        small, _ = _parse(home / "feeds_small", home)
        national, warm = _parse(home / "feeds_national", home)
    groups = national["groups"]["gpdata_extract"]
    return {
        f"dag_parse_seconds_{n_feeds}_feeds": round(national["seconds"], 3),
        f"dag_parse_seconds_{n_feeds}_feeds_reparse": round(warm["seconds"], 3),
        "dag_parse_seconds_3_feeds": round(small["seconds"], 3),
        "dag_parse_national_over_3_feeds": round(national["seconds"] / small["seconds"], 1),
        "dag_parse_mapped_groups": len(groups),
        "dag_parse_largest_group": max(groups),
        "dag_parse_tasks": national["tasks"]["gpdata_extract"],
    }


if __name__ == "__main__":
    print(json.dumps(measure_dag_parse(int(sys.argv[1]) if len(sys.argv) > 1 else 6500), indent=2))
