import pytest

from gpdata.errors import SourceError
from gpdata.ingest.sources.fhir import read_bundles
from gpdata.model import ISSUE
from tests import factory as f
from tests.conftest import practice_resources


def test_bundles_become_canonical_tables(tmp_path):
    f.write_bundle(tmp_path, practice_resources())
    tables = read_bundles(tmp_path, "A81001")
    pats = tables["patients"].to_pylist()
    assert [p["source_id"] for p in pats] == ["p1", "p2", "p3", "p4"]
    p1 = pats[0]
    assert p1["nhs_number"] == "999 000 0018" and p1["postcode"] == "LS1 4AB"
    assert str(p1["birth_date"]) == "1980-05-17" and str(p1["registration_date"]) == "2001-02-03"
    assert p1["ethnic_category"] == "A" and p1["_src_file"] == "bundle-0001.json" and p1["_src_entry"] == 3
    obs = tables["observations"].to_pylist()
    assert {o["category"] for o in obs} == {"observation", "condition"}
    bmi = next(o for o in obs if o["source_id"] == "o1")
    assert (bmi["code_system"], bmi["code"], bmi["value"], bmi["unit"]) == ("snomed", f.BMI, 27.5, "kg/m2")
    assert bmi["practitioner_ref"] == "prac-1" and bmi["free_text"] == "Morwenna Quinlan weighed"
    med = tables["medications"].to_pylist()[0]
    assert (med["medication_type"], med["code_system"], med["quantity"]) == ("issue", "dmd", 28)
    appt = tables["appointments"].to_pylist()[0]
    assert appt["duration_minutes"] == 10 and appt["start_time"].hour == 9
    prac = tables["practitioners"].to_pylist()[0]
    assert (prac["sds_user_id"], prac["role_code"]) == ("123456789012", "R0260")


def test_bad_json_names_practice_and_file(tmp_path):
    f.write_bundle(tmp_path, practice_resources())
    (tmp_path / "bundle-0002.json").write_text('{"resourceType": "Bundle", "entry": [')
    with pytest.raises(SourceError) as err:
        read_bundles(tmp_path, "A81001")
    assert "practice A81001" in str(err.value) and "bundle-0002.json" in str(err.value)


def test_entry_without_resource_names_the_row(tmp_path):
    (tmp_path / "b.json").write_text('{"resourceType": "Bundle", "entry": [{"resource": {"resourceType": '
                                     '"Basic", "id": "x"}}, {"fullUrl": "y"}]}')
    with pytest.raises(SourceError, match="row 1"):
        read_bundles(tmp_path, "A81001")


def test_delivery_for_another_practice_is_refused(tmp_path):
    f.write_bundle(tmp_path, practice_resources("B82002"))
    with pytest.raises(SourceError, match="another practice"):
        read_bundles(tmp_path, "A81001")


def test_missing_or_empty_delivery(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        read_bundles(tmp_path / "nope", "A81001")
    with pytest.raises(SourceError, match="no FHIR bundles"):
        read_bundles(tmp_path, "A81001")


def _shape_variants() -> list[dict]:
    """Shapes real senders use (GP Connect access-record responses): one object where FHIR has a list, a string
    reference, an object coding, a number for a string."""
    pat = f.patient("p1", "9990000018")
    pat["generalPractitioner"] = {"reference": "Practitioner/prac-1"}
    pat["name"] = pat["name"][0]
    pat["address"] = pat["address"][0]
    pat["identifier"] = pat["identifier"][0]
    obs = f.observation("o1", "p1", f.BMI, "2020-01-01", value="27.5", unit="kg/m2")
    obs["subject"] = "Patient/p1"
    obs["code"]["coding"] = obs["code"]["coding"][0]
    cond = f.condition("c1", "p1", f.HYPERTENSION, "2019-05-05")
    cond["code"]["coding"][0]["code"] = int(f.HYPERTENSION)
    return [f.organization("A81001"), *f.practitioner("prac-1", "123456789012"), pat, obs, cond]


def test_shape_variants_are_read(tmp_path):
    f.write_bundle(tmp_path, _shape_variants())
    tables = read_bundles(tmp_path, "A81001")
    pat = tables["patients"].to_pylist()[0]
    assert (pat["nhs_number"], pat["family_name"], pat["postcode"], pat["gp_ref"]) == \
        ("9990000018", "Testperson", "LS1 4AB", "prac-1")
    obs = {o["source_id"]: o for o in tables["observations"].to_pylist()}
    assert (obs["o1"]["patient_ref"], obs["o1"]["code"], obs["o1"]["value"]) == ("p1", f.BMI, 27.5)
    assert obs["c1"]["code"] == f.HYPERTENSION
    assert all(ISSUE not in t.column_names for t in tables.values())


def test_unreadable_entry_is_quarantined_by_entry_or_named_in_strict_mode(tmp_path):
    resources = _shape_variants()
    resources[3]["name"] = 12345                       # a name that is a number: no way to read it
    resources[4]["subject"] = {"reference": ["Patient/p1"]}
    f.write_bundle(tmp_path, resources)
    report: dict = {}
    tables = read_bundles(tmp_path, "A81001", report=report)
    assert tables["patients"][ISSUE].to_pylist() == ["unreadable_entry"]
    assert tables["patients"]["nhs_number"].to_pylist() == [None]  # nothing else of it is kept
    assert tables["observations"][ISSUE].to_pylist() == ["unreadable_entry", None]
    assert report["unreadable_entries"] == {"Patient.name": 1, "Observation.subject.reference": 1}
    with pytest.raises(SourceError) as err:
        read_bundles(tmp_path, "A81001", strict=True)
    assert str(err.value) == ("practice A81001: file bundle-0001.json: row 3: unreadable element Patient.name")


def test_unmapped_resource_types_are_counted(tmp_path):
    f.write_bundle(tmp_path, [*practice_resources(), {"resourceType": "Encounter", "id": "e1"},
                              {"resourceType": "Encounter", "id": "e2"}, {"resourceType": "Location", "id": "l"}])
    report: dict = {}
    read_bundles(tmp_path, "A81001", report=report)
    assert report["unmapped_resources"] == {"Encounter": 2, "Location": 1}
