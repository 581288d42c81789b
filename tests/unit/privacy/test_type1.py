import pytest

from gpdata.codes import optout_codes
from gpdata.ingest.sources.fhir import read_bundles
from gpdata.privacy.type1 import apply_type1
from tests import factory as f


def _tables(tmp_path, events):
    res = [f.organization("A81001"), *f.practitioner("prac-1", "123456789012"),
           f.patient("p1", "9990000018"), f.patient("p2", "9990000026"),
           f.observation("bmi1", "p1", f.BMI, "2020-01-01", value=25.0, unit="kg/m2"),
           f.medication_issue("m1", "p1", f.GLIMEPIRIDE, "2020-01-01"),
           f.appointment("a1", "p1", "2020-01-01T09:00:00+00:00"), *events]
    f.write_bundle(tmp_path, res)
    return read_bundles(tmp_path, "A81001")


@pytest.mark.parametrize("system, dissent, withdrawn", [
    (f.SNOMED, f.DISSENT, f.WITHDRAWN),
    ("http://read.info/readv2", "9Nu0.", "9Nu1."),
    ("http://read.info/readv2", "9Nu0", "9Nu1"),
    ("http://read.info/ctv3", "XaZ89", "XaZ8A"),
])
def test_latest_code_wins_in_every_code_system(tmp_path, system, dissent, withdrawn):
    tables = _tables(tmp_path, [f.observation("d1", "p1", dissent, "2021-01-01", system=system)])
    out, counts = apply_type1(tables, optout_codes())
    assert out["patients"]["source_id"].to_pylist() == ["p2"]
    for name in ("observations", "medications", "appointments"):
        assert "p1" not in out[name]["patient_ref"].to_pylist()
    assert counts["patients_excluded"] == 1 and counts["records_excluded"]["medications"] == 1

    tables = _tables(tmp_path, [f.observation("d1", "p1", dissent, "2021-01-01", system=system),
                                f.observation("w1", "p1", withdrawn, "2022-01-01", system=system)])
    out, counts = apply_type1(tables, optout_codes())
    assert sorted(out["patients"]["source_id"].to_pylist()) == ["p1", "p2"]
    assert counts["patients_excluded"] == 0 and counts["patients_readmitted"] == 1


def test_dissent_after_withdrawal_and_same_day_fail_closed(tmp_path):
    tables = _tables(tmp_path, [f.observation("d1", "p1", f.DISSENT, "2021-01-01"),
                                f.observation("w1", "p1", f.WITHDRAWN, "2022-01-01"),
                                f.observation("d2", "p1", f.DISSENT, "2023-01-01"),
                                f.observation("d3", "p2", f.DISSENT, "2021-05-05"),
                                f.observation("w3", "p2", f.WITHDRAWN, "2021-05-05")])
    out, counts = apply_type1(tables, optout_codes())
    assert out["patients"].num_rows == 0 and counts["patients_excluded"] == 2
