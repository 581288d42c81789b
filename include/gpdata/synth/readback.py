"""Read generated bundles back and recount the ground truth from the files alone.

Independent of the generator's internals (it only knows the written FHIR shapes and the check-digit
rules), so tests can compare `recount(...)` with the `PracticeTruth` the generator returned.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import codes as C
from .checks import nhs_number_in_test_range, nhs_number_valid, verhoeff_valid

PRACTICE_TYPES = frozenset({"Organization", "Practitioner", "PractitionerRole"})

# Event dates per resource type: (path, may legitimately be in the future)
EVENT_DATES: dict[str, tuple[tuple[tuple[str, ...], bool], ...]] = {
    "Observation": ((("effectiveDateTime",), False),),
    "Condition": ((("onsetDateTime",), False), (("recordedDate",), False)),
    "AllergyIntolerance": ((("recordedDate",), False), (("onsetDateTime",), False)),
    "Immunization": ((("occurrenceDateTime",), False),),
    "MedicationStatement": ((("effectivePeriod", "start"), False), (("effectivePeriod", "end"), False),
                            (("dateAsserted",), False)),
    "MedicationRequest": ((("authoredOn",), False),),
    "ServiceRequest": ((("authoredOn",), False), (("occurrenceDateTime",), True)),  # recall due date
    "Appointment": ((("start",), True), (("end",), True)),  # booked appointments are in the future
}
CODE_PATHS = {"Observation": "code", "Condition": "code", "AllergyIntolerance": "code",
              "Immunization": "vaccineCode", "MedicationStatement": "medicationCodeableConcept",
              "MedicationRequest": "medicationCodeableConcept", "ServiceRequest": "code"}


def patient_id_of(r: dict) -> str:
    """Id of the patient a clinical resource belongs to."""
    if "subject" in r:
        ref = r["subject"]["reference"]
    elif "patient" in r:
        ref = r["patient"]["reference"]
    else:
        ref = next(p["actor"]["reference"] for p in r["participant"]
                   if p["actor"]["reference"].startswith("Patient/"))
    return ref.split("/", 1)[1]


def event_dates(r: dict) -> list[tuple[str, bool]]:
    """(YYYY-MM-DD, may be future) for each event date a resource carries."""
    out = []
    for path, future_ok in EVENT_DATES.get(r["resourceType"], ()):
        v = r
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        if isinstance(v, str):
            out.append((v[:10], future_ok))
    return out


class Practice:
    """One practice folder (bundle-*.json), loaded into memory."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.files = sorted(self.folder.glob("bundle-*.json"))
        self.bundles = [json.loads(f.read_text(encoding="utf-8")) for f in self.files]

    def entries(self) -> Iterator[tuple[int, dict, dict]]:
        """(bundle index from 0, entry, resource) for every entry, duplicates included."""
        for b, bundle in enumerate(self.bundles):
            for e in bundle["entry"]:
                yield b, e, e["resource"]

    def unique(self) -> dict[str, dict]:
        """Resources by id (first occurrence)."""
        out: dict[str, dict] = {}
        for _, _, r in self.entries():
            out.setdefault(r["id"], r)
        return out

    def patients(self) -> dict[str, dict]:
        return {k: r for k, r in self.unique().items() if r["resourceType"] == "Patient"}

    def clinical(self) -> list[dict]:
        """Unique clinical resources (everything but Patient and the practice's own resources)."""
        return [r for r in self.unique().values()
                if r["resourceType"] != "Patient" and r["resourceType"] not in PRACTICE_TYPES]


def optout_state(observations: list[dict]) -> str | None:
    """'active' / 'withdrawn' / None from one patient's observations: the latest dated type 1 code wins."""
    events = []
    for r in observations:
        for c in r["code"]["coding"]:
            if c["code"] in C.OPTOUT_DISSENT_CODES:
                events.append((r["effectiveDateTime"][:10], 0))
            elif c["code"] in C.OPTOUT_WITHDRAWN_CODES:
                events.append((r["effectiveDateTime"][:10], 1))
    if not events:
        return None
    events.sort()
    if events[-1][1] == 0:
        return "active"
    return "withdrawn" if any(k == 0 for _, k in events) else None


