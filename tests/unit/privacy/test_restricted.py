"""Restricted codes are never collected, numeric values only where a measurement is expected, and an NHS number
sent as a number is caught by both leak checks (the in-pipeline guard and the output scanner)."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpdata import codes, pipeline, settings, store
from gpdata.errors import GpdataError
from gpdata.ingest.feeds import Feed
from gpdata.ops.leakscan import Identifiers, scan_tree
from gpdata.privacy import deid, nhsnumber
from tests import factory as f
from tests.conftest import practice_resources
from tests.test_helpers import staged_tables

READ2 = "http://read.info/readv2"
CTV3 = "http://read.info/ctv3"
# The codes the issue saw reach the store, and a Read v2 / CTV3 form of each category.
LEGAL = [("52637005", f.SNOMED, "hfea_fertility_treatment"), ("407377005", f.SNOMED, "gender_reassignment"),
         ("Eu640", READ2, "gender_reassignment"), ("Eu64.00", CTV3, "gender_reassignment"),
         ("7E0A3", READ2, "hfea_fertility_treatment"), ("7E0A3", CTV3, "hfea_fertility_treatment")]
NHS_AS_VALUE = 9434765919  # a valid NHS number (Modulus 11), not in any delivery
UNRESTRICTED_READ = "246.."  # an ordinary Read v2 code (O/E - blood pressure reading)


def test_the_configured_categories_have_every_form():
    restricted = codes.restricted_codes()
    assert {"hfea_fertility_treatment", "gender_reassignment", "identifying"} <= set(restricted.categories)
    for code, _, category in LEGAL:
        assert restricted.category(code) == category


@given(st.sampled_from(LEGAL), st.sampled_from(["", " ", "\u00a0"]), st.booleans())
def test_a_restricted_code_is_found_in_any_delivered_form(item, pad, dots):
    code, _, category = item
    if dots and len(code) < 5:
        code = code.ljust(5, ".")
    assert codes.restricted_codes().category(f"{pad}{code}{pad}") == category


@given(st.from_regex(r"[0-9]{6,12}", fullmatch=True))
def test_other_codes_are_not_restricted(code):
    restricted = codes.restricted_codes()
    if code not in {c for cs in restricted.categories.values() for c in cs}:
        assert restricted.category(code) is None


def test_restricted_records_never_leave_extraction_and_are_counted(tmp_path):
    extra = [f.observation(f"r{i}", "p1", code, "2020-01-01", system=system) for i, (code, system, _) in
             enumerate(LEGAL)]
    staged, counts, _ = staged_tables(tmp_path, extra)
    left = set(staged["observations"]["code"].to_pylist())
    assert not left & {c for c, _, _ in LEGAL}
    assert counts["restricted_code_records"]["observations"] == len(LEGAL)
    assert counts["restricted_code_categories"] == {"hfea_fertility_treatment": 3, "gender_reassignment": 3}


def test_values_are_kept_for_measurements_only(tmp_path):
    extra = [f.observation("v1", "p1", UNRESTRICTED_READ, "2020-01-01", system=READ2, value=NHS_AS_VALUE,
                           unit="1"),
             f.observation("v2", "p2", f.HYPERTENSION, "2020-01-01", value=12.0, unit="mm"),
             f.observation("v3", "p2", f.BMI, "2020-02-01", value=NHS_AS_VALUE, unit="kg/m2")]
    staged, counts, _ = staged_tables(tmp_path, extra)
    obs = {r["code"]: r for r in staged["observations"].to_pylist() if r["_src_entry"] is not None}
    assert obs[UNRESTRICTED_READ]["value"] is None and obs[UNRESTRICTED_READ]["unit"] is None
    assert obs[f.HYPERTENSION]["value"] is None
    assert {r["value"] for r in staged["observations"].to_pylist() if r["code"] == f.BMI} >= {27.5, 30.0}
    assert NHS_AS_VALUE not in staged["observations"]["value"].to_pylist()
    assert counts["values_dropped"] == 3 and counts["numeric_nhs_numbers_dropped"] == 2


@given(st.integers(min_value=10**9, max_value=10**10 - 1))
def test_numeric_check_agrees_with_the_nhs_number_check(n):
    expected = nhsnumber.is_valid(pa.array([str(n)])).to_pylist()[0]
    assert nhsnumber.in_numbers(pa.array([n])).to_pylist() == [expected]
    assert nhsnumber.in_numbers(pa.array([float(n)])).to_pylist() == [expected]
    assert nhsnumber.in_numbers(pa.array([n + 0.5])).to_pylist() == [False]


def test_the_in_pipeline_guard_refuses_a_planted_number():
    table = pa.table({"value": pa.array([27.5, float(NHS_AS_VALUE)]), "code": ["a", "b"]})
    with pytest.raises(GpdataError, match=r"practice A81001: stage extract: .*observations.value: 1 value") as err:
        deid.guard_numeric({"observations": table}, "A81001")
    assert str(NHS_AS_VALUE) not in str(err.value)
    deid.guard_numeric({"observations": table.slice(0, 1)}, "A81001")  # a clean table passes


def test_the_output_scanner_finds_a_planted_number(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    pq.write_table(pa.table({"value": [27.5, 30.0], "n": pa.array([3, 4], pa.int32())}), out / "clean.parquet")
    assert scan_tree([out], Identifiers()) == []
    pq.write_table(pa.table({"value": [27.5, float(NHS_AS_VALUE)]}), out / "value.parquet")
    pq.write_table(pa.table({"quantity": pa.array([NHS_AS_VALUE], pa.int64())}), out / "int.parquet")
    found = sorted(str(x).split("/")[-1] for x in scan_tree([out], Identifiers()))
    assert found == ["int.parquet: column quantity: nhs_number", "value.parquet: column value: nhs_number"]


def test_through_the_pipeline_the_store_holds_neither(home):
    src = home / "sources" / "A81001"
    extra = [f.observation(f"r{i}", "p1", code, "2020-01-01", system=system) for i, (code, system, _) in
             enumerate(LEGAL)]
    extra.append(f.observation("v1", "p2", UNRESTRICTED_READ, "2020-01-01", system=READ2, value=NHS_AS_VALUE,
                               unit="1"))
    f.write_bundle(src, practice_resources() + extra)
    cfg = settings.load()
    counts = pipeline.run_practice(Feed(ods_code="A81001", name="p", location=str(src),
                                        max_quarantine_fraction=0.5), cfg, "r1")
    obs = store.read_table(cfg.store, "observations")
    assert not set(obs["code"].to_pylist()) & {c for c, _, _ in LEGAL}
    assert NHS_AS_VALUE not in obs["value"].to_pylist()
    assert counts["restricted_code_categories"] == {"hfea_fertility_treatment": 3, "gender_reassignment": 3}
    assert scan_tree([cfg.store], Identifiers()) == []
