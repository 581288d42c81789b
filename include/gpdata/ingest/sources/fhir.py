"""FHIR R4 (UK Core) and GP Connect bundles to canonical Arrow tables.

A delivery is a folder of JSON Bundles. Resources are routed by type; references may be relative
(``Patient/<id>``) or ``urn:uuid:<id>``. Each row keeps its position (file and entry index) so a
problem can be reported without its values.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from gpdata.errors import SourceError
from gpdata.model import CANONICAL

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
SDS_USER_SYSTEM = "https://fhir.nhs.uk/Id/sds-user-id"
ETHNIC_CATEGORY_URLS = (
    "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-EthnicCategory",
    "https://fhir.nhs.uk/STU3/StructureDefinition/Extension-CareConnect-EthnicCategory-1",
)
REGISTRATION_URLS = (
    "https://fhir.nhs.uk/STU3/StructureDefinition/Extension-CareConnect-GPC-RegistrationDetails-1",
    "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-RegistrationDetails",
)
CODE_SYSTEMS = {
    "http://snomed.info/sct": "snomed",
    "http://read.info/readv2": "readv2",
    "http://read.info/ctv3": "ctv3",
    "https://dmd.nhs.uk": "dmd",
    "http://dmd.nhs.uk": "dmd",
}
_PREFERRED = ("snomed", "dmd", "readv2", "ctv3")


def _ref(reference: dict | None) -> str | None:
    if not reference:
        return None
    ref = reference.get("reference")
    if not ref:
        return None
    return ref.rsplit("/", 1)[-1].removeprefix("urn:uuid:")


def _code(concept: dict | None) -> tuple[str | None, str | None]:
    """The preferred (system, code) of a CodeableConcept: SNOMED first, then dm+d, Read v2, CTV3."""
    best: tuple[int, str | None, str | None] = (len(_PREFERRED) + 1, None, None)
    for coding in (concept or {}).get("coding") or ():
        system = CODE_SYSTEMS.get(coding.get("system", ""), coding.get("system"))
        rank = _PREFERRED.index(system) if system in _PREFERRED else len(_PREFERRED)
        if rank < best[0] and coding.get("code"):
            best = (rank, system, coding["code"])
    return best[1], best[2]


def _first_practitioner(*candidates) -> str | None:
    for cand in candidates:
        if isinstance(cand, list):
            for item in cand:
                ref = _ref(item.get("actor", item) if isinstance(item, dict) else None)
                if ref:
                    return ref
        elif isinstance(cand, dict):
            ref = _ref(cand)
            if ref:
                return ref
    return None


def _texts(*parts) -> str | None:
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
        elif isinstance(part, list):
            out.extend(p.get("text", "") for p in part if isinstance(p, dict))
        elif isinstance(part, dict) and part.get("text"):
            out.append(part["text"])
    text = " | ".join(t for t in out if t)
    return text or None


class _Rows:
    """Column-wise accumulators, one per canonical table."""

    def __init__(self) -> None:
        self.cols: dict[str, dict[str, list]] = {t: defaultdict(list) for t in CANONICAL}
        self.roles: dict[str, tuple[str | None, str | None]] = {}
        self.organisations: set[str] = set()

    def add(self, table: str, **values) -> None:
        cols = self.cols[table]
        for name in CANONICAL[table].names:
            cols[name].append(values.get(name))


def _event(res: dict, pos: dict, patient_key: str, practitioner, date, concept, text, **extra) -> dict:
    system, code = _code(concept)
    return dict(source_id=res.get("id"), patient_ref=_ref(res.get(patient_key)), practitioner_ref=practitioner,
                event_date=date, code_system=system, code=code, free_text=text, **pos, **extra)


def _patient(res: dict, rows: _Rows, pos: dict) -> None:
    nhs = next((i.get("value") for i in res.get("identifier") or () if i.get("system") == NHS_NUMBER_SYSTEM), None)
    name = (res.get("name") or [{}])[0]
    address = (res.get("address") or [{}])[0]
    ethnic = registration = None
    for ext in res.get("extension") or ():
        url = ext.get("url")
        if url in ETHNIC_CATEGORY_URLS:
            ethnic = _code(ext.get("valueCodeableConcept"))[1]
        elif url in REGISTRATION_URLS:
            for sub in ext.get("extension") or ():
                if sub.get("url") == "registrationPeriod":
                    registration = (sub.get("valuePeriod") or {}).get("start")
    rows.add("patients", source_id=res.get("id"), nhs_number=nhs, family_name=name.get("family"),
             given_names=" ".join(name.get("given") or ()) or None, birth_date=res.get("birthDate"),
             gender=res.get("gender"), address=", ".join(address.get("line") or ()) or None,
             postcode=address.get("postalCode"),
             telecom=", ".join(t.get("value", "") for t in res.get("telecom") or ()) or None,
             ethnic_category=ethnic, registration_date=registration,
             deceased_date=res.get("deceasedDateTime"), gp_ref=_ref((res.get("generalPractitioner") or [None])[0]),
             **pos)


def _route(res: dict, rows: _Rows, pos: dict) -> None:
    rtype = res.get("resourceType")
    if rtype == "Patient":
        _patient(res, rows, pos)
    elif rtype == "Practitioner":
        name = (res.get("name") or [{}])[0]
        sds = next((i.get("value") for i in res.get("identifier") or () if i.get("system") == SDS_USER_SYSTEM),
                   None)
        rows.add("practitioners", source_id=res.get("id"), sds_user_id=sds, family_name=name.get("family"),
                 given_names=" ".join(name.get("given") or ()) or None, **pos)
    elif rtype == "PractitionerRole":
        for concept in res.get("code") or ():
            coding = (concept.get("coding") or [{}])[0]
            rows.roles[_ref(res.get("practitioner")) or ""] = (coding.get("code"), coding.get("display"))
            break
    elif rtype == "Organization":
        for ident in res.get("identifier") or ():
            if ident.get("system") == ODS_SYSTEM:
                rows.organisations.add(ident.get("value"))
    elif rtype in ("Condition", "Observation"):
        is_condition = rtype == "Condition"
        date = (res.get("onsetDateTime") or res.get("recordedDate") or res.get("assertedDate")) if is_condition \
            else (res.get("effectiveDateTime") or (res.get("effectivePeriod") or {}).get("start")
                  or res.get("issued"))
        quantity = res.get("valueQuantity") or {}
        rows.add("observations", **_event(
            res, pos, "subject", _first_practitioner(res.get("asserter"), res.get("recorder"), res.get("performer")),
            date, res.get("code"), _texts((res.get("code") or {}).get("text"), res.get("note"),
                                          res.get("valueString"), res.get("comment")),
            category="condition" if is_condition else "observation",
            value=quantity.get("value"), unit=quantity.get("code") or quantity.get("unit")))
    elif rtype in ("MedicationStatement", "MedicationRequest"):
        is_issue = rtype == "MedicationRequest" and res.get("intent", "order") == "order"
        if is_issue:
            date = res.get("authoredOn")
        else:
            date = (res.get("effectivePeriod") or {}).get("start") or res.get("dateAsserted") or res.get("authoredOn")
        quantity = ((res.get("dispenseRequest") or {}).get("quantity")) or {}
        rows.add("medications", **_event(
            res, pos, "subject",
            _first_practitioner(res.get("requester"), res.get("informationSource"), res.get("recorder")),
            date, res.get("medicationCodeableConcept"), _texts(res.get("dosage"), res.get("dosageInstruction"),
                                                               res.get("note")),
            medication_type="issue" if is_issue else "authorisation", status=res.get("status"),
            quantity=quantity.get("value"), quantity_unit=quantity.get("unit"),
            authorisation_ref=_ref((res.get("basedOn") or [None])[0])))
    elif rtype == "AllergyIntolerance":
        rows.add("allergies", **_event(
            res, pos, "patient", _first_practitioner(res.get("recorder"), res.get("asserter")),
            res.get("onsetDateTime") or res.get("recordedDate") or res.get("assertedDate"), res.get("code"),
            _texts(res.get("note"))))
    elif rtype == "Immunization":
        rows.add("immunisations", **_event(
            res, pos, "patient", _first_practitioner(res.get("performer"), res.get("practitioner")),
            res.get("occurrenceDateTime") or res.get("date"), res.get("vaccineCode"), _texts(res.get("note")),
            status=res.get("status")))
    elif rtype in ("ServiceRequest", "ReferralRequest"):
        practitioner = _first_practitioner(res.get("requester"), (res.get("requester") or {}).get("agent"))
        text = _texts(res.get("note"), res.get("description"))
        if res.get("intent") == "plan":
            rows.add("recalls", **_event(
                res, pos, "subject", practitioner, res.get("authoredOn"), res.get("code"), text,
                status=res.get("status"), due_date=res.get("occurrenceDateTime")))
        else:
            concept = res.get("code") or (res.get("serviceRequested") or [None])[0]
            rows.add("referrals", **_event(
                res, pos, "subject", practitioner, res.get("authoredOn"), concept, text,
                status=res.get("status"), priority=res.get("priority")))
    elif rtype == "Appointment":
        patient = practitioner = None
        for part in res.get("participant") or ():
            ref = (part.get("actor") or {}).get("reference") or ""
            if "Patient/" in ref and patient is None:
                patient = _ref(part["actor"])
            elif "Practitioner/" in ref and practitioner is None:
                practitioner = _ref(part["actor"])
        start = res.get("start")
        rows.add("appointments", source_id=res.get("id"), patient_ref=patient, practitioner_ref=practitioner,
                 event_date=start, code_system=None, code=None, free_text=_texts(res.get("description"),
                                                                                 res.get("comment")),
                 status=res.get("status"), start_time=start, duration_minutes=res.get("minutesDuration"), **pos)


def _dates(values: list) -> pa.Array:
    """ISO dates or datetimes to date32; anything unparseable becomes null (and is quarantined later)."""
    arr = pa.array([v[:10] if isinstance(v, str) else None for v in values], pa.string())
    return pc.cast(pc.strptime(arr, format="%Y-%m-%d", unit="s", error_is_null=True), pa.date32())


def _timestamps(values: list) -> pa.Array:
    arr = pa.array([v if isinstance(v, str) else None for v in values], pa.string())
    with_zone = pc.strptime(arr, format="%Y-%m-%dT%H:%M:%S%z", unit="us", error_is_null=True)
    return pc.cast(with_zone, pa.timestamp("us", tz="UTC"))


def _table(name: str, cols: dict[str, list]) -> pa.Table:
    schema = CANONICAL[name]
    arrays = []
    for field in schema:
        values = cols.get(field.name, [])
        if pa.types.is_date32(field.type):
            arrays.append(_dates(values))
        elif pa.types.is_timestamp(field.type):
            arrays.append(_timestamps(values))
        elif pa.types.is_floating(field.type):
            arrays.append(pa.array([v if isinstance(v, (int, float)) and not isinstance(v, bool) else None
                                    for v in values], field.type))
        elif pa.types.is_integer(field.type):
            arrays.append(pa.array([v if isinstance(v, int) and not isinstance(v, bool) else None
                                    for v in values], field.type))
        else:
            arrays.append(pa.array([v if v is None or isinstance(v, str) else str(v) for v in values], field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def bundle_files(location: Path) -> list[Path]:
    return sorted(p for p in location.glob("*.json") if p.is_file())


def read_bundles(location: Path, practice: str, only: list[str] | None = None) -> dict[str, pa.Table]:
    """Read every bundle in a practice's delivery folder (or the ``only`` ones) into canonical tables."""
    location = Path(location)
    if not location.is_dir():
        raise SourceError(f"delivery folder {location} does not exist", practice=practice)
    files = bundle_files(location)
    if only is not None:
        files = [f for f in files if f.name in set(only)]
    if not files:
        raise SourceError(f"no FHIR bundles (*.json) in {location}", practice=practice)
    rows = _Rows()
    for path in files:
        try:
            doc = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise SourceError(f"not valid JSON ({exc.args[0].split(':')[0]})", practice=practice,
                              file=path.name) from None
        if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
            raise SourceError("not a FHIR Bundle", practice=practice, file=path.name)
        for index, entry in enumerate(doc.get("entry") or ()):
            res = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(res, dict) or "resourceType" not in res:
                raise SourceError("bundle entry without a resource", practice=practice, file=path.name,
                                  row=index)
            _route(res, rows, {"_src_file": path.name, "_src_entry": index})
    others = rows.organisations - {practice}
    if others:
        raise SourceError(f"delivery names another practice's ODS code ({', '.join(sorted(others))})",
                          practice=practice, file=str(location))
    prac = rows.cols["practitioners"]
    prac["role_code"] = [rows.roles.get(r or "", (None, None))[0] for r in prac["source_id"]]
    prac["role_name"] = [rows.roles.get(r or "", (None, None))[1] for r in prac["source_id"]]
    return {name: _table(name, cols) for name, cols in rows.cols.items()}