def _bad_code(cc: dict) -> bool:
    return any(c.get("system") in (C.SNOMED, C.DMD) and not verhoeff_valid(str(c.get("code", "")))
               for c in cc.get("coding", []))


@dataclass
class Recount:
    n_patients: int
    n_optout_active: int
    n_optout_withdrawn: int
    n_invalid_nhs_number: int
    resources: dict[str, int]
    dirty: dict[str, int]


def recount(practice: Practice, today: dt.date) -> Recount:
    t = today.isoformat()
    counts = Counter(r["resourceType"] for _, _, r in practice.entries())
    n_entries = sum(counts.values())
    unique = practice.unique()
    patients = {k: r for k, r in unique.items() if r["resourceType"] == "Patient"}
    n_invalid = 0
    for r in patients.values():
        value = r["identifier"][0]["value"]
        if not (nhs_number_valid(value) and nhs_number_in_test_range(value)):
            n_invalid += 1
    future = before = unknown = 0
    by_kind, dead = _patient_dates(patients)
    obs_by_patient: dict[str, list[dict]] = {}
    for r in unique.values():
        rt = r["resourceType"]
        if rt == "Patient" or rt in PRACTICE_TYPES:
            continue
        birth = patients[patient_id_of(r)]["birthDate"]
        dates = event_dates(r)
        booked = rt == "Appointment" and r.get("status") == "booked"
        if any(d > t for d, ok in dates if not ok or (rt == "Appointment" and not booked)):
            future += 1
        elif any(d < birth for d, _ in dates):
            before += 1
        elif rt != "Appointment" and patient_id_of(r) in dead \
                and any(d > dead[patient_id_of(r)] for d, ok in dates if not ok):  # event dates, not due dates
            by_kind["after_death"] += 1
        elif rt in CODE_PATHS and _bad_code(r[CODE_PATHS[rt]]):
            unknown += 1
        if rt == "Observation":
            obs_by_patient.setdefault(patient_id_of(r), []).append(r)
    states = Counter(optout_state(v) for v in obs_by_patient.values())
    return Recount(
        n_patients=len(patients), n_optout_active=states["active"], n_optout_withdrawn=states["withdrawn"],
        n_invalid_nhs_number=n_invalid, resources=dict(sorted(counts.items())),
        dirty={"invalid_nhs_number": n_invalid, "future_date": future, "before_birth": before,
               "unknown_code": unknown, "duplicate": n_entries - len(unique), **by_kind})


def _patient_dates(patients: dict[str, dict]) -> tuple[Counter, dict[str, str]]:
    """Patients with an impossible date, by the first patient-level rule they break (gpdata.quality.rules: birth
    and death kept to the month), and the date after which events of each clean dead patient are after death
    (the month of death, its 31 days and a 30-day grace)."""
    kinds: Counter = Counter({k: 0 for k in ("registration_before_birth", "death_before_birth",
                                             "death_before_registration", "registration_end_before_start",
                                             "after_death")})
    dead: dict[str, str] = {}
    for pid, r in patients.items():
        value = r["identifier"][0]["value"]
        if not (nhs_number_valid(value) and nhs_number_in_test_range(value)):
            continue
        birth = r["birthDate"][:7]
        earliest = (dt.date.fromisoformat(birth + "-01") - dt.timedelta(days=183)).isoformat()
        period = next((e["extension"][0]["valuePeriod"] for e in r.get("extension", ())
                       if e.get("url") == C.REGISTRATION_EXT_URL), {})
        start, end = period.get("start", ""), period.get("end")
        death = r.get("deceasedDateTime", "")[:10]
        if start and start < earliest:
            kinds["registration_before_birth"] += 1
        elif death and death[:7] + "-01" < earliest:
            kinds["death_before_birth"] += 1
        elif death and start and death[:7] < start[:7]:
            kinds["death_before_registration"] += 1
        elif end and start and end < start:
            kinds["registration_end_before_start"] += 1
        elif death:
            month = dt.date.fromisoformat(death[:7] + "-01")
            dead[pid] = (month + dt.timedelta(days=31 + 30)).isoformat()
    return kinds, dead
