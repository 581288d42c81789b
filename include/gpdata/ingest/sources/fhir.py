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

from gpdata.codes import OptOutCodes, optout_codes, system_label, trim_code
from gpdata.errors import SourceError
from gpdata.model import CANONICAL, TYPE1_EVIDENCE, TYPE1_EVIDENCE_SCHEMA

SCHEMAS = {**CANONICAL, TYPE1_EVIDENCE: TYPE1_EVIDENCE_SCHEMA}

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
_PREFERRED = ("snomed", "dmd", "readv2", "ctv3")
NHS_REF = "nhs:"  # a subject given by NHS-number identifier, until it is resolved to the Patient resource
_NHS_SYSTEMS = {"fhir.nhs.uk/id/nhs-number", "2.16.840.1.113883.2.1.4.1"}
# Where a resource says when it happened, in order of preference (all FHIR R4 and STU3 forms).
_DATE_FIELDS = ("effectiveDateTime", "effectiveInstant", "effectivePeriod", "onsetDateTime", "onsetPeriod",
                "assertedDate", "recordedDate", "performedDateTime", "performedPeriod", "occurrenceDateTime",
                "authoredOn", "issued", "dateTime", "date", "period")


def _is_nhs_system(system) -> bool:
    if not isinstance(system, str):
        return False
    key = system.strip().lower().removeprefix("urn:oid:").removeprefix("https://").removeprefix("http://")
    return key.rstrip("/") in _NHS_SYSTEMS


def _ref(reference) -> str | None:
    """The id a reference points to: ``Patient/<id>``, ``urn:uuid:<id>``, a bare string, or an NHS-number
    identifier (``nhs:<number>``, resolved to the Patient resource once the delivery is read)."""
    if isinstance(reference, str):
        ref = reference
    elif isinstance(reference, dict):
        ref = reference.get("reference")
        if not ref:
            ident = reference.get("identifier")
            if isinstance(ident, dict) and _is_nhs_system(ident.get("system")) and isinstance(ident.get("value"), str):
                return NHS_REF + ident["value"]
            return None
    else:
        return None
    if not isinstance(ref, str) or not ref.strip():
        return None
    return ref.strip().rsplit("/", 1)[-1].removeprefix("urn:uuid:")


def _code(concept: dict | None) -> tuple[str | None, str | None]:
    """The preferred (system, code) of a CodeableConcept: SNOMED first, then dm+d, Read v2, CTV3. Systems are
    normalised (URI variants, OIDs) and codes trimmed."""
    best: tuple[int, str | None, str | None] = (len(_PREFERRED) + 1, None, None)
    for coding in (concept or {}).get("coding") or ():
        system = system_label(coding.get("system"))
        code = trim_code(coding.get("code"))
        rank = _PREFERRED.index(system) if system in _PREFERRED else len(_PREFERRED)
        if rank < best[0] and code:
            best = (rank, system, code)
    return best[1], best[2]


def _every_code(res) -> list[str]:
    """Every ``code`` string anywhere in a resource: each coding of each concept, in any element."""
    found, stack = [], [res]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            code = node.get("code")
            if isinstance(code, str):
                found.append(code)
            stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, (dict, list)))
    return found


def _clinical_date(res: dict):
    for name in _DATE_FIELDS:
        value = res.get(name)
        if isinstance(value, dict):
            value = value.get("start")
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _type1_evidence(res: dict, rows: _Rows, pos: dict, codes: OptOutCodes) -> None:
    """A type 1 dissent or withdrawal code anywhere in the resource, with its patient and date."""
    kinds = {codes.kind(c) for c in _every_code(res)} - {None}
    if not kinds:
        return
    if res.get("resourceType") == "Patient":
        ref = res.get("id") if isinstance(res.get("id"), str) else None
    else:
        ref = next((r for r in (_ref(res.get(k)) for k in ("subject", "patient")) if r), None)
    nhs = ref[len(NHS_REF):] if ref and ref.startswith(NHS_REF) else None
    rows.add(TYPE1_EVIDENCE, patient_ref=None if nhs else ref, nhs_number=nhs, event_date=_clinical_date(res),
             kind="dissent" if "dissent" in kinds else "withdrawn", **pos)


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
        self.cols: dict[str, dict[str, list]] = {t: defaultdict(list) for t in SCHEMAS}
        self.roles: dict[str, tuple[str | None, str | None]] = {}
        self.organisations: set[str] = set()

    def add(self, table: str, **values) -> None:
        cols = self.cols[table]
        for name in SCHEMAS[table].names:
            cols[name].append(values.get(name))


