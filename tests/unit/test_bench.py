"""`make bench` is never part of `make test`; this runs its measurement machinery at a tiny size (in this
process, no Airflow, no DAG parse) so a broken bench is caught here."""

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

REQUIRED = ("flatfile_pipeline_over_limit", "fhir_pipeline_over_limit", "pipeline_over_naive_min",
            "pipeline_over_naive", "peak_rss_mib_60k_patients", "task_peak_rss_mib_60k_patients",
            "task_peak_rss_mib_120k_patients", "cpu_count", "fixed_cpu_seconds_per_practice",
            "daily_increment_core_hours", "baseline_core_hours", "rows_per_cpu_second_0_1m", "rows_per_cpu_second_6m")


@pytest.fixture
def clean_env():
    before = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(before)


def test_bench_machinery_writes_every_headline_key(tmp_path, clean_env, monkeypatch):
    import bench.__main__ as bench
    from bench.worker import FHIR_LIMITS

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
    assert written["task_peak_rss_mib_60k_patients"] is None and written["task_peak_rss_mib_120k_patients"] is None
    for key in ("flatfile_pipeline_over_limit", "fhir_pipeline_over_limit", "pipeline_over_naive", "cpu_count",
                "pipeline_over_naive_min"):
        assert written[key] > 0, key
    formats = {r["format"] for r in written["sizes"]}
    assert formats == {"emis_csv", "fhir"}
    for row in written["sizes"]:
        assert row["rows"] > 0 and row["limit_rows_per_second"] > 0 and row["pipeline_rows_per_second"] > 0
        assert set(row["stages"]) == set(bench.STAGES)
        # each stage's peak is its own (the peak reset between stages), so no stage's exceeds the process's
        assert set(row["stage_peak_rss_mib"]) == {"extract", "check", "commit"}
        assert 0 < row["task_peak_rss_mib"] == max(row["stage_peak_rss_mib"].values()) <= row["peak_rss_mib"] + 1
    fhir = next(row for row in written["sizes"] if row["format"] == "fhir")
    rates = fhir["fhir_limit_candidates"]  # name -> rows/s, fastest first; the fastest is the limit
    assert set(rates) == set(FHIR_LIMITS) and list(rates)[0] == fhir["fhir_limit"]
    assert rates[fhir["fhir_limit"]] == fhir["limit_rows_per_second"] == max(rates.values())
    assert written["fhir_limit"] == fhir["fhir_limit"]
    assert set(fhir["fhir_limit_candidates_per_cpu_second"]) == set(rates)
    assert all(v > 0 for v in fhir["fhir_limit_candidates_per_cpu_second"].values())
    assert [t[0] for t in written["targets"]][:3] == list(REQUIRED[:3])
    md = (tmp_path / "results" / "latest.md").read_text()
    assert "pipeline/limit" in md and "Rerun" in md and "FHIR limit candidates" in md


@pytest.fixture(scope="module")
def fhir_folder(tmp_path_factory):
    """One tiny generated practice's FHIR bundles, as `make bench` gets them."""
    from bench.inputs import practice_set

    ps = practice_set(tmp_path_factory.mktemp("bench-input"), 1, 30, 4.0, ("fhir",))
    return ps.folder(ps.ods_codes[0], "fhir")


def _resources_by_type(folder):
    by_type = {}
    for path in sorted(folder.glob("*.json")):
        for entry in json.loads(path.read_text())["entry"]:
            rtype = entry["resource"]["resourceType"]
            by_type[rtype] = by_type.get(rtype, 0) + 1
    return by_type


def _parquet_rows(out):
    import pyarrow.parquet as pq

    return {p.stem: pq.ParquetFile(p).metadata.num_rows for p in out.glob("*.parquet")}


def test_every_fhir_limit_candidate_writes_every_resource(fhir_folder, tmp_path):
    """Each candidate limit writes as many rows per resource type as the bundles hold resources of that type (a
    candidate that drops resources, or a whole type, fails here), and says so in its own count."""
    from bench.worker import FHIR_LIMITS

    expected = _resources_by_type(fhir_folder)
    assert len(expected) > 5 and sum(expected.values()) > 100  # the generator's spread of types, not one
    for name, candidate in FHIR_LIMITS.items():
        counted = candidate(fhir_folder, tmp_path / name)
        assert _parquet_rows(tmp_path / name) == expected, name
        assert counted == expected, name


