"""Files, bundles, resource shapes, references and determinism."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from gpdata.synth import DEFAULT_TODAY as TODAY
from gpdata.synth import codes as C
from gpdata.synth import generate, generate_practice
from gpdata.synth.readback import PRACTICE_TYPES, patient_id_of

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}:\d{2}\+00:00)?$")
PRACTITIONER_REF = re.compile(r"^Practitioner/[0-9a-f-]{36}$")
CODE_SYSTEMS = {C.SNOMED, C.DMD, C.READ_V2, C.CTV3}


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_arguments_give_identical_bytes(tmp_path: Path) -> None:
    kw: dict[str, Any] = {"n_practices": 2, "n_patients": 40, "seed": 5, "events_per_patient": 15.0,
                          "dirty_fraction": 0.05}
    generate(tmp_path / "a", **kw)
    generate(tmp_path / "b", **kw)
    generate(tmp_path / "c", **{**kw, "seed": 6})
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert a == b
    assert "reference/postcode_lsoa.csv" in a and "reference/ndop.csv" in a
    assert set(a.values()).isdisjoint(c.values())


def test_default_today_is_fixed(tmp_path: Path) -> None:
    t1, _ = generate_practice(tmp_path / "x", "A00001", n_patients=20, events_per_patient=10.0)
    t2, _ = generate_practice(tmp_path / "y", "A00001", n_patients=20, events_per_patient=10.0, today=TODAY)
    assert t1 == t2
    first = (tmp_path / "x" / "bundle-0001.json").read_bytes()
    assert first == (tmp_path / "y" / "bundle-0001.json").read_bytes()
    generate_practice(tmp_path / "z", "A00001", n_patients=20, events_per_patient=10.0,
                              today=dt.date(2020, 6, 1))
    assert (tmp_path / "z" / "bundle-0001.json").read_bytes() != first


def test_generate_practice_is_generate_first_practice(tmp_path: Path) -> None:
    generate(tmp_path / "g", ods_codes=["C81234", "D81234"], n_patients=30, seed=9, events_per_patient=10.0)
    generate_practice(tmp_path / "p", "C81234", n_patients=30, seed=9, events_per_patient=10.0)
    assert (tmp_path / "g" / "sources" / "C81234" / "bundle-0001.json").read_bytes() == (
        tmp_path / "p" / "bundle-0001.json").read_bytes()


def test_stale_bundles_are_removed(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    generate_practice(folder, "E00001", n_patients=30, events_per_patient=5.0, bundle_size=5)
    assert len(list(folder.glob("bundle-*.json"))) == 6
    generate_practice(folder, "E00001", n_patients=30, events_per_patient=5.0, bundle_size=10)
    assert sorted(p.name for p in folder.glob("bundle-*.json")) == [f"bundle-000{i}.json" for i in (1, 2, 3)]


def test_default_ods_codes(tmp_path: Path) -> None:
    truths = generate(tmp_path, n_practices=3, n_patients=5, events_per_patient=2.0, seed=1)
    codes = [t.ods_code for t in truths]
    assert len(set(codes)) == 3
    assert all(re.fullmatch(r"[A-Z]\d{5}", c) for c in codes)
    assert sorted(p.name for p in (tmp_path / "sources").iterdir()) == sorted(codes)


def test_progress_called_once_per_practice(tmp_path: Path) -> None:
    msgs: list[str] = []
    generate(tmp_path, n_practices=2, n_patients=5, events_per_patient=2.0, progress=msgs.append)
    assert len(msgs) == 2 and all("\n" not in m for m in msgs)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate(tmp_path, ods_codes=["A00001", "A00001"], n_patients=1)
    with pytest.raises(ValueError):
        generate_practice(tmp_path, "A00001", n_patients=1, dirty_fraction=1.5)
    with pytest.raises(ValueError):
        generate_practice(tmp_path, "A00001", n_patients=1, bundle_size=0)
    with pytest.raises(ValueError):
        generate_practice(tmp_path, "../x", n_patients=1)


def test_bundle_files(clean_practice: Any) -> None:
    p = clean_practice.practice
    assert [f.name for f in p.files] == [f"bundle-{i:04d}.json" for i in range(1, 5)]
    for f, bundle in zip(p.files, p.bundles, strict=True):
        raw = f.read_bytes()
        assert raw == json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
        assert UUID.match(bundle["id"])
        n_pat = 0
        for e in bundle["entry"]:
            r = e["resource"]
            assert UUID.match(r["id"])
            assert e["fullUrl"] == f"urn:uuid:{r['id']}"
            n_pat += r["resourceType"] == "Patient"
        assert n_pat <= 60
    types0 = {e["resource"]["resourceType"] for e in p.bundles[0]["entry"]}
    assert PRACTICE_TYPES <= types0
    for bundle in p.bundles[1:]:
        assert not PRACTICE_TYPES & {e["resource"]["resourceType"] for e in bundle["entry"]}


def test_practice_resources(clean_practice: Any) -> None:
    res = [e["resource"] for e in clean_practice.practice.bundles[0]["entry"]]
    orgs = [r for r in res if r["resourceType"] == "Organization"]
    assert len(orgs) == 1
    assert orgs[0]["identifier"] == [{"system": C.ODS_SYSTEM, "value": "B82001"}]
    assert orgs[0]["name"].endswith(" Surgery")
    pracs = {r["id"]: r for r in res if r["resourceType"] == "Practitioner"}
    roles = [r for r in res if r["resourceType"] == "PractitionerRole"]
    assert 8 <= len(pracs) <= 15 and len(roles) == len(pracs)
    for r in pracs.values():
        (ident,) = r["identifier"]
        assert ident["system"] == C.SDS_USER_SYSTEM and re.fullmatch(r"\d{12}", ident["value"])
        (name,) = r["name"]
        assert name["family"] and name["given"] and name["prefix"]
    known = {(code, display) for code, display, _ in C.JOB_ROLES.values()}
    assert {r["practitioner"]["reference"][len("Practitioner/"):] for r in roles} == set(pracs)
    for r in roles:
        assert r["organization"] == {"identifier": {"system": C.ODS_SYSTEM, "value": "B82001"}}
        (cc,) = r["code"]
        (coding,) = cc["coding"]
        assert coding["system"] == C.SDS_JOB_ROLE_SYSTEM and (coding["code"], coding["display"]) in known
    assert "R0260" in {r["code"][0]["coding"][0]["code"] for r in roles}


def _codings(cc: dict) -> list[dict]:
    assert cc["coding"]
    for c in cc["coding"]:
        assert c["system"] in CODE_SYSTEMS and c["code"]
    return cc["coding"]


def _check_ref(ref: dict, prac_ids: set[str]) -> None:
    assert PRACTITIONER_REF.match(ref["reference"])
    assert ref["reference"][len("Practitioner/"):] in prac_ids


def test_resource_shapes(clean_practice: Any) -> None:
    p = clean_practice.practice
    unique = p.unique()
    prac_ids = {k for k, r in unique.items() if r["resourceType"] == "Practitioner"}
    patients = p.patients()
    statements = {k for k, r in unique.items() if r["resourceType"] == "MedicationStatement"}
    seen: set[str] = set()
    for r in unique.values():
        t = r["resourceType"]
        seen.add(t)
        if t in PRACTICE_TYPES:
            continue
        if t == "Patient":
            (ident,) = r["identifier"]
            assert ident["system"] == C.NHS_NUMBER_SYSTEM
            (name,) = r["name"]
            assert name["use"] == "official" and name["family"] and name["given"]
            assert r["gender"] in {"male", "female", "other", "unknown"}
            assert DATE.match(r["birthDate"])
            (addr,) = r["address"]
            assert addr["use"] == "home" and addr["line"] and addr["city"] and addr["postalCode"]
            (tel,) = r["telecom"]
            assert tel == {"system": "phone", "value": tel["value"], "use": "mobile"}
            assert re.fullmatch(r"07700 900\d{3}", tel["value"])
            _check_ref(r["generalPractitioner"][0], prac_ids)
            assert r["managingOrganization"] == {"identifier": {"system": C.ODS_SYSTEM, "value": "B82001"}}
            urls = [x["url"] for x in r["extension"]]
            assert C.REGISTRATION_EXT_URL in urls
            for x in r["extension"]:
                if x["url"] == C.ETHNIC_EXT_URL:
                    (coding,) = x["valueCodeableConcept"]["coding"]
                    assert coding["system"] == C.ETHNIC_SYSTEM and coding["code"] in "ABCDEFGHJKLMNPRSZ"
                elif x["url"] == C.REGISTRATION_EXT_URL:
                    (sub,) = x["extension"]
                    assert sub["url"] == "registrationPeriod"
                    assert r["birthDate"] <= sub["valuePeriod"]["start"] < TODAY.isoformat()
            if "deceasedDateTime" in r:
                assert DATETIME.match(r["deceasedDateTime"])
            continue
        assert patient_id_of(r) in patients
        if t == "Observation":
            assert r["status"] == "final"
            _check_ref(r["performer"][0], prac_ids)
            assert DATETIME.match(r["effectiveDateTime"])
            _codings(r["code"])
            if "valueQuantity" in r:
                q = r["valueQuantity"]
                assert isinstance(q["value"], float) and q["system"] == C.UCUM and q["unit"] == q["code"]
                assert q["unit"] in {"kg/m2", "mm[Hg]", "mmol/mol", "mmol/L", "cm", "kg"}
        elif t == "Condition":
            _codings(r["code"])
            assert r["code"]["text"]
            assert DATE.match(r["onsetDateTime"]) and DATE.match(r["recordedDate"])
            assert r["onsetDateTime"] <= r["recordedDate"]
            _check_ref(r["asserter"], prac_ids)
            assert r["clinicalStatus"]["coding"][0]["code"] in {"active", "inactive"}
            assert r["category"][0]["coding"][0]["code"] == "problem-list-item"
            for n in r.get("note", []):
                assert n["text"]
        elif t == "MedicationStatement":
            assert r["status"] in {"active", "completed"}
            (coding,) = _codings(r["medicationCodeableConcept"])
            assert coding["system"] == C.DMD and coding["display"]
            assert DATE.match(r["effectivePeriod"]["start"]) and DATE.match(r["dateAsserted"])
            _check_ref(r["informationSource"], prac_ids)
            assert r["dosage"][0]["text"]
        elif t == "MedicationRequest":
            assert r["status"] == "completed" and r["intent"] == "order"
            (coding,) = _codings(r["medicationCodeableConcept"])
            assert coding["system"] == C.DMD
            assert DATETIME.match(r["authoredOn"])
            _check_ref(r["requester"], prac_ids)
            (based,) = r["basedOn"]
            assert based["reference"][len("MedicationStatement/"):] in statements
            q = r["dispenseRequest"]["quantity"]
            assert isinstance(q["value"], int) and q["unit"]
            assert r["dosageInstruction"][0]["text"]
        elif t == "AllergyIntolerance":
            (coding,) = _codings(r["code"])
            assert coding["system"] == C.SNOMED
            assert DATE.match(r["recordedDate"])
            _check_ref(r["recorder"], prac_ids)
            if "onsetDateTime" in r:
                assert r["onsetDateTime"] <= r["recordedDate"]
        elif t == "Immunization":
            assert r["status"] == "completed"
            _codings(r["vaccineCode"])
            assert DATETIME.match(r["occurrenceDateTime"])
            _check_ref(r["performer"][0]["actor"], prac_ids)
        elif t == "ServiceRequest":
            assert r["intent"] in {"order", "plan"} and r["status"] in {"active", "completed"}
            assert r["category"][0]["coding"][0] == {"system": C.SNOMED, "code": "3457005",
                                                      "display": "Patient referral"}
            _codings(r["code"])
            assert DATETIME.match(r["authoredOn"])
            _check_ref(r["requester"], prac_ids)
            assert r["priority"] in {"routine", "urgent"}
            if r["intent"] == "plan":
                assert DATE.match(r["occurrenceDateTime"]) and r["occurrenceDateTime"] > r["authoredOn"]
        elif t == "Appointment":
            assert r["status"] in {"fulfilled", "booked", "noshow", "cancelled"}
            assert DATETIME.match(r["start"]) and DATETIME.match(r["end"]) and r["start"] < r["end"]
            assert r["minutesDuration"] in (10, 15, 20)
            assert r["description"]
            actors = [x["actor"]["reference"] for x in r["participant"]]
            assert any(a.startswith("Patient/") for a in actors)
            _check_ref(next(x["actor"] for x in r["participant"] if x["actor"]["reference"].startswith("Pr")),
                       prac_ids)
            assert all(x["status"] == "accepted" for x in r["participant"])
            assert (r["status"] == "booked") == (r["start"][:10] > TODAY.isoformat())
        else:
            raise AssertionError(f"unexpected resource type {t}")
    assert seen == {"Organization", "Practitioner", "PractitionerRole", "Patient", "Observation", "Condition",
                    "MedicationStatement", "MedicationRequest", "AllergyIntolerance", "Immunization",
                    "ServiceRequest", "Appointment"}


def test_patient_resources_share_the_patient_bundle(clean_practice: Any) -> None:
    for bundle in clean_practice.practice.bundles:
        here = {e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"}
        for e in bundle["entry"]:
            r = e["resource"]
            if r["resourceType"] not in PRACTICE_TYPES and r["resourceType"] != "Patient":
                assert patient_id_of(r) in here


def test_code_systems_and_mix(clean_practice: Any) -> None:
    systems = set()
    for r in clean_practice.practice.clinical():
        for key in ("code", "vaccineCode", "medicationCodeableConcept"):
            if key in r:
                systems.update(c["system"] for c in r[key]["coding"])
    assert systems == CODE_SYSTEMS


def test_names_leak_into_some_free_text(default_practice: Any) -> None:
    p = default_practice.practice
    patients = p.patients()
    hits = 0
    for r in p.clinical():
        if r["resourceType"] == "Condition" and "note" in r:
            pat = patients[patient_id_of(r)]
            note = r["note"][0]["text"]
            if pat["name"][0]["family"] in note or pat["name"][0]["given"][0] in note:
                hits += 1
    assert hits >= 1


def test_lookup_covers_every_postcode(dirty_run: Any) -> None:
    text = (dirty_run.root / "reference" / "postcode_lsoa.csv").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0] == "postcode,lsoa_code"
    rows = [tuple(line.split(",")) for line in lines[1:]]
    assert rows == sorted(set(rows))
    postcodes = [pc for pc, _ in rows]
    assert len(postcodes) == len(set(postcodes))
    for pc, lsoa in rows:
        assert re.fullmatch(r"[A-Z]{1,2}\d{1,2} \d[A-Z]{2}", pc), pc
        assert re.fullmatch(r"E01\d{6}", lsoa)
    used = {r["address"][0]["postalCode"] for p in dirty_run.practices for r in p.patients().values()}
    assert used <= set(postcodes)
    # each practice is in its own area
    per = [{r["address"][0]["postalCode"] for r in p.patients().values()} for p in dirty_run.practices]
    assert not per[0] & per[1]
    lsoas = {lsoa for _, lsoa in rows}
    assert 60 <= len(lsoas) <= 160


def test_pairs_returned_match_lookup(default_practice: Any) -> None:
    p, pairs = default_practice.practice, default_practice.pairs
    assert len(pairs) == len(set(pairs))
    postcodes = {pc for pc, _ in pairs}
    assert {r["address"][0]["postalCode"] for r in p.patients().values()} <= postcodes
    assert 30 <= len({ls for _, ls in pairs}) <= 80
