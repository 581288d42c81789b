"""The first hour: after a (small) `make demo`, the tools see the demo's state with no flags or variables.

The demo runs as a subprocess (3 practices of 80 patients) with GPDATA_HOME and the secrets folder in a temporary
folder that plays the checkout. Then `gpdata feeds list`, `keys show`, `release list`, `disseminate` and
`airflow dags list` run with a clean environment: only PATH and the two variables the venv's activate script
sets (GPDATA_HOME, AIRFLOW_HOME); and, with PATH alone, from the "checkout" (./var). PYTHONPATH is passed on
when the test session has one (a worktree's code on the shared venv), never anything else.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpdata import settings
from gpdata.privacy import keys
from gpdata.store import release

pytestmark = pytest.mark.system

BIN = Path(sys.executable).parent
PRACTICES = 3


def _base_env() -> dict[str, str]:
    env = {"PATH": f"{BIN}{os.pathsep}/usr/bin{os.pathsep}/bin", "GX_ANALYTICS_ENABLED": "False"}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path) -> str:
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{(proc.stdout + proc.stderr)[-4000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    checkout = tmp_path_factory.mktemp("checkout")
    home = checkout / "var"
    env = {**_base_env(), "GPDATA_HOME": str(home), "GPDATA_SECRETS_DIR": str(checkout / ".secrets")}
    output = _run([sys.executable, "-m", "gpdata.ops.demo", "--practices", str(PRACTICES), "--patients", "80"],
                  env, checkout)
    activated = {**_base_env(), "GPDATA_HOME": str(home), "AIRFLOW_HOME": str(home / "airflow")}
    return {"checkout": checkout, "home": home, "output": output, "activated": activated,
            "cfg": settings.load({"GPDATA_HOME": str(home)})}


def test_the_demo_reports_each_practice_and_stage_and_writes_its_settings(demo):
    feeds = sorted(p.stem for p in demo["cfg"].feeds_dir.glob("*.yaml"))
    assert len(feeds) == PRACTICES
    for ods in feeds:
        for stage in ("extract", "quality", "commit"):
            assert f"[gpdata demo]   {ods} {stage}: done in " in demo["output"], (ods, stage)
    written = settings.read_settings_file({"GPDATA_HOME": str(demo["home"])})
    assert written["GPDATA_MASTER_KEY_FILE"] == str(demo["checkout"] / ".secrets" / "dev-master.key")
    assert written["GPDATA_FEEDS_DIR"] == str(demo["home"] / "feeds")


def test_the_cli_sees_the_demo_in_an_activated_shell_from_any_folder(demo, tmp_path):
    env, cfg = demo["activated"], demo["cfg"]
    feeds = _run(["gpdata", "feeds", "list"], env, tmp_path)
    assert sorted(line.split()[0] for line in feeds.splitlines()[1:]) == sorted(
        p.stem for p in cfg.feeds_dir.glob("*.yaml"))
    shown = _run(["gpdata", "keys", "show"], env, tmp_path)
    key = keys.load_master_key({keys.KEY_FILE_ENV: str(demo["checkout"] / ".secrets" / "dev-master.key")})
    assert "development key" in shown and key.check_value() in shown
    latest = release.latest_release(cfg.store)["release_id"]
    assert latest in _run(["gpdata", "release", "list"], env, tmp_path)
    disseminated = _run(["gpdata", "disseminate", "--requested-by", "test"], env, tmp_path)
    assert f"DARS-DEMO-VAX: release {latest} -> {cfg.extracts / 'DARS-DEMO-VAX' / latest}" in disseminated


def test_airflow_dags_list_shows_the_project_not_the_examples(demo, tmp_path):
    listed = _json_tail(_run(["airflow", "dags", "list", "-o", "json"], demo["activated"], tmp_path))
    assert sorted(d["dag_id"] for d in listed) == ["gpdata_disseminate", "gpdata_extract", "gpdata_release"]


def test_without_activating_path_alone_works_from_the_checkout(demo):
    env, checkout = _base_env(), demo["checkout"]
    feeds = _run(["gpdata", "feeds", "list"], env, checkout)
    assert sorted(line.split()[0] for line in feeds.splitlines()[1:]) == sorted(
        p.stem for p in demo["cfg"].feeds_dir.glob("*.yaml"))
    listed = _json_tail(_run(["gpdata", "airflow", "dags", "list", "-o", "json"], env, checkout))
    assert sorted(d["dag_id"] for d in listed) == ["gpdata_disseminate", "gpdata_extract", "gpdata_release"]


def _json_tail(output: str) -> list[dict]:
    """The JSON list `airflow ... -o json` prints after any warnings."""
    return json.loads(output[output.index("[{"):output.rindex("}]") + 2])
