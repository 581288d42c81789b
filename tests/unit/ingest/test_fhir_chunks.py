"""The FHIR reader holds at most a chunk of rows a table as Python values (fhir._CHUNK_ROWS), and searches for type 1
codes only the resources whose compact JSON could hold one: neither may change what is read."""

from __future__ import annotations

import orjson
import pytest

from gpdata.codes import optout_codes
from gpdata.errors import SourceError
from gpdata.ingest.sources import fhir
from gpdata.ingest.sources.fhir import read_bundles
from gpdata.model import ISSUE
from tests import factory as f

NHS = "https://fhir.nhs.uk/Id/nhs-number"


def _by_nhs(resource: dict, nhs: str, key: str = "subject") -> dict:
    return dict(resource, **{key: {"identifier": {"system": NHS, "value": nhs}}})


def _delivery(tmp_path):
    """Two bundles whose rows need the whole delivery: subjects given by NHS number, a medication whose
    Medication resource comes in the second file, an unreadable entry, a type 1 code and practitioner roles."""
    first = [f.organization("A81001"), *f.practitioner("prac-1", "123456789012"),
             f.patient("p1", f.VALID_NHS[0]), f.patient("p2", f.VALID_NHS[1]),
             f.observation("o1", "p1", f.BMI, "2020-01-01", value=27.5, unit="kg/m2"),
             _by_nhs(f.observation("o2", "p1", f.BMI, "2020-01-02"), f.VALID_NHS[1]),
             _by_nhs(f.observation("o3", "p1", f.BMI, "2020-01-03"), "9990000999"),  # no such Patient
             dict(f.observation("o4", "p1", f.BMI, "2020-01-04"), code="not a concept"),  # unreadable
             {"resourceType": "MedicationStatement", "id": "ms1", "status": "active",
              "subject": {"reference": "Patient/p2"}, "medicationReference": {"reference": "Medication/med-1"},
              "effectivePeriod": {"start": "2020-02-01"}},
             _by_nhs(f.observation("d1", "p1", f.DISSENT, "2020-03-01"), f.VALID_NHS[1]),
             f.appointment("a1", "p2", "2021-05-06T09:00:00+00:00")]
    second = [f.patient("p3", f.VALID_NHS[2]), f.observation("o5", "p3", f.HYPERTENSION, "2019-12-31"),
              {"resourceType": "Medication", "id": "med-1",
               "code": {"coding": [{"system": f.SNOMED, "code": "323509004"}]}},
              f.medication_issue("mi1", "p3", f.GLIMEPIRIDE, "2021-01-01")]
    f.write_bundle(tmp_path, first, "bundle-0001.json")
    f.write_bundle(tmp_path, second, "bundle-0002.json")


@pytest.mark.parametrize("chunk_rows", [1, 2, 3])
def test_the_tables_are_the_same_whatever_the_chunk_size(tmp_path, monkeypatch, chunk_rows):
    _delivery(tmp_path)
    whole_report, chunked_report = {}, {}
    whole = read_bundles(tmp_path, "A81001", report=whole_report)
    monkeypatch.setattr(fhir, "_CHUNK_ROWS", chunk_rows)
    chunked = read_bundles(tmp_path, "A81001", report=chunked_report)
    assert chunked.keys() == whole.keys() and chunked_report == whole_report
    for name, table in whole.items():
        assert chunked[name].schema == table.schema and chunked[name].equals(table), name
    obs = {o["source_id"]: o for o in chunked["observations"].to_pylist()}
    assert obs["o2"]["patient_ref"] == "p2" and obs["o3"]["patient_ref"] is None  # NHS numbers resolved
    assert obs["o4"][ISSUE] == "unreadable_entry" and obs["o1"][ISSUE] is None
    meds = {m["source_id"]: m for m in chunked["medications"].to_pylist()}
    assert (meds["ms1"]["code_system"], meds["ms1"]["code"]) == ("snomed", "323509004")  # from the later file
    assert chunked["practitioners"].column("role_code").to_pylist() == ["R0260"]
    assert chunked["type1_evidence"].select(["patient_ref", "kind"]).to_pylist() == \
        [{"patient_ref": "p2", "kind": "dissent"}]


