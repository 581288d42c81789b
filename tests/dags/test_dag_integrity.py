"""The DAG folder imports cleanly through Airflow's own loader and has the expected shape."""

import logging
import os
import subprocess
import sys

import pytest

from gpdata.ops.airflow_env import REPO_ROOT


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
    stages = {f"practices_001.practice.{s}" for s in ("extract", "quality", "commit")}
    assert stages | {"practices_001.plan", "practices_001.chunk"} <= set(dag.task_ids)
    assert dag.task_dict["practices_001.plan"].ods_codes == ["A81001", "B82002"]  # inactive C83003 does not run
    # the per-practice group runs the plan's practices alone, the chunk task its chunks: each mapped at run time
    [(alone, key)] = dag.task_group_dict["practices_001.practice"]._expand_input.value["ods_code"].iter_references()
    assert alone.task_id == "practices_001.alone" and key == "return_value"
    assert dag.task_dict["practices_001.alone"].upstream_task_ids == {"practices_001.plan"}
    chunk = dag.task_dict["practices_001.chunk"]
    [(chunks, _)] = chunk.expand_input.value["ods_codes"].iter_references()
    assert chunks.task_id == "practices_001.chunks" and chunk.upstream_task_ids == {"practices_001.chunks"}
    quality = dag.task_dict["practices_001.practice.quality"]
    assert quality.upstream_task_ids == {"practices_001.practice.extract", "practices_001.alone"}
    assert dag.task_dict["practices_001.practice.extract"].map_index_template == "{{ task.ods_code }}"
    leaf = dag.task_dict["all_practices_ok"]
    assert {"practices_001.practice.commit", "practices_001.chunk"} <= leaf.upstream_task_ids
    assert "gpdata" in dag.tags and dag.doc_md and "force" in dag.params
    release = bag.dags["gpdata_release"]
    assert release.task_ids == ["release"] and "release" in release.tags
    assert [a.name for a in release.timetable.asset_condition.objects] == ["gpdata_extraction_run"]


def test_practices_are_split_into_groups_under_max_map_length_and_by_schedule(airflow_env, monkeypatch):
    feeds = airflow_env / "feeds"
    for n in range(5):
        (feeds / f"E8500{n}.yaml").write_text(f"ods_code: E8500{n}\nname: P\nlocation: x\n")
    (feeds / "F86006.yaml").write_text("ods_code: F86006\nname: P\nlocation: x\nschedule: '0 3 * * 1'\n")
    monkeypatch.setenv("AIRFLOW__CORE__MAX_MAP_LENGTH", "3")
    monkeypatch.setenv("GPDATA_MAP_BATCH", "1000")  # asks for more than Airflow allows: capped at 3
    bag = _dagbag()
    assert bag.import_errors == {}
    daily = bag.dags["gpdata_extract"]
    groups = {g: daily.task_dict[f"{g}.plan"].ods_codes for g in daily.task_group_dict if "." not in g}
    assert list(groups) == ["practices_001", "practices_002", "practices_003"]
    assert [len(v) for v in groups.values()] == [3, 3, 1]
    assert sorted(sum(groups.values(), [])) == ["A81001", "B82002", *[f"E8500{n}" for n in range(5)]]
    weekly = bag.dags["gpdata_extract_0_3_1"]
    assert weekly.task_dict["practices_001.plan"].ods_codes == ["F86006"]


def test_a_broken_feed_disables_that_feed_only_and_is_shown(airflow_env, caplog):
    feeds = airflow_env / "feeds"
    (feeds / "D84004.yaml").write_text("ods_code: D8400\nname: x\nlocation: y\n")  # a typo'd ODS code
    (feeds / "E85005.yaml").write_text("ods_code: E85005\nname: x\nlocaton: y\n")  # a typo'd field name
    (feeds / "good-too.yaml").write_text("ods_code: F86006\nname: Practice F\nlocation: ../sources/F86006\n")
    with caplog.at_level(logging.WARNING, logger="gpdata.airflow"):
        bag = _dagbag()
    assert bag.import_errors == {}
    dag = bag.dags["gpdata_extract"]
    # the good practices still run, the broken ones do not
    assert dag.task_dict["practices_001.plan"].ods_codes == ["A81001", "B82002", "F86006"]
    # shown: a warning at parse time and the DAG's documentation, each naming the file, the field and the cause
    warned = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert any("D84004.yaml" in w and "field 'ods_code'" in w for w in warned), warned
    assert any("E85005.yaml" in w and "field 'locaton': unknown field" in w for w in warned), warned
    assert "D84004.yaml" in dag.doc_md and "field 'ods_code'" in dag.doc_md and "E85005.yaml" in dag.doc_md
    assert "Feed files left out (2)" in dag.doc_md
    for other in ("gpdata_release", "gpdata_disseminate"):
        assert other in bag.dags


def test_dags_start_unpaused_and_never_catch_up_unless_asked(airflow_env, monkeypatch):
    bag = _dagbag()
    for dag_id in ("gpdata_extract", "gpdata_release", "gpdata_disseminate"):
        dag = bag.dags[dag_id]
        assert dag.is_paused_upon_creation is False and dag.catchup is False, dag_id
    assert "Feed files left out" not in bag.dags["gpdata_extract"].doc_md
    monkeypatch.setenv("GPDATA_CATCHUP", "true")
    assert _dagbag().dags["gpdata_extract"].catchup is True


def test_dag_file_parse_does_not_import_heavy_libraries(airflow_env):
    plugins, dag_file = str(REPO_ROOT / "plugins"), str(REPO_ROOT / "dags" / "gpdata_extract.py")
    heavy = ("pyarrow", "deltalake", "great_expectations", "pandas")
    code = (f"import sys, runpy; sys.path.insert(0, {plugins!r}); runpy.run_path({dag_file!r}); "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