def test_pyarrow_json_limit_reads_bundles_written_over_several_lines(fhir_folder, tmp_path, monkeypatch):
    """pyarrow's JSON reader splits its blocks at newlines unless told a value may span lines: an indented
    bundle, read in blocks smaller than one type's resources, loses or breaks none of them."""
    from bench import worker
    from bench.worker import fhir_pyarrow_json

    monkeypatch.setattr(worker, "FHIR_JSON_BLOCK_BYTES", 4096)

    pretty = tmp_path / "pretty"
    pretty.mkdir()
    for path in fhir_folder.glob("*.json"):
        (pretty / path.name).write_text(json.dumps(json.loads(path.read_text()), indent=2))
    expected = _resources_by_type(fhir_folder)
    assert fhir_pyarrow_json(pretty, tmp_path / "out") == expected
    assert _parquet_rows(tmp_path / "out") == expected


def test_fhir_limit_is_the_fastest_candidate(fhir_folder, tmp_path):
    from bench.worker import FHIR_LIMITS, run_limit

    found = run_limit(fhir_folder, "fhir", tmp_path / "work")
    assert set(found["candidates"]) == set(FHIR_LIMITS)
    assert found["seconds"] == min(c["seconds"] for c in found["candidates"].values())
    assert found["candidates"][found["limit"]]["seconds"] == found["seconds"]
    assert {c["rows"] for c in found["candidates"].values()} == {sum(_resources_by_type(fhir_folder).values())}
    assert not (tmp_path / "work").exists()  # the written Parquet is removed after the measurement


def test_the_daily_increment_runs_each_practice_once_in_chunks_and_projects_from_its_cpu(tmp_path, clean_env):
    import bench.__main__ as bench
    from bench import increment
    from bench.inputs import practice_set

    ps = practice_set(tmp_path / "cache", 3, 30, 8.0, ("fhir", "emis_csv"))
    got = increment.measure(ps, tmp_path / "work", fraction=0.1, workers=1, register_practices=4)
    assert got["practices"] == 3 and got["committed"] == 3 and got["failed"] == 0
    assert got["chunks"] == 1 and got["alone"] == 0  # baselined, small deliveries: one chunk
    assert got["rows"] > 0 and got["cpu_seconds"] > 0 and got["max_peak_rss_mib"] > 0
    reg = got["national_register"]  # the register at national size, here 4 practices: a check after each
    # pipeline.CHECK_SECONDS of the chunk's commits (one, unless this machine is very slow), and per process a
    # first read and one after the chunk's dissents are recorded
    checks = got["commit_checks"]
    assert reg["practices"] == 4 and 1 <= checks <= 3 and got["register_cpu_seconds_per_practice"] == round(
        (reg["check_cpu_seconds"] * checks + reg["first_read_cpu_seconds"] + reg["changed_read_cpu_seconds"]) / 3, 3)
    per_practice = got["cpu_seconds_per_practice"] + got["register_cpu_seconds_per_practice"]
    assert got["national_core_hours"] == round(per_practice * 6500 / 3600, 3)
    doc = {"increment": got, "airflow": {"overhead_seconds_per_task": 2.0}, "sizes": [],
           "national_projection": {"baseline": {"core_hours": 5.0}}}
    keys = bench.cadence(doc)
    assert keys["fixed_cpu_seconds_per_practice"] == round(per_practice + 2.0 / 3, 3)
    assert keys["daily_increment_core_hours"] == round(keys["fixed_cpu_seconds_per_practice"] * 6500 / 3600, 3)
    assert keys["baseline_core_hours"] == 5.0 and keys["rows_per_cpu_second_6m"] is None


def test_bench_stages_runs_each_stage_in_its_own_process_and_reports_its_memory(tmp_path, clean_env):
    """``python -m bench.stages``: one JSON line per stage, with the stage's own CPU and peak RSS; the practice
    is committed at the end (the three stages ran against one home)."""
    import json
    import subprocess
    import sys

    from bench.inputs import practice_set

    ps = practice_set(tmp_path / "cache", 1, 30, 8.0, ("fhir", "emis_csv"))
    out = subprocess.run([sys.executable, "-m", "bench.stages", str(ps.home), ps.ods_codes[0], "emis_csv",
                          str(tmp_path / "work")], capture_output=True, text=True, cwd=REPO, check=True)
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["stage"] for r in lines] == ["extract", "check", "commit"]
    for r in lines:
        assert r["peak_rss_mib"] >= r["rss_before_mib"] > 0 and r["cpu"] >= 0
    assert "commit" in lines[-1]["seconds"]
    assert json.loads((tmp_path / "work" / "store" / "_manifests" / ps.ods_codes[0] / "latest.json").read_text())[
        "status"] == "committed"