def test_a_resource_is_passed_over_only_when_no_code_in_it_can_be_a_type_1_code():
    needles = fhir._entry_needles(optout_codes().needles())
    plain = f.observation("o1", "p1", f.BMI, "2020-01-01")
    assert not fhir._may_hold_type1(plain, needles)
    assert fhir._may_hold_type1(f.observation("o1", "p1", f.DISSENT, "2020-01-01"), needles)
    # the text a JSON escape decodes to, a Read code padded with its term code, a code in any element
    escaped = orjson.loads(orjson.dumps(plain).replace(f.BMI.encode(), b"\\u0038" + f.DISSENT[1:].encode()))
    assert fhir._may_hold_type1(escaped, needles)
    assert fhir._may_hold_type1(dict(plain, extension=[{"valueCoding": {"code": " 9Nu0.00"}}]), needles)
    # a code given as a number (its text is Python's, not JSON's): always searched
    assert fhir._may_hold_type1(dict(plain, code={"coding": [{"code": 1234.5}]}), needles)
    assert fhir._may_hold_type1(dict(plain, code={"coding": [{"code": -7}]}), needles)
    # a needle JSON would escape: no resource is passed over
    assert fhir._entry_needles((b'9N"u0',)) is None and fhir._entry_needles((b"9N\x01",)) is None
    assert fhir._may_hold_type1(plain, None)


def test_every_type_1_code_in_a_searched_file_is_found_and_only_those(tmp_path):
    numeric = dict(f.observation("d2", "p2", f.BMI, "2020-01-02"),
                   code={"coding": [{"system": f.SNOMED, "code": int(f.WITHDRAWN)}]})
    f.write_bundle(tmp_path, [f.organization("A81001"), f.patient("p1", f.VALID_NHS[0]),
                              f.patient("p2", f.VALID_NHS[1]), f.observation("o1", "p1", f.BMI, "2020-01-01"),
                              f.observation("d1", "p1", f.DISSENT, "2020-01-03"), numeric])
    evidence = read_bundles(tmp_path, "A81001")["type1_evidence"].to_pylist()
    assert [(e["patient_ref"], e["kind"], e["_src_entry"]) for e in evidence] == \
        [("p1", "dissent", 4), ("p2", "withdrawn", 5)]


@pytest.mark.parametrize("enabled", [True, False])
def test_the_garbage_collector_is_left_as_it_was_even_when_the_delivery_is_refused(tmp_path, enabled):
    import gc

    _delivery(tmp_path)
    (tmp_path / "bundle-0003.json").write_text('{"resourceType": "Bundle", "entry": [')
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        with pytest.raises(SourceError, match="not valid JSON"):
            read_bundles(tmp_path, "A81001")
        assert gc.isenabled() is enabled
        (tmp_path / "bundle-0003.json").unlink()
        assert read_bundles(tmp_path, "A81001")["observations"].num_rows == 6
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()


def test_no_reference_of_a_delivery_is_kept_after_its_read_even_a_refused_one(tmp_path):
    _delivery(tmp_path)
    assert read_bundles(tmp_path, "A81001")["observations"].num_rows == 6
    assert fhir._REF_IDS == {}
    elsewhere = dict(f.patient("p9", f.VALID_NHS[3]), managingOrganization={"identifier": {
        "system": f.ODS, "value": "B82002"}})  # registered at another practice: the delivery is refused
    f.write_bundle(tmp_path, [elsewhere, f.observation("o9", "p9", f.BMI, "2020-01-01")], "bundle-0003.json")
    with pytest.raises(SourceError, match="another practice"):
        read_bundles(tmp_path, "A81001")
    assert fhir._REF_IDS == {}
