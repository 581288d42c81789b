import datetime as dt
import json

import pytest

from gpdata import quality
from gpdata.codes import sctid_ok
from gpdata.model import CURATED
from tests import factory as f
from tests.test_helpers import staged_tables

TODAY = dt.date(2026, 1, 1)


def test_sctid_check():
    assert sctid_ok(f.BMI) and sctid_ok(f.DISSENT) and sctid_ok(f.GLIMEPIRIDE)
    assert not sctid_ok("60621008") and not sctid_ok("0606210") and not sctid_ok("12345")


def test_clean_batch_passes_and_dirty_rows_are_quarantined_with_reasons(tmp_path):
    extra = [f.observation("future", "p1", f.BMI, "2030-01-01", value=20.0, unit="kg/m2"),
             f.observation("prebirth", "p1", f.BMI, "1979-01-01", value=20.0, unit="kg/m2"),
             f.observation("badcode", "p1", "60621008", "2020-01-01"),
             f.observation("o1", "p1", f.BMI, "2020-01-01", value=27.5, unit="kg/m2")]  # duplicate id
    staged = staged_tables(tmp_path, extra)[0]
    result = quality.gate(staged, "A81001", "run-1", today=TODAY, max_quarantine_fraction=1.0)
    assert result.ok, result.failures
    assert result.counts["quarantined"]["observations"] == {
        "before_birth": 1, "duplicate_record": 1, "future_date": 1, "invalid_code": 1,
        "patient_invalid_nhs_number": 1}
    assert result.counts["quarantined"]["patients"] == {"invalid_nhs_number": 1}
    q = result.quarantine.to_pylist()
    assert set(q[0]) == {"practice_code", "table_name", "source_file", "source_entry", "reason", "run_id"}
    assert all(row["source_file"] == "bundle-0001.json" and row["source_entry"] >= 0 for row in q)
    assert result.passed["observations"].num_rows == 3
    assert result.counts["expectations"]["failed"] == 0 and result.counts["expectations"]["evaluated"] > 50


def test_batch_over_threshold_fails_with_readable_reasons(tmp_path):
    staged = staged_tables(tmp_path, [])[0]
    lenient = quality.gate(staged, "A81001", "run-1", today=TODAY, max_quarantine_fraction=0.05)
    assert lenient.ok  # 1 bad row of 3 is within the default allowance of 10 rows
    result = quality.gate(staged, "A81001", "run-1", today=TODAY, max_quarantine_fraction=0.05,
                          quarantine_allowance=0)
    assert not result.ok
    assert any(msg.startswith("patients: 1 of 3 rows quarantined") and "invalid_nhs_number 1" in msg
               for msg in result.failures)


def test_expectation_results_carry_no_values(tmp_path):
    obs = staged_tables(tmp_path, [])[0]["observations"].select(CURATED["observations"].names)
    results = quality.run_suites({"observations": obs}, "B82002", TODAY)  # rows say A81001
    failed = [r for r in results if not r["success"]]
    assert failed and failed[0]["expectation"] == "expect_column_values_to_be_in_set"
    text = json.dumps(results)
    assert "A81001" not in text  # the failing value is never carried
    assert set(results[0]) == {"table", "expectation", "column", "success", "unexpected_count", "element_count"}


@pytest.mark.parametrize("column", ["patient_pid", "record_id"])
def test_gx_catches_malformed_pseudonyms(tmp_path, column):
    import pyarrow as pa

    obs = staged_tables(tmp_path, [])[0]["observations"].select(CURATED["observations"].names)
    obs = obs.set_column(obs.schema.get_field_index(column), column, pa.array(["x"] * obs.num_rows))
    results = quality.run_suites({"observations": obs}, "A81001", TODAY)
    assert any(not r["success"] and r["column"] == column and r["expectation"].endswith("match_regex")
               for r in results)


def _observations(tmp_path, extra=()):
    return staged_tables(tmp_path, extra)[0]["observations"].select(CURATED["observations"].names)


def _failed(results):
    return {(r["expectation"], r["column"]) for r in results if not r["success"]}


def test_each_gx_family_catches_dirty_data_and_passes_clean(tmp_path):
    import pyarrow as pa
    import pyarrow.compute as pc

    clean = _observations(tmp_path).filter(pc.is_valid(pc.field("patient_pid")))
    assert _failed(quality.run_suites({"observations": clean}, "A81001", TODAY)) == set()

    def with_column(table, name, values):
        i = table.schema.get_field_index(name)
        return table.set_column(i, table.schema.field(i).with_nullable(True), pa.array(values, table[name].type))

    n = clean.num_rows
    cases = {
        ("expect_table_columns_to_match_set", None): clean.drop_columns(["unit"]),
        ("expect_column_values_to_not_be_null", "patient_pid"): with_column(clean, "patient_pid", [None] * n),
        ("expect_column_values_to_be_unique", "record_id"): with_column(clean, "record_id",
                                                                         [clean["record_id"][0].as_py()] * n),
        ("expect_column_max_to_be_between", "event_date"): with_column(
            clean, "event_date", [dt.date(2031, 1, 1)] * n),
        ("expect_column_min_to_be_between", "event_date"): with_column(
            clean, "event_date", [dt.date(1850, 1, 1)] * n),
        ("expect_column_values_to_be_in_set", "category"): with_column(clean, "category", ["other"] * n),
        ("expect_column_values_to_be_between", "value"): with_column(clean, "value", [500.0] * n),
        ("expect_column_values_to_be_in_set", "unit"): with_column(clean, "unit", ["lb"] * n),
    }
    for expected, table in cases.items():
        assert expected in _failed(quality.run_suites({"observations": table}, "A81001", TODAY)), expected


def test_implausible_measurements_are_quarantined(tmp_path):
    extra = [f.observation("huge", "p1", f.BMI, "2020-02-02", value=500.0, unit="kg/m2"),
             f.observation("pounds", "p1", f.BMI, "2020-02-03", value=27.0, unit="lb"),
             f.observation("fine", "p1", f.BMI, "2020-02-04", value=27.0, unit="kg/m2")]
    result = quality.gate(staged_tables(tmp_path, extra)[0], "A81001", "r", today=TODAY,
                          max_quarantine_fraction=1.0)
    q = result.counts["quarantined"]["observations"]
    assert q["implausible_value"] == 1 and q["unexpected_unit"] == 1
    assert result.ok and result.passed["observations"].num_rows == 4


def test_volume_check_against_previous_run():
    previous = {"observations": 1000, "allergies": 40}
    assert quality.volume_failures({"observations": 1100, "allergies": 5}, previous, 0.5) == []
    failures = quality.volume_failures({"observations": 400, "allergies": 40}, previous, 0.5)
    assert failures == ["observations: volume 400 rows against 1000 in the previous run (-60%, tolerance ±50%)"]
    assert quality.volume_failures({"observations": 2600}, previous, 0.5)[0].startswith("observations: volume 2600")
    assert quality.volume_failures({"observations": 1}, None, 0.5) == []