def test_partition_write_writes_the_file_times_over_into_one_partition_and_reports_its_memory(tmp_path, capsys):
    """``python -m bench.partition_write``: the direct measurement of the commit's memory quoted in performance.md."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench import partition_write
    from gpdata import store
    from gpdata.model import CURATED, PARTITION

    schema = CURATED["observations"]
    rows = pa.table({f.name: pa.nulls(7, f.type) if f.nullable else pa.array(["v1"] * 7).cast(f.type)
                     for f in schema if f.name != PARTITION})
    pq.write_table(rows, tmp_path / "obs.parquet")

    assert partition_write.main([str(tmp_path / "obs.parquet"), "observations", "3", str(tmp_path / "store")]) == 0

    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["rows"] == 21 and out["peak_rss_mib"] >= out["rss_before_mib"] > 0 and out["cpu"] >= 0
    assert store.row_counts(tmp_path / "store", "A81651")["observations"] == 21


def test_register_writes_the_practices_files_and_reports_the_cost_of_reading_them(tmp_path, capsys):
    """``python -m bench.register``: the national register's read cost quoted in performance.md."""
    import json

    from bench import register
    from gpdata.privacy import type1

    assert register.main([str(tmp_path / "store"), "7", "20", "3"]) == 0

    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(type1.register_files(tmp_path / "store")) == 7
    active, version = type1.active_dissenters(tmp_path / "store", register.KEY_VERSION)
    # one in 20 is a withdrawal; before each of the 2 reads after changes and each of the 2 checks, all 7 practices
    # record one more dissent; each check finds the one of its practice's patients among them
    assert out["active_dissenters"] == len(active) == 7 * 19 + 4 * 7 and version == "v1"
    assert out["practices"] == 7 and out["changed_between_reads"] == 7 and out["dissented_since_found"] == 2
    assert min(out[f"{read}_read_cpu_seconds"] for read in ("first", "later", "changed")) >= 0
    assert out["check_cpu_seconds"] >= 0


def test_the_chunk_size_fit_recovers_a_fixed_and_a_per_practice_cost():
    from bench.chunksize import fit

    assert fit([(10, 12 / 10 + 0.5), (25, 12 / 25 + 0.5), (50, 12 / 50 + 0.5)]) == {
        "fixed_cpu_seconds_per_chunk": 12.0, "cpu_seconds_per_practice": 0.5}


def test_chunksize_runs_the_same_increments_in_chunks_of_each_size(tmp_path, clean_env):
    """``python -m bench.chunksize``: every practice committed at each size, from the same prepared state."""
    from bench import chunksize

    got = chunksize.measure(tmp_path, practices=2, sizes=(1, 2))
    assert got["practices"] == 2 and [r["size"] for r in got["sizes"]] == [1, 2]
    assert [r["chunks"] for r in got["sizes"]] == [2, 1]
    assert all(r["cpu_seconds_per_practice"] > 0 and r["max_peak_rss_mib"] > 0 for r in got["sizes"])
    assert set(got["fit"]) == {"fixed_cpu_seconds_per_chunk", "cpu_seconds_per_practice"}
    assert not (tmp_path / "work").exists()


def test_jointwrite_runs_the_same_increments_written_together_and_alone(tmp_path, clean_env):
    """``python -m bench.jointwrite``: every practice committed both ways, from the same prepared state."""
    from bench import jointwrite

    got = jointwrite.measure(tmp_path, practices=2, rounds=1)
    assert got["practices"] == 2 and got["alone_over_together"] > 0
    assert got["delta_commits_per_table"] == {"together": 1, "alone": 2}
    assert all(len(v) == 1 and v[0] > 0 for v in got["cpu_seconds_per_practice"].values())
    assert not (tmp_path / "work").exists()
