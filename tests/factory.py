"""Hand-built FHIR bundles for unit tests: every value is chosen, so every outcome can be asserted."""

from __future__ import annotations

import json
from pathlib import Path

SNOMED = "http://snomed.info/sct"
DMD = "https://dmd.nhs.uk"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"

# Valid test-range NHS numbers (Modulus 11): 9990000018, 9990000026, ...
VALID_NHS = ["9990000018", "9990000026", "9990000034", "9990000042", "9990000050", "9990000069"]
HYPERTENSION = "38341003"   # Hypertensive disorder
BMI = "60621009"            # Body mass index
DISSENT = "827241000000103"
WITHDRAWN = "827261000000102"
GLIMEPIRIDE = "8093711000001103"  # dm+d AMP (opensafely antidiabetic drugs list)


def organization(ods: str) -> dict:
    return {"resourceType": "Organization", "id": f"org-{ods}", "identifier": [{"system": ODS, "value": ods}],
            "name": "Test Surgery"}


def practitioner(pid: str, sds: str, role: str = "R0260") -> list[dict]:
    return [
        {"resourceType": "Practitioner", "id": pid,
         "identifier": [{"system": "https://fhir.nhs.uk/Id/sds-user-id", "value": sds}],
         "name": [{"family": "Doctorson", "given": ["Dana"], "prefix": ["Dr"]}]},
        {"resourceType": "PractitionerRole", "id": f"role-{pid}", "practitioner": {"reference": f"Practitioner/{pid}"},
         "code": [{"coding": [{"system": "https://fhir.nhs.uk/CodeSystem/NHSDigital-SDS-JobRoleCode",
                               "code": role, "display": "General Medical Practitioner"}]}]},
    ]


def patient(pid: str, nhs: str, *, family="Testperson", given="Alex", dob="1980-05-17",
            postcode="LS1 4AB", line="12 Oak Road", gender="female") -> dict:
    return {"resourceType": "Patient", "id": pid,
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}],
            "name": [{"use": "official", "family": family, "given": [given]}], "gender": gender, "birthDate": dob,
            "address": [{"use": "home", "line": [line], "city": "Leeds", "postalCode": postcode}],
            "telecom": [{"system": "phone", "value": "07700 900123", "use": "mobile"}],
            "extension": [
                {"url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-EthnicCategory",
                 "valueCodeableConcept": {"coding": [{"system": "x", "code": "A"}]}},
                {"url": "https://fhir.nhs.uk/STU3/StructureDefinition/Extension-CareConnect-GPC-RegistrationDetails-1",
                 "extension": [{"url": "registrationPeriod", "valuePeriod": {"start": "2001-02-03"}}]}]}


def observation(oid: str, patient_id: str, code: str, date: str, *, system=SNOMED, value=None, unit=None,
                practitioner_id="prac-1", note=None) -> dict:
    res = {"resourceType": "Observation", "id": oid, "status": "final",
           "subject": {"reference": f"Patient/{patient_id}"},
           "performer": [{"reference": f"Practitioner/{practitioner_id}"}],
           "effectiveDateTime": date, "code": {"coding": [{"system": system, "code": code}]}}
    if value is not None:
        res["valueQuantity"] = {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
    if note:
        res["note"] = [{"text": note}]
    return res


def condition(cid: str, patient_id: str, code: str, date: str) -> dict:
    return {"resourceType": "Condition", "id": cid, "subject": {"reference": f"Patient/{patient_id}"},
            "code": {"coding": [{"system": SNOMED, "code": code}], "text": "free text"},
            "onsetDateTime": date, "asserter": {"reference": "Practitioner/prac-1"}}


def medication_issue(mid: str, patient_id: str, dmd: str, date: str) -> dict:
    return {"resourceType": "MedicationRequest", "id": mid, "status": "completed", "intent": "order",
            "subject": {"reference": f"Patient/{patient_id}"},
            "medicationCodeableConcept": {"coding": [{"system": DMD, "code": dmd}]}, "authoredOn": date,
            "requester": {"reference": "Practitioner/prac-1"},
            "dispenseRequest": {"quantity": {"value": 28, "unit": "tablet"}},
            "dosageInstruction": [{"text": "one daily"}]}


def appointment(aid: str, patient_id: str, start: str) -> dict:
    return {"resourceType": "Appointment", "id": aid, "status": "fulfilled", "start": start,
            "minutesDuration": 10, "description": "review",
            "participant": [{"actor": {"reference": f"Patient/{patient_id}"}, "status": "accepted"},
                            {"actor": {"reference": "Practitioner/prac-1"}, "status": "accepted"}]}


def write_bundle(folder: Path, resources: list[dict], name: str = "bundle-0001.json") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"resourceType": "Bundle", "type": "collection",
           "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources]}
    path = folder / name
    path.write_text(json.dumps(doc))
    return path


def write_lookup(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("postcode,lsoa_code\n" + "".join(f"{p},{lsoa}\n" for p, lsoa in rows))
    return path


def file_token(name: str) -> str:
    """What every output beyond the inbox calls a delivered file: its keyed token under the loaded key."""
    from gpdata.privacy import deid
    from gpdata.privacy.keys import load_master_key

    return deid.file_token(load_master_key(), name)
