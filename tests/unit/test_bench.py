"""`make bench` is never part of `make test`; this runs its measurement machinery at a tiny size (in this
process, no Airflow, no DAG parse) so a broken bench is caught here."""

import json
import os

import pytest

REQUIRED = ("flatfile_pipeline_over_limit", "fhir_pipeline_over_limit", "pipeline_over_naive",
            "peak_rss_mib_60k_patients", "cpu_count")


@pytest.fixture
def clean_env():
    before = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(before)


def test_bench_machinery_writes_every_headline_key(tmp_path, clean_env, monkeypatch):
    import bench.__main__ as bench

    monkeypatch.setattr(bench, "IN_PROCESS", True)
    plan = {"sizes": [12], "practices": [], "practice_patients": 12, "naive_patients": [12],
            "fhir_max_patients": 12, "profile_patients": 0, "events_per_patient": 4.0, "extra_dialects": []}
    doc = bench.run(plan, tmp_path / "cache", tmp_path / "results", airflow=False, dag_parse=False, profile=False)
    written = json.loads((tmp_path / "results" / "latest.json").read_text())
    assert written["flatfile_pipeline_over_limit"] == doc["flatfile_pipeline_over_limit"]
    for key in REQUIRED:
        assert key in written, key
    # the tiny run is not the 60,000-patient case: that key is present but empty; the others are measured
    assert written["peak_rss_mib_60k_patients"] is None and written["peak_rss_mib_0k_patients"] > 0
    for key in ("flatfile_pipeline_over_limit", "fhir_pipeline_over_limit", "pipeline_over_naive", "cpu_count"):
        assert written[key] > 0, key
    formats = {r["format"] for r in written["sizes"]}
    assert formats == {"emis_csv", "fhir"}
    for row in written["sizes"]:
        assert row["rows"] > 0 and row["limit_rows_per_second"] > 0 and row["pipeline_rows_per_second"] > 0
        assert set(row["stages"]) == set(bench.STAGES)
    assert [t[0] for t in written["targets"]][:3] == list(REQUIRED[:3])
    md = (tmp_path / "results" / "latest.md").read_text()
    assert "pipeline/limit" in md and "Rerun" in md
