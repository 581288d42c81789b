import json

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


PARACETAMOL = "323509004"  # a dm+d VMP that is also a SNOMED CT concept
NULL_FLAVOR = {"coding": [{"system": "http://hl7.org/fhir/v3/NullFlavor", "code": "UNK", "display": "unknown"}]}


def _pat_with(*resources) -> list[dict]:
    return [f.organization("A81001"), *f.practitioner("prac-1", "123456789012"), f.patient("p1", "9990000018"),
            *resources]


def test_medication_reference_in_the_bundle_and_contained(tmp_path):
    med = {"resourceType": "Medication", "id": "med-1",
           "code": {"coding": [{"system": "http://snomed.info/sct", "code": f" {PARACETAMOL}"}]}}
    by_bundle = {"resourceType": "MedicationStatement", "id": "ms1", "subject": {"reference": "Patient/p1"},
                 "status": "active", "medicationReference": {"reference": "Medication/med-1"},
                 "effectivePeriod": {"start": "2020-01-01"}}
    by_url = {"resourceType": "MedicationRequest", "id": "mr1", "intent": "order", "status": "completed",
              "subject": {"reference": "Patient/p1"}, "authoredOn": "2020-02-01",
              "medicationReference": {"reference": "urn:uuid:5a1c"}}
    contained = {"resourceType": "MedicationRequest", "id": "mr2", "intent": "plan", "status": "active",
                 "subject": {"reference": "Patient/p1"}, "authoredOn": "2020-03-01",
                 "contained": [{"resourceType": "Medication", "id": "m",
                                "code": {"coding": [{"system": f.DMD, "code": f.GLIMEPIRIDE}]}}],
                 "medicationReference": {"reference": "#m"}}
    missing = dict(by_bundle, id="ms2", medicationReference={"reference": "Medication/nowhere"})
    path = f.write_bundle(tmp_path, _pat_with(med, by_bundle, by_url, contained, missing))
    doc = json.loads(path.read_text())
    doc["entry"].append({"fullUrl": "urn:uuid:5a1c", "resource": dict(med, id="other-id")})
    path.write_text(json.dumps(doc))
    meds = {m["source_id"]: m for m in read_bundles(tmp_path, "A81001")["medications"].to_pylist()}
    assert (meds["ms1"]["code_system"], meds["ms1"]["code"], str(meds["ms1"]["event_date"])) == \
        ("snomed", PARACETAMOL, "2020-01-01")
    assert (meds["mr1"]["code"], meds["mr1"]["medication_type"]) == (PARACETAMOL, "issue")
    assert (meds["mr2"]["code_system"], meds["mr2"]["code"], meds["mr2"]["medication_type"]) == \
        ("dmd", f.GLIMEPIRIDE, "authorisation")
    assert meds["ms2"]["code"] is None  # a reference the delivery does not hold: quarantined as invalid_code


def test_referral_reason_vaccination_procedure_and_date_forms(tmp_path):
    referral = {"resourceType": "ReferralRequest", "id": "r1", "intent": "order", "status": "active",
                "subject": {"reference": "Patient/p1"}, "authoredOn": "2021-01-01T10:00:00+00:00",
                "reasonCode": [{"coding": [{"system": f.SNOMED, "code": f.HYPERTENSION}]}]}
    vaccination = {"resourceType": "Immunization", "id": "i1", "status": "completed", "notGiven": False,
                   "patient": {"reference": "Patient/p1"}, "date": "2020-10-01", "vaccineCode": NULL_FLAVOR,
                   "extension": [{"url": "https://fhir.hl7.org.uk/STU3/StructureDefinition/"
                                         "Extension-CareConnect-VaccinationProcedure-1",
                                  "valueCodeableConcept": {"coding": [{"system": f.SNOMED,
                                                                       "code": "1324681000000101"}]}}]}
    instant = dict(f.observation("o1", "p1", f.BMI, "x"), effectiveInstant="2019-04-04T10:00:00.000+00:00")
    del instant["effectiveDateTime"]
    period = dict(f.observation("o2", "p1", f.BMI, "x"), effectivePeriod={"start": "2018-03-03"})
    del period["effectiveDateTime"]
    onset = dict(f.condition("c1", "p1", f.HYPERTENSION, "x"), onsetPeriod={"start": "2017-02-02"})
    del onset["onsetDateTime"]
    f.write_bundle(tmp_path, _pat_with(referral, vaccination, instant, period, onset))
    tables = read_bundles(tmp_path, "A81001")
    ref = tables["referrals"].to_pylist()[0]
    assert (ref["code"], str(ref["event_date"])) == (f.HYPERTENSION, "2021-01-01")
    imm = tables["immunisations"].to_pylist()[0]
    assert (imm["code_system"], imm["code"], str(imm["event_date"])) == ("snomed", "1324681000000101", "2020-10-01")
    dates = {o["source_id"]: str(o["event_date"]) for o in tables["observations"].to_pylist()}
    assert dates == {"o1": "2019-04-04", "o2": "2018-03-03", "c1": "2017-02-02"}


def test_components_are_measurement_rows_linked_to_their_panel(tmp_path):
    panel = {"resourceType": "Observation", "id": "bp", "status": "final", "subject": {"reference": "Patient/p1"},
             "effectiveDateTime": "2021-05-05", "code": {"coding": [{"system": f.SNOMED, "code": "75367002"}]},
             "component": [
                 {"code": {"coding": [{"system": f.SNOMED, "code": "72313002"}]},
                  "valueQuantity": {"value": 128, "unit": "mmHg", "system": "http://unitsofmeasure.org",
                                    "code": "mm[Hg]"}},
                 {"code": {"coding": [{"system": f.SNOMED, "code": "1091811000000102"}]},
                  "valueQuantity": {"value": 82, "unit": "mmHg", "code": "mm[Hg]"}}]}
    f.write_bundle(tmp_path, _pat_with(panel))
    rows = [(o["source_id"], o["code"], o["value"], o["unit"], o["panel_ref"], str(o["event_date"]))
            for o in read_bundles(tmp_path, "A81001")["observations"].to_pylist()]
    assert rows == [("bp", "75367002", None, None, None, "2021-05-05"),
                    ("bp#component-0", "72313002", 128.0, "mm[Hg]", "bp", "2021-05-05"),
                    ("bp#component-1", "1091811000000102", 82.0, "mm[Hg]", "bp", "2021-05-05")]