def _event(res: dict, pos: dict, patient_key: str, practitioner, date, concept, text, **extra) -> dict:
    system, code = _code(concept)
    return dict(source_id=res.get("id"), patient_ref=_ref(res.get(patient_key)), practitioner_ref=practitioner,
                event_date=date, code_system=system, code=code, free_text=text, **pos, **extra)


def _patient(res: dict, rows: _Rows, pos: dict) -> None:
    nhs = next((i.get("value") for i in res.get("identifier") or ()
                if isinstance(i, dict) and _is_nhs_system(i.get("system"))), None)
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
    schema = SCHEMAS[name]
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


def _digits(value: str) -> str:
    return "".join(ch for ch in value if ch.isdigit())


def _resolve_nhs_refs(rows: _Rows) -> None:
    """Subjects given by NHS-number identifier point to the delivery's Patient resource with that number;
    one that matches no Patient is left unlinked (quarantined as an unknown patient), never kept as a number."""
    pats = rows.cols["patients"]
    by_nhs = {_digits(n): sid for n, sid in zip(pats["nhs_number"], pats["source_id"], strict=True)
              if isinstance(n, str) and sid}
    evidence = rows.cols[TYPE1_EVIDENCE]
    if evidence.get("nhs_number"):  # a type 1 code whose subject was an NHS number: its Patient, if delivered
        evidence["patient_ref"] = [ref or (by_nhs.get(_digits(nhs)) if isinstance(nhs, str) else None)
                                   for ref, nhs in zip(evidence["patient_ref"], evidence["nhs_number"], strict=True)]
    for name in (*CANONICAL, TYPE1_EVIDENCE):
        refs = rows.cols[name].get("patient_ref")
        if refs and any(isinstance(r, str) and r.startswith(NHS_REF) for r in refs):
            rows.cols[name]["patient_ref"] = [by_nhs.get(_digits(r[len(NHS_REF):])) if isinstance(r, str)
                                              and r.startswith(NHS_REF) else r for r in refs]


def read_bundles(location: Path, practice: str, only: list[str] | None = None,
                 type1: OptOutCodes | None = None) -> dict[str, pa.Table]:
    """Read every bundle in a practice's delivery folder (or the ``only`` ones) into canonical tables, plus
    ``type1_evidence``: every type 1 code found anywhere in a resource (``type1``: the configured codes)."""
    type1 = type1 or optout_codes()
    needles = type1.needles()
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
        raw = path.read_bytes()
        # Only a file that holds a type 1 code (or a JSON escape that could spell one) is searched resource by
        # resource for it; in every other file no resource can carry one.
        scan = b"\\u" in raw or any(n in raw for n in needles)
        try:
            doc = orjson.loads(raw)
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
            pos = {"_src_file": path.name, "_src_entry": index}
            _route(res, rows, pos)
            if scan:
                _type1_evidence(res, rows, pos, type1)
    others = rows.organisations - {practice}
    if others:
        raise SourceError(f"delivery names another practice's ODS code ({', '.join(sorted(others))})",
                          practice=practice, file=str(location))
    _resolve_nhs_refs(rows)
    prac = rows.cols["practitioners"]
    prac["role_code"] = [rows.roles.get(r or "", (None, None))[0] for r in prac["source_id"]]
    prac["role_name"] = [rows.roles.get(r or "", (None, None))[1] for r in prac["source_id"]]
    return {name: _table(name, cols) for name, cols in rows.cols.items()}
