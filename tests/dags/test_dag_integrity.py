"""The DAG folder imports cleanly through Airflow's own loader and has the expected shape."""

import os
import subprocess
import sys

import pytest

from gpdata.airflow_env import REPO_ROOT


@pytest.fixture
def airflow_env(home, monkeypatch):
    feeds = home / "feeds"
    feeds.mkdir()
    for ods in ("A81001", "B82002"):
        (feeds / f"{ods}.yaml").write_text(f"ods_code: {ods}\nname: Practice {ods}\nlocation: ../sources/{ods}\n")
    (feeds / "C83003.yaml").write_text("ods_code: C83003\nname: Inactive\nlocation: x\nactive: false\n")
    monkeypatch.setenv("AIRFLOW_HOME", str(home / "airflow"))
    monkeypatch.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    monkeypatch.syspath_prepend(str(REPO_ROOT / "plugins"))
    return home


def _dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO_ROOT / "dags"))


def test_dags_import_without_errors_and_name_tasks_by_ods_code(airflow_env):
    bag = _dagbag()
    assert bag.import_errors == {}
    dag = bag.dags["gpdata_extract"]
    assert {"A81001.extract", "A81001.quality", "A81001.commit", "B82002.commit"} <= set(dag.task_ids)
    assert not any(t.startswith("C83003") for t in dag.task_ids)  # inactive feeds do not run
    assert dag.task_dict["A81001.quality"].upstream_task_ids == {"A81001.extract"}
    assert "gpdata" in dag.tags and dag.doc_md
    release = bag.dags["gpdata_release"]
    assert release.task_ids == ["release"] and "release" in release.tags
    assert [a.name for a in release.timetable.asset_condition.objects] == ["gpdata_extraction_run"]


def test_broken_feed_is_an_import_error_naming_file_and_field(airflow_env):
    (airflow_env / "feeds" / "D84004.yaml").write_text("ods_code: D8400\nname: x\nlocation: y\n")
    errors = _dagbag().import_errors
    assert len(errors) == 1  # the extraction DAG; the release DAG reads no feed and still loads
    message = next(iter(errors.values()))
    assert "D84004.yaml" in message and "field 'ods_code'" in message


def test_dag_file_parse_does_not_import_heavy_libraries(airflow_env):
    plugins, dag_file = str(REPO_ROOT / "plugins"), str(REPO_ROOT / "dags" / "gpdata_extract.py")
    heavy = ("pyarrow", "deltalake", "great_expectations", "pandas")
    code = (f"import sys, runpy; sys.path.insert(0, {plugins!r}); runpy.run_path({dag_file!r}); "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
