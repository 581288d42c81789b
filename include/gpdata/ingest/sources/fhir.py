"""FHIR R4 (UK Core) and GP Connect bundles to canonical Arrow tables.

A delivery is a folder of JSON Bundles. Resources are routed by type; references may be relative
(``Patient/<id>``) or ``urn:uuid:<id>``. Each row keeps its position (file and entry index) so a
problem can be reported without its values.
"""

from __future__ import annotations

import gc
import hashlib
import re
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from gpdata.codes import OptOutCodes, optout_codes, system_label, trim_code
from gpdata.errors import SourceError
from gpdata.ingest.sources import CHANGED
from gpdata.model import CANONICAL, EVENT_TABLES, ISSUE, TYPE1_EVIDENCE, TYPE1_EVIDENCE_SCHEMA

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
VACCINATION_PROCEDURE_URLS = (
    "https://fhir.hl7.org.uk/STU3/StructureDefinition/Extension-CareConnect-VaccinationProcedure-1",
    "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-VaccinationProcedure",
)
_PREFERRED = ("snomed", "dmd", "readv2", "ctv3")
_RANK = {system: rank for rank, system in enumerate(_PREFERRED)}
ODS_REF = "ods:"  # an organisation given by its ODS code (identifier), not by reference
NHS_REF = "nhs:"  # a subject given by NHS-number identifier, until it is resolved to the Patient resource
_NHS_SYSTEMS = {"fhir.nhs.uk/id/nhs-number", "2.16.840.1.113883.2.1.4.1"}
_EFFECTIVE = ("effectiveDateTime", "effectiveInstant", "effectivePeriod", "issued")
_ONSET = ("onsetDateTime", "onsetPeriod", "recordedDate", "assertedDate")
# Where a resource says when it happened, in order of preference (all FHIR R4 and STU3 forms).
_DATE_FIELDS = ("effectiveDateTime", "effectiveInstant", "effectivePeriod", "onsetDateTime", "onsetPeriod",
                "assertedDate", "recordedDate", "performedDateTime", "performedPeriod", "occurrenceDateTime",
                "authoredOn", "issued", "dateTime", "date", "period")


def _is_nhs_system(system) -> bool:
    if not isinstance(system, str):
        return False
    key = system.strip().lower().removeprefix("urn:oid:").removeprefix("https://").removeprefix("http://")
    return key.rstrip("/") in _NHS_SYSTEMS


class Unreadable(Exception):
    """A resource element whose shape cannot be read (``path``: its FHIR path, never its value)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


# Defensive accessors. FHIR lets real senders vary shapes a little (one object where a list is expected, a
# number where a string is, a list of one where an object is): those are read. Anything else is Unreadable,
# which names the element's path, so the entry is quarantined with a reason and never crashes the run.

def _obj(value, path: str) -> dict | None:
    """An object (or None); a list holding one object is read as that object."""
    if value is None or isinstance(value, dict):
        return value
    if isinstance(value, list):
        items = [v for v in value if v is not None]
        if not items:
            return None
        if isinstance(items[0], dict):
            return items[0]
    raise Unreadable(path)


def _objs(value, path: str) -> list[dict]:
    """A list of objects; a single object is read as a list of one."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        for item in value:
            if not isinstance(item, dict):
                break
        else:
            return value  # the usual case: every item an object (callers only read the list)
        for i, item in enumerate(value):
            if item is not None and not isinstance(item, dict):
                raise Unreadable(f"{path}[{i}]")
        return [v for v in value if v is not None]
    raise Unreadable(path)


def _text(value, path: str) -> str | None:
    """A string as sent, byte for byte (None when empty or blank: free text such as a status keeps a leading tab
    or '=', which outputs neutralise, never the store); a number is read as its text. Codes are trimmed apart
    (``trim_code``)."""
    if isinstance(value, str):
        return value if value and not value.isspace() else None
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise Unreadable(path)


def _strs(value, path: str) -> list[str]:
    """A list of strings; a single string is read as a list of one."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    out = []
    for i, item in enumerate(items):
        text = _text(item, f"{path}[{i}]" if isinstance(value, list) else path)
        if text:
            out.append(text)
    return out


def _number(value, path: str) -> float | None:
    """A number; a string holding a decimal number is read as it."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise Unreadable(path) from None
        if number == number and abs(number) != float("inf"):
            return number
    raise Unreadable(path)


def _integer(value, path: str) -> int | None:
    number = _number(value, path)
    if number is None:
        return None
    if number != int(number) or abs(number) > 2**31 - 1:
        raise Unreadable(path)
    return int(number)


_MISSING = object()
_CACHE_SIZE = 1 << 16
_REF_IDS: dict[str, str | None] = {}  # a reference's text -> the id it points to (the same ones recur)
_LABELS: dict[str, str | None] = {}  # a code system as sent -> its label (system_label)


def _ref(reference, path: str = "reference") -> str | None:
    """The id a reference points to: ``Patient/<id>``, ``urn:uuid:<id>``, ``#<id>`` (contained), a bare string,
    or an NHS-number identifier (``nhs:<number>``, resolved to the Patient resource once the delivery is read)."""
    if isinstance(reference, list):
        reference = _obj(reference, path)
    if reference is None:
        return None
    if isinstance(reference, str):
        ref = reference
    elif isinstance(reference, dict):
        ref = reference.get("reference")
        if not isinstance(ref, str):
            ref = _text(ref, f"{path}.reference")
        if not ref or ref.isspace():
            ident = _obj(reference.get("identifier"), f"{path}.identifier")
            value = _text(ident.get("value"), f"{path}.identifier.value") if ident else None
            if ident and _is_nhs_system(ident.get("system")) and value:
                return NHS_REF + value
            return None
    else:
        raise Unreadable(path)
    found = _REF_IDS.get(ref, _MISSING)
    if found is _MISSING:
        found = ref.strip()
        found = (found.rsplit("/", 1)[-1].removeprefix("urn:uuid:").removeprefix("#") or None) if found else None
        if len(_REF_IDS) >= _CACHE_SIZE:
            _REF_IDS.clear()
        _REF_IDS[ref] = found
    return found


def _lenient_ref(reference) -> str | None:
    try:
        return _ref(reference)
    except Unreadable:
        return None


def _codings(concept, path: str) -> list[tuple[str | None, str | None, str | None]]:
    """(system label, code, display) of each coding of a CodeableConcept; codes trimmed."""
    concept = _obj(concept, path)
    if not concept:
        return []
    out = []
    try:
        codings = _objs(concept.get("coding"), ".coding")
    except Unreadable as exc:
        raise Unreadable(path + exc.path) from None
    for i, coding in enumerate(codings):
        try:
            system = _text(coding.get("system"), ".system")
            code = _text(coding.get("code"), ".code")
            display = _text(coding.get("display"), ".display")
        except Unreadable as exc:
            raise Unreadable(f"{path}.coding[{i}]{exc.path}") from None
        if system is not None:
            label = _LABELS.get(system, _MISSING)
            if label is _MISSING:
                if len(_LABELS) >= _CACHE_SIZE:
                    _LABELS.clear()
                label = _LABELS[system] = system_label(system)
            system = label
        out.append((system, trim_code(code), display))
    return out


def _code(concept, path: str = "code") -> tuple[str | None, str | None]:
    """The preferred (system, code) of a CodeableConcept: SNOMED first, then dm+d, Read v2, CTV3. Systems are
    normalised (URI variants, OIDs) and codes trimmed."""
    best: tuple[int, str | None, str | None] = (len(_PREFERRED) + 1, None, None)
    for system, code, _ in _codings(concept, path):
        rank = _RANK.get(system, len(_PREFERRED))
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
            elif isinstance(code, (int, float)) and not isinstance(code, bool):
                found.append(str(code))
            stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, (dict, list)))
    return found


def _when(res: dict, rtype: str, names: tuple[str, ...]) -> str | None:
    """The first date among ``names``: a dateTime, an instant or a Period's start."""
    for name in names:
        value = res.get(name)
        if value is None:
            continue
        if isinstance(value, (dict, list)):
            period = _obj(value, f"{rtype}.{name}")
            value = period.get("start") if period else None
            name = f"{name}.start"
        if isinstance(value, str):
            if value and not value.isspace():
                return value
            continue
        text = _text(value, f"{rtype}.{name}")
        if text:
            return text
    return None


def _clinical_date(res: dict):
    try:
        return _when(res, "", _DATE_FIELDS)
    except Unreadable:
        return None


def _type1_evidence(res: dict, rows: _Rows, pos: dict, codes: OptOutCodes) -> None:
    """A type 1 dissent or withdrawal code anywhere in the resource, with its patient and date. Reads any shape:
    it runs on unreadable entries too, so their evidence is never lost."""
    kinds = {codes.kind(c) for c in _every_code(res)} - {None}
    if not kinds:
        return
    if res.get("resourceType") == "Patient":
        ref = res.get("id") if isinstance(res.get("id"), str) else None
    else:
        ref = next((r for r in (_lenient_ref(res.get(k)) for k in ("subject", "patient")) if r), None)
    nhs = ref[len(NHS_REF):] if ref and ref.startswith(NHS_REF) else None
    rows.add(TYPE1_EVIDENCE, patient_ref=None if nhs else ref, nhs_number=nhs, event_date=_clinical_date(res),
             kind="dissent" if "dissent" in kinds else "withdrawn", **pos)


_NUMERIC_CODE = re.compile(rb'"code":[-0-9]')


def _entry_needles(needles: tuple[bytes, ...]) -> tuple[bytes, ...] | None:
    """The needles to look for in a resource's compact JSON (``orjson.dumps``), or None when one of them holds a
    byte that JSON escapes (a quote, a backslash, a control character): then no resource can be passed over."""
    if any(b in n for n in needles for b in (b'"', b"\\")) or any(c < 0x20 for n in needles for c in n):
        return None
    return needles


def _may_hold_type1(res: dict, needles: tuple[bytes, ...] | None) -> bool:
    """False only when no ``code`` in the resource can be a type 1 code: its compact JSON (where strings are
    unescaped, UTF-8) holds none of the needles and no ``code`` given as a number (whose text could differ from
    Python's). Each type 1 form ``OptOutCodes.kind`` matches is a substring of the code's text, so this passes
    over no resource that ``_type1_evidence`` would find evidence in."""
    if needles is None:
        return True
    try:
        compact = orjson.dumps(res)
    except (orjson.JSONEncodeError, TypeError):
        return True
    for needle in needles:
        if needle in compact:
            return True
    return _NUMERIC_CODE.search(compact) is not None


def _first_practitioner(rtype: str, **candidates) -> str | None:
    """The first practitioner among the named elements (a reference, or a list of references or of
    participants with an ``actor``)."""
    for name, cand in candidates.items():
        if cand is None:
            continue
        try:
            items = _objs(cand, "")
        except Unreadable as exc:
            raise Unreadable(f"{rtype}.{name}{exc.path}") from None
        for i, item in enumerate(items):
            inner = item.get("actor", item.get("agent"))
            try:
                ref = _ref(inner, ".actor") if inner is not None else _ref(item, "")
            except Unreadable as exc:
                raise Unreadable(f"{rtype}.{name}[{i}]{exc.path}") from None
            if ref:
                return ref
    return None


def _texts(rtype: str, **parts) -> str | None:
    """Free text of the named elements (strings, or objects or lists of objects with a ``text``)."""
    out = []
    for name, part in parts.items():
        if isinstance(part, str):
            out.append(part)
        elif part is not None:
            for i, item in enumerate(_objs(part, f"{rtype}.{name}")):
                text = item.get("text")
                if not isinstance(text, str) or text.isspace():
                    text = _text(text, f"{rtype}.{name}[{i}].text")
                if text:
                    out.append(text)
    text = " | ".join(t for t in out if t)
    return text or None


_NAMES = {name: tuple(schema.names) for name, schema in SCHEMAS.items()}
_CHUNK_ROWS = 32_768  # rows of a table held as Python values before they become an Arrow chunk


class _Rows:
    """Per canonical table: the rows not yet converted (dicts of values) and the Arrow chunks made of the others,
    so that Python values are held for at most ``_CHUNK_ROWS`` rows a table; and what the delivery says beyond
    the tables."""

    def __init__(self) -> None:
        self.pending: dict[str, list[tuple]] = {t: [] for t in SCHEMAS}  # values in schema order, then _issue
        self.chunks: dict[str, list[pa.Table]] = {t: [] for t in SCHEMAS}
        self.flushed: dict[str, int] = dict.fromkeys(SCHEMAS, 0)
        self.roles: dict[str, tuple[str | None, str | None]] = {}
        self.organisations: set[str] = set()
        self.org_ods: dict[str, str] = {}  # Organization id (and fullUrl) -> ODS code
        # (file, organisations a patient is registered at), each distinct one once, in delivery order
        self.patient_orgs: dict[tuple[str, tuple[str, ...]], None] = {}
        self.unmapped: dict[str, int] = defaultdict(int)
        self.unreadable: dict[str, int] = defaultdict(int)
        self.medications: dict[str, tuple[str | None, str | None]] = {}  # Medication id -> (system, code)
        self.med_refs: list[tuple[int, str]] = []  # (row of medications, Medication id) to resolve at the end

    def add(self, table: str, _issue: str | None = None, **values) -> None:
        pending = self.pending[table]
        pending.append((*map(values.get, _NAMES[table]), _issue))
        if len(pending) >= _CHUNK_ROWS and table != TYPE1_EVIDENCE:
            self.flush(table)

    def size(self, table: str) -> int:
        """Rows of ``table`` so far: the index the next one will have."""
        return self.flushed[table] + len(self.pending[table])

    def flush(self, table: str) -> None:
        pending = self.pending[table]
        if pending:
            self.chunks[table].append(_chunk(table, pending))
            self.flushed[table] += len(pending)
            self.pending[table] = []


# The table each mapped resource type goes to (ServiceRequest and ReferralRequest: referrals or recalls).
_TABLE_OF = {"Patient": "patients", "Practitioner": "practitioners", "Condition": "observations",
             "Observation": "observations", "MedicationStatement": "medications",
             "MedicationRequest": "medications", "AllergyIntolerance": "allergies", "Immunization": "immunisations",
             "ServiceRequest": "referrals", "ReferralRequest": "referrals", "Appointment": "appointments"}
# Resource types read for what they tell about others (roles, organisations), not as rows of their own.
_CONTEXT = {"PractitionerRole", "Organization", "Medication"}


def _event(res: dict, rtype: str, pos: dict, patient_key: str, practitioner, date, concept, text,
           concept_path: str = "code", **extra) -> dict:
    try:
        system, code = _code(concept, concept_path)
        source_id = _text(res.get("id"), "id")
        patient = _ref(res.get(patient_key), patient_key)
    except Unreadable as exc:
        raise Unreadable(f"{rtype}.{exc.path}") from None
    return dict(source_id=source_id, patient_ref=patient, practitioner_ref=practitioner,
                event_date=date, code_system=system, code=code, free_text=text, **pos, **extra)


def _first_name(res: dict, rtype: str) -> tuple[str | None, str | None]:
    names = _objs(res.get("name"), f"{rtype}.name")
    name = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
    return (_text(name.get("family"), f"{rtype}.name.family"),
            " ".join(_strs(name.get("given"), f"{rtype}.name.given")) or None)


def _patient(res: dict, rows: _Rows, pos: dict) -> None:
    nhs = None
    for i, ident in enumerate(_objs(res.get("identifier"), "Patient.identifier")):
        if _is_nhs_system(ident.get("system")):
            nhs = _text(ident.get("value"), f"Patient.identifier[{i}].value")
            break
    family, given = _first_name(res, "Patient")
    addresses = _objs(res.get("address"), "Patient.address")
    address = next((a for a in addresses if a.get("use") == "home"), addresses[0] if addresses else {})
    ethnic = registration = registration_end = None
    for i, ext in enumerate(_objs(res.get("extension"), "Patient.extension")):
        url = ext.get("url")
        where = f"Patient.extension[{i}]"
        if url in ETHNIC_CATEGORY_URLS:
            ethnic = _code(ext.get("valueCodeableConcept"), f"{where}.valueCodeableConcept")[1]
        elif url in REGISTRATION_URLS:
            for j, sub in enumerate(_objs(ext.get("extension"), f"{where}.extension")):
                if sub.get("url") == "registrationPeriod":
                    period = _obj(sub.get("valuePeriod"), f"{where}.extension[{j}].valuePeriod") or {}
                    registration = _text(period.get("start"), f"{where}.extension[{j}].valuePeriod.start")
                    registration_end = _text(period.get("end"), f"{where}.extension[{j}].valuePeriod.end")
    telecom = [_text(t.get("value"), f"Patient.telecom[{i}].value")
               for i, t in enumerate(_objs(res.get("telecom"), "Patient.telecom"))]
    gps = _objs(res.get("generalPractitioner"), "Patient.generalPractitioner")
    orgs = []  # where the patient is registered: references to Organizations, or ODS codes given as identifiers
    managing = _objs(res.get("managingOrganization"), "Patient.managingOrganization")
    for name, items in (("generalPractitioner", gps), ("managingOrganization", managing)):
        for i, item in enumerate(items):
            ident = _obj(item.get("identifier"), f"Patient.{name}[{i}].identifier") or {}
            if ident.get("system") == ODS_SYSTEM and _text(ident.get("value"), f"Patient.{name}[{i}].identifier"):
                orgs.append(ODS_REF + _text(ident.get("value"), f"Patient.{name}[{i}].identifier.value"))
            ref = _ref(item, f"Patient.{name}[{i}]")
            if ref:
                orgs.append(ref)
    rows.patient_orgs.setdefault((pos["_src_file"], tuple(orgs)))
    rows.add("patients", source_id=_text(res.get("id"), "Patient.id"), nhs_number=nhs, family_name=family,
             given_names=given, birth_date=_text(res.get("birthDate"), "Patient.birthDate"),
             gender=_text(res.get("gender"), "Patient.gender"),
             address=", ".join(_strs(address.get("line"), "Patient.address.line")) or None,
             postcode=_text(address.get("postalCode"), "Patient.address.postalCode"),
             telecom=", ".join(t for t in telecom if t) or None,
             ethnic_category=ethnic, registration_date=registration, registration_end_date=registration_end,
             deceased_date=_text(res.get("deceasedDateTime"), "Patient.deceasedDateTime"),
             gp_ref=_ref(gps[0], "Patient.generalPractitioner[0]") if gps else None, **pos)


def _observation(res: dict, rtype: str, rows: _Rows, pos: dict) -> None:
    is_condition = rtype == "Condition"
    date = _when(res, rtype, _ONSET if is_condition else _EFFECTIVE)
    value, unit = _quantity(res, rtype)
    code = res.get("code")
    code = (code if isinstance(code, dict) else _obj(code, f"{rtype}.code")) or {}
    event = _event(res, rtype, pos, "subject", _first_practitioner(rtype, asserter=res.get("asserter"),
                                                                   recorder=res.get("recorder"),
                                                                   performer=res.get("performer")),
                   date, code, _texts(rtype, **{"code.text": code.get("text"), "note": res.get("note"),
                                                 "valueString": res.get("valueString"),
                                                 "comment": res.get("comment")}),
                   category="condition" if is_condition else "observation", value=value, unit=unit)
    components = res.get("component")
    components = [] if is_condition or components is None else _objs(components, f"{rtype}.component")
    parts = []
    for i, comp in enumerate(components):  # each value of a panel (e.g. blood pressure) is a row of its own
        where = f"{rtype}.component[{i}]"
        c_system, c_code = _code(comp.get("code"), f"{where}.code")
        c_value, c_unit = _quantity(comp, where)
        parts.append(dict(event, source_id=f"{event['source_id']}#component-{i}" if event["source_id"] else None,
                          code_system=c_system, code=c_code, value=c_value, unit=c_unit, free_text=None,
                          panel_ref=event["source_id"]))
    rows.add("observations", **event)
    for part in parts:
        rows.add("observations", **part)


def _quantity(element: dict, where: str) -> tuple[float | None, str | None]:
    """(value, unit) of an element's valueQuantity: the UCUM code where there is one, else the unit text."""
    quantity = element.get("valueQuantity")
    if quantity is None:
        return None, None
    try:
        quantity = _obj(quantity, "valueQuantity") or {}
        return (_number(quantity.get("value"), "valueQuantity.value"),
                _text(quantity.get("code"), "valueQuantity.code")
                or _text(quantity.get("unit"), "valueQuantity.unit"))
    except Unreadable as exc:
        raise Unreadable(f"{where}.{exc.path}") from None


def _medication(res: dict, rtype: str, rows: _Rows, pos: dict) -> None:
    intent = _text(res.get("intent"), f"{rtype}.intent") or "order"
    is_issue = rtype == "MedicationRequest" and intent == "order"
    if is_issue:
        date = _when(res, rtype, ("authoredOn",))
    else:
        date = _when(res, rtype, ("effectiveDateTime", "effectivePeriod", "dateAsserted", "authoredOn"))
    quantity = _obj((_obj(res.get("dispenseRequest"), f"{rtype}.dispenseRequest") or {}).get("quantity"),
                    f"{rtype}.dispenseRequest.quantity") or {}
    based_on = _objs(res.get("basedOn"), f"{rtype}.basedOn")
    concept, path, medication = res.get("medicationCodeableConcept"), "medicationCodeableConcept", None
    if concept is None and res.get("medicationReference") is not None:
        medication = _ref(res.get("medicationReference"), f"{rtype}.medicationReference")
        for i, held in enumerate(_objs(res.get("contained"), f"{rtype}.contained")):
            if held.get("resourceType") == "Medication" and _text(held.get("id"), f"{rtype}.contained[{i}].id") \
                    == medication:
                concept, path, medication = held.get("code"), f"contained[{i}].code", None
                break
    if medication is not None:
        rows.med_refs.append((rows.size("medications"), medication))
    rows.add("medications", **_event(
        res, rtype, pos, "subject",
        _first_practitioner(rtype, requester=res.get("requester"), informationSource=res.get("informationSource"),
                            recorder=res.get("recorder")),
        date, concept,
        _texts(rtype, dosage=res.get("dosage"), dosageInstruction=res.get("dosageInstruction"),
               note=res.get("note")), concept_path=path,
        medication_type="issue" if is_issue else "authorisation", status=_text(res.get("status"), f"{rtype}.status"),
        quantity=_number(quantity.get("value"), f"{rtype}.dispenseRequest.quantity.value"),
        quantity_unit=_text(quantity.get("unit"), f"{rtype}.dispenseRequest.quantity.unit"),
        authorisation_ref=_ref(based_on[0], f"{rtype}.basedOn[0]") if based_on else None))


def _referral(res: dict, rtype: str, rows: _Rows, pos: dict) -> None:
    requester = res.get("requester")
    practitioner = _first_practitioner(rtype, requester=requester)
    text = _texts(rtype, note=res.get("note"), description=res.get("description"))
    status = _text(res.get("status"), f"{rtype}.status")
    if _text(res.get("intent"), f"{rtype}.intent") == "plan":
        rows.add("recalls", **_event(
            res, rtype, pos, "subject", practitioner, _when(res, rtype, ("authoredOn",)), res.get("code"), text,
            status=status, due_date=_when(res, rtype, ("occurrenceDateTime", "occurrencePeriod"))))
    else:
        concept, path = res.get("code"), "code"  # else what was requested, else why (GP Connect: reasonCode)
        for name in ("serviceRequested", "reasonCode"):
            if _code(concept, f"{rtype}.{path}")[1] is None and res.get(name) is not None:
                concept, path = _obj(res.get(name), f"{rtype}.{name}"), name
        rows.add("referrals", **_event(
            res, rtype, pos, "subject", practitioner, _when(res, rtype, ("authoredOn",)), concept, text,
            concept_path=path, status=status, priority=_text(res.get("priority"), f"{rtype}.priority")))


def _appointment(res: dict, rows: _Rows, pos: dict) -> None:
    patient = practitioner = None
    for i, part in enumerate(_objs(res.get("participant"), "Appointment.participant")):
        try:
            actor = _obj(part.get("actor"), ".actor") or {}
            ref = _text(actor.get("reference"), ".actor.reference") or ""
        except Unreadable as exc:
            raise Unreadable(f"Appointment.participant[{i}]{exc.path}") from None
        if "Patient/" in ref and patient is None:
            patient = _ref(actor)
        elif "Practitioner/" in ref and practitioner is None:
            practitioner = _ref(actor)
    start = _text(res.get("start"), "Appointment.start")
    rows.add("appointments", source_id=_text(res.get("id"), "Appointment.id"), patient_ref=patient,
             practitioner_ref=practitioner, event_date=start, code_system=None, code=None,
             free_text=_texts("Appointment", description=res.get("description"), comment=res.get("comment")),
             status=_text(res.get("status"), "Appointment.status"), start_time=start,
             duration_minutes=_integer(res.get("minutesDuration"), "Appointment.minutesDuration"), **pos)


def _route(res: dict, rtype: str, rows: _Rows, pos: dict) -> None:
    if rtype == "Patient":
        _patient(res, rows, pos)
    elif rtype == "Practitioner":
        sds = None
        for i, ident in enumerate(_objs(res.get("identifier"), "Practitioner.identifier")):
            if ident.get("system") == SDS_USER_SYSTEM:
                sds = _text(ident.get("value"), f"Practitioner.identifier[{i}].value")
                break
        family, given = _first_name(res, "Practitioner")
        rows.add("practitioners", source_id=_text(res.get("id"), "Practitioner.id"), sds_user_id=sds,
                 family_name=family, given_names=given, **pos)
    elif rtype == "PractitionerRole":
        for i, concept in enumerate(_objs(res.get("code"), "PractitionerRole.code")):
            codings = _codings(concept, f"PractitionerRole.code[{i}]")
            code, display = (codings[0][1], codings[0][2]) if codings else (None, None)
            rows.roles[_ref(res.get("practitioner"), "PractitionerRole.practitioner") or ""] = (code, display)
            break
    elif rtype == "Organization":
        for i, ident in enumerate(_objs(res.get("identifier"), "Organization.identifier")):
            if ident.get("system") == ODS_SYSTEM:
                ods = _text(ident.get("value"), f"Organization.identifier[{i}].value")
                if ods:
                    rows.organisations.add(ods)
                    rows.org_ods.setdefault(_text(res.get("id"), "Organization.id") or "", ods)
                    if pos.get("_full_url"):
                        rows.org_ods.setdefault(pos["_full_url"], ods)
    elif rtype in ("Condition", "Observation"):
        _observation(res, rtype, rows, pos)
    elif rtype in ("MedicationStatement", "MedicationRequest"):
        _medication(res, rtype, rows, pos)
    elif rtype == "AllergyIntolerance":
        rows.add("allergies", **_event(
            res, rtype, pos, "patient", _first_practitioner(rtype, recorder=res.get("recorder"),
                                                            asserter=res.get("asserter")),
            _when(res, rtype, _ONSET), res.get("code"),
            _texts(rtype, note=res.get("note"))))
    elif rtype == "Immunization":
        concept, path = res.get("vaccineCode"), "vaccineCode"
        if _code(concept, f"{rtype}.vaccineCode")[0] not in _PREFERRED:  # e.g. a NullFlavor by design
            for i, ext in enumerate(_objs(res.get("extension"), f"{rtype}.extension")):
                if ext.get("url") in VACCINATION_PROCEDURE_URLS:
                    concept, path = ext.get("valueCodeableConcept"), f"extension[{i}].valueCodeableConcept"
                    break
        rows.add("immunisations", **_event(
            res, rtype, pos, "patient", _first_practitioner(rtype, performer=res.get("performer"),
                                                            practitioner=res.get("practitioner")),
            _when(res, rtype, ("occurrenceDateTime", "date", "recorded")), concept,
            _texts(rtype, note=res.get("note")), concept_path=path,
            status=_text(res.get("status"), f"{rtype}.status")))
    elif rtype == "Medication":
        rows.medications[_text(res.get("id"), "Medication.id") or ""] = _code(res.get("code"), "Medication.code")
    elif rtype in ("ServiceRequest", "ReferralRequest"):
        _referral(res, rtype, rows, pos)
    elif rtype == "Appointment":
        _appointment(res, rows, pos)
    else:
        rows.unmapped[rtype] += 1


def _unreadable_row(res: dict, rtype: str, rows: _Rows, pos: dict, path: str) -> None:
    """An entry that could not be read: a row of its table holding only what identifies it (its id, its
    patient when that can be read) and the reason, so the quality gate quarantines it by entry."""
    rows.unreadable[path] += 1
    table = _TABLE_OF.get(rtype)
    if table == "referrals" and res.get("intent") == "plan":
        table = "recalls"
    if table is None:
        return
    source_id = res.get("id") if isinstance(res.get("id"), str) else None
    patient = None
    if table not in ("patients", "practitioners"):
        patient = next((r for r in (_lenient_ref(res.get(k)) for k in ("subject", "patient")) if r), None)
    rows.add(table, _issue="unreadable_entry", source_id=source_id, patient_ref=patient, **pos)


def _dates(arr: pa.Array) -> pa.Array:
    """ISO dates or datetimes (their first 10 characters) to date32; anything unparseable becomes null (and is
    quarantined later)."""
    return pc.cast(pc.strptime(pc.utf8_slice_codeunits(arr, 0, 10), format="%Y-%m-%d", unit="s",
                               error_is_null=True), pa.date32())


def _timestamps(arr: pa.Array) -> pa.Array:
    with_zone = pc.strptime(arr, format="%Y-%m-%dT%H:%M:%S%z", unit="us", error_is_null=True)
    return pc.cast(with_zone, pa.timestamp("us", tz="UTC"))


def _strings(values: list) -> pa.Array:
    """Text as sent; any other value (never made by the readers, kept for safety) as its ``str``."""
    try:
        return pa.array(values, pa.string())
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        return pa.array([v if v is None or isinstance(v, str) else str(v) for v in values], pa.string())


def _chunk(name: str, rows: list[tuple]) -> pa.Table:
    """Rows of a canonical table (values in schema order, then the issue) as an Arrow table of its schema, plus
    ``_issue``: why an entry could not be read (null for the others). Dates and timestamps are parsed by Arrow."""
    schema = SCHEMAS[name]
    arrays = []
    columns = list(zip(*rows, strict=True))
    for field, values in zip(schema, columns, strict=False):
        if pa.types.is_date32(field.type):
            arrays.append(_dates(_strings([v if isinstance(v, str) else None for v in values])))
        elif pa.types.is_timestamp(field.type):
            arrays.append(_timestamps(_strings([v if isinstance(v, str) else None for v in values])))
        elif pa.types.is_floating(field.type):
            arrays.append(pa.array([v if isinstance(v, (int, float)) and not isinstance(v, bool) else None
                                    for v in values], field.type))
        elif pa.types.is_integer(field.type):
            arrays.append(pa.array([v if isinstance(v, int) and not isinstance(v, bool) else None
                                    for v in values], field.type))
        else:
            arrays.append(_strings(values))
    arrays.append(pa.array(columns[-1], pa.string()))
    return pa.Table.from_arrays(arrays, schema=schema.append(pa.field(ISSUE, pa.string())))


def _table(name: str, chunks: list[pa.Table]) -> pa.Table:
    """A canonical table from its chunks, with ``_issue`` only when an entry of it could not be read."""
    schema = SCHEMAS[name]
    if not chunks:
        return schema.empty_table()
    # One contiguous array a column, as the stages after extraction were measured with (chunked columns raised
    # the extract stage's peak by about 130 MiB at 10,000 patients); joined column by column, each column's chunks
    # freed once joined, so the join holds at most one column twice.
    full_schema = chunks[0].schema
    columns = [[part for chunk in chunks for part in chunk.column(i).chunks] for i in range(len(full_schema))]
    chunks.clear()
    arrays = []
    for i in range(len(columns)):
        parts, columns[i] = columns[i], None
        arrays.append(parts[0] if len(parts) == 1 else pa.concat_arrays(parts))
        del parts
    table = pa.Table.from_arrays(arrays, schema=full_schema)
    if table.column(ISSUE).null_count == table.num_rows:
        return table.drop_columns([ISSUE])
    return table


def bundle_files(location: Path) -> list[Path]:
    """The delivery's bundles: FHIR JSON (``*.json``) and FHIR XML (``*.xml``)."""
    return sorted(p for p in location.iterdir() if p.is_file() and p.suffix.lower() in (".json", ".xml"))


FHIR_NS = "http://hl7.org/fhir"
_RESOURCE_HOLDERS = {"resource", "contained", "outcome"}  # elements whose child is a whole resource


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _xml_children(element) -> dict:
    """The FHIR JSON form of an XML element's attributes and children (FHIR XML rules: a primitive's value in its
    ``value`` attribute, ``id`` and an extension's ``url`` as attributes, a repeated element as a list; the
    extensions of a primitive under ``_name``, as in JSON)."""
    out: dict = {}
    repeated: set[str] = set()
    for name in ("id", "url"):
        if element.get(name) is not None:
            out[name] = element.get(name)
    for child in element:
        if not isinstance(child.tag, str):  # a comment or a processing instruction
            continue
        name = _local(child.tag)
        if name == "div":  # the XHTML narrative: its text
            value = "".join(child.itertext())
        elif name in _RESOURCE_HOLDERS:
            inner = [c for c in child if isinstance(c.tag, str)]
            value = _xml_resource(inner[0]) if inner else None
        elif child.get("value") is not None:
            value = child.get("value")
            extra = _xml_children(child)
            extra.pop("id", None)
            if extra:
                out.setdefault(f"_{name}", extra)
        else:
            value = _xml_children(child)
        if name in repeated:
            out[name].append(value)
        elif name in out:
            out[name] = [out[name], value]
            repeated.add(name)
        else:
            out[name] = value
    return out


def _xml_resource(element) -> dict:
    return {"resourceType": _local(element.tag), **_xml_children(element)}


def _xml_document(raw: bytes, practice: str, name: str) -> dict:
    """A FHIR XML Bundle as its FHIR JSON form (lxml; no DTD, no entity expansion, no network)."""
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
                             remove_comments=True, remove_pis=True)
    try:
        root = etree.fromstring(raw, parser)
    except etree.XMLSyntaxError as exc:
        raise SourceError(f"not valid XML (line {exc.lineno})", practice=practice, file=name) from None
    if root.tag != f"{{{FHIR_NS}}}Bundle":
        raise SourceError("not a FHIR Bundle", practice=practice, file=name)
    return _xml_resource(root)


def _digits(value: str) -> str:
    return "".join(ch for ch in value if ch.isdigit())


def _replace(chunk: pa.Table, name: str, values: list) -> pa.Table:
    index = chunk.schema.get_field_index(name)
    return chunk.set_column(index, chunk.schema.field(index), _strings(values))


def _nhs_map(patients: list[pa.Table]) -> dict[str, str]:
    """NHS number (its digits) -> the source id of the delivery's Patient resource with that number."""
    by_nhs = {}
    for chunk in patients:
        by_nhs.update({_digits(n): sid for n, sid in zip(chunk["nhs_number"].to_pylist(),
                                                         chunk["source_id"].to_pylist(), strict=True)
                       if isinstance(n, str) and sid})
    return by_nhs


def _resolve_evidence_nhs(rows: _Rows, by_nhs: dict[str, str]) -> None:
    """A type 1 code whose subject was an NHS number: its Patient, if delivered (``type1_evidence``'s rows are
    still pending); then they are flushed."""
    ref_at, nhs_at = (_NAMES[TYPE1_EVIDENCE].index(n) for n in ("patient_ref", "nhs_number"))
    evidence = rows.pending[TYPE1_EVIDENCE]
    for i, row in enumerate(evidence):
        nhs, row = row[nhs_at], list(row)
        row[ref_at] = row[ref_at] or (by_nhs.get(_digits(nhs)) if isinstance(nhs, str) else None)
        evidence[i] = tuple(row)
    rows.flush(TYPE1_EVIDENCE)


def _resolve_nhs_refs(chunks: list[pa.Table], by_nhs: dict[str, str]) -> None:
    """Subjects given by NHS-number identifier point to the delivery's Patient resource with that number;
    one that matches no Patient is left unlinked (quarantined as an unknown patient), never kept as a number."""
    for i, chunk in enumerate(chunks):
        if "patient_ref" not in chunk.column_names or \
                not pc.any(pc.starts_with(chunk["patient_ref"], NHS_REF)).as_py():
            continue
        chunks[i] = _replace(chunk, "patient_ref", [
            by_nhs.get(_digits(r[len(NHS_REF):])) if isinstance(r, str) and r.startswith(NHS_REF) else r
            for r in chunk["patient_ref"].to_pylist()])


def _check_practice(rows: _Rows, practice: str, location: Path) -> None:
    """The delivery must be the practice's own: every patient registered (``generalPractitioner``,
    ``managingOrganization``) at an organisation is registered at this practice. Other organisations (the
    laboratory, the hospital, a previous practice) may appear freely. Where no patient names its organisation,
    a delivery that holds Organization resources must hold the practice's own among them."""
    for file, refs in rows.patient_orgs:
        codes = {r[len(ODS_REF):] if r.startswith(ODS_REF) else rows.org_ods.get(r) for r in refs} - {None}
        others = codes - {practice}
        if others and practice not in codes:
            raise SourceError(f"the delivery's patients are registered at another practice "
                              f"({', '.join(sorted(others))}), not {practice}", practice=practice, file=file)
    linked = any(r.startswith(ODS_REF) or r in rows.org_ods for _, refs in rows.patient_orgs for r in refs)
    if not linked and rows.organisations and practice not in rows.organisations:
        raise SourceError(f"the delivery names another practice's organisation "
                          f"({', '.join(sorted(rows.organisations))}) and not {practice}", practice=practice,
                          file=str(location.name))


def _entries(raw: bytes, path: Path, practice: str) -> list[tuple[dict, dict, str]]:
    """(entry, resource, resource type) of each entry of a bundle file, after checking the whole file: a file
    that cannot be read is refused before any of its entries is."""
    if path.suffix.lower() == ".xml":
        doc = _xml_document(raw, practice, path.name)
    else:
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise SourceError(f"not valid JSON ({exc.args[0].split(':')[0]})", practice=practice,
                              file=path.name) from None
    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
        raise SourceError("not a FHIR Bundle", practice=practice, file=path.name)
    entries = doc.get("entry")
    if isinstance(entries, dict):  # one entry (FHIR XML, or a sender's JSON)
        entries = [entries]
    if entries is not None and not isinstance(entries, list):
        raise SourceError("Bundle.entry is not a list", practice=practice, file=path.name)
    out = []
    for index, entry in enumerate(entries or ()):
        res = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(res, dict) or "resourceType" not in res:
            raise SourceError("bundle entry without a resource", practice=practice, file=path.name, row=index)
        rtype = res["resourceType"]
        if not isinstance(rtype, str) or not rtype.strip():
            raise SourceError("unreadable element resourceType", practice=practice, file=path.name, row=index)
        out.append((entry, res, rtype))
    return out


def _resolve_medications(chunks: list[pa.Table], start: int, refs: list[tuple[int, str]],
                         medications: dict[str, tuple[str | None, str | None]]) -> None:
    """The code of a medication named through medicationReference: the Medication resource in the delivery
    (a reference it does not hold leaves the code empty: the row is quarantined as an invalid code). ``chunks``
    hold the medications table's rows from row ``start``; ``refs`` are (row, Medication id) of rows among them."""
    resolved = {row: medications.get(ref, (None, None)) for row, ref in refs}
    if not resolved:
        return
    for i, chunk in enumerate(chunks):
        end = start + chunk.num_rows
        mine = [row for row in resolved if start <= row < end]
        if mine:
            systems, codes = chunk["code_system"].to_pylist(), chunk["code"].to_pylist()
            for row in mine:
                systems[row - start], codes[row - start] = resolved[row]
            chunks[i] = _replace(_replace(chunk, "code_system", systems), "code", codes)
        start = end


def _practitioner_roles(rows: _Rows) -> None:
    chunks = rows.chunks["practitioners"]
    for i, chunk in enumerate(chunks):
        roles = [rows.roles.get(r or "", (None, None)) for r in chunk["source_id"].to_pylist()]
        chunk = _replace(chunk, "role_code", [r[0] for r in roles])
        chunks[i] = _replace(chunk, "role_name", [r[1] for r in roles])


@contextmanager
def _without_cyclic_gc(collect: bool = True):
    """Python's cyclic garbage collector paused (and restored as it was). The reader makes no reference cycles
    (JSON trees and rows are freed by reference counting), but while it makes millions of dicts and lists the
    collector scans every live object again and again: on the 10,000-patient bench practice that was about 40 % of
    the read's CPU time. With ``collect``, one full collection at the end (where it was enabled) also empties the
    interpreter's free lists, whose few objects otherwise keep most of the memory the bundles' objects used from
    being returned (about 170 MiB at 10,000 patients)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
            if collect:
                gc.collect()


# Read in the first pass (``Delivery.people``), with every type 1 code: the people, and the resources read for
# what they tell about others (a practitioner's role, an organisation's ODS code, a referenced medication's code).
# Every other resource is read in the second pass (``Delivery.events``).
_FIRST_PASS = frozenset({"Patient", "Practitioner", "PractitionerRole", "Organization", "Medication"})


class Delivery:
    """A practice's FHIR delivery read in two passes over its bundles, so that its event rows are never held whole.

    ``people()`` reads every bundle for the patients, practitioners and context resources and every type 1 code
    (``type1_evidence``), checks that the delivery is the practice's, and keeps the rows of every event resource
    that may hold a type 1 code (``evidence_rows``); then ``events(batch_rows)`` reads the bundles again for the
    event tables, handed on ``batch_rows`` rows of a table at a time (all at the end without it), with references
    across the delivery (NHS-number subjects, ``medicationReference``) resolved from what the first pass kept. So
    every patient's type 1 status is known before any event row is read, and what is held is one bundle's JSON and
    at most a batch of each table. Each bundle must be the same bytes in both passes (a file replaced in between is
    refused: its events could belong to patients whose type 1 codes the first pass never saw).

    The rows, their order and ``report()`` are those of reading every bundle in one pass (``read_bundles``)."""

    def __init__(self, location: Path, practice: str, only: list[str] | None = None,
                 type1: OptOutCodes | None = None, *, strict: bool = False, independent_files: bool = False,
                 digests: dict[str, str] | None = None) -> None:
        self.location, self.practice, self.strict = Path(location), practice, strict
        self.independent_files = independent_files
        self.type1 = type1 or optout_codes()
        self.needles = self.type1.needles()
        if not self.location.is_dir():
            raise SourceError(f"delivery folder {self.location} does not exist", practice=practice)
        files = bundle_files(self.location)
        if only is not None:
            only = set(only)
            files = [f for f in files if f.name in only]
        if not files:
            raise SourceError(f"no FHIR bundles (*.json, *.xml) in {self.location}", practice=practice)
        self.files = files
        self.digests = dict(digests or {})  # file name -> sha256 (hex) of the bytes read
        self.refused: list[SourceError] = []  # independent bundles each refused alone (first pass)
        self.unmapped: dict[str, int] = defaultdict(int)
        self.unreadable: dict[str, int] = defaultdict(int)
        self.by_nhs: dict[str, str] = {}
        self.medications: dict[str, tuple[str | None, str | None]] = {}
        self.evidence_rows: dict[str, pa.Table] = {}
        self._read_people = False

    def _bundles(self, first: bool):
        """(file, entries, whether it may hold a type 1 code) of each bundle not refused, in order."""
        refused = {exc.file for exc in self.refused}
        for path in self.files:
            if path.name in refused:
                continue
            raw = path.read_bytes()
            digest = hashlib.sha256(raw).hexdigest()
            if self.digests.setdefault(path.name, digest) != digest:
                raise SourceError(CHANGED, practice=self.practice, file=path.name)
            # Only a file that holds a type 1 code (or a JSON escape that could spell one) is searched resource by
            # resource for it; in every other file no resource can carry one.
            scan = b"\\u" in raw or b"&#" in raw or any(n in raw for n in self.needles)  # JSON or XML escapes
            try:
                entries = _entries(raw, path, self.practice)
            except SourceError as exc:
                if not (first and self.independent_files):
                    raise
                self.refused.append(exc)  # this file alone is refused; nothing of it was read
                continue
            del raw
            yield path, entries, scan

    def _read(self, path: Path, index: int, entry: dict, res: dict, rtype: str, rows: _Rows) -> None:
        """One resource into ``rows``: its row, or an unreadable entry's (raised with ``strict``)."""
        pos = {"_src_file": path.name, "_src_entry": index}
        if rtype == "Organization" and isinstance(entry.get("fullUrl"), str):
            pos["_full_url"] = _lenient_ref(entry["fullUrl"])
        try:
            _route(res, rtype, rows, pos)
        except Unreadable as exc:
            if self.strict:
                raise SourceError(f"unreadable element {exc.path}", practice=self.practice, file=path.name,
                                  row=index) from None
            _unreadable_row(res, rtype, rows, pos, exc.path)
        else:
            if rtype == "Medication" and isinstance(entry.get("fullUrl"), str):  # referenced by fullUrl
                full = _lenient_ref(entry["fullUrl"])
                if full:
                    rows.medications[full] = rows.medications.get(res.get("id") or "", (None, None))

    def people(self) -> dict[str, pa.Table]:
        """The first pass: ``patients``, ``practitioners`` and ``type1_evidence``."""
        rows, candidates = _Rows(), _Rows()  # candidates: event resources that may hold a type 1 code
        entry_needles = _entry_needles(self.needles)
        try:
            with _without_cyclic_gc():
                for path, entries, scan in self._bundles(first=True):
                    for index, (entry, res, rtype) in enumerate(entries):
                        entries[index] = None  # each entry's objects are freed once it is read
                        may_hold = scan and _may_hold_type1(res, entry_needles)
                        if rtype in _FIRST_PASS:
                            self._read(path, index, entry, res, rtype, rows)
                        elif may_hold and rtype in _TABLE_OF:
                            self._read(path, index, entry, res, rtype, candidates)
                        if may_hold:
                            _type1_evidence(res, rows, {"_src_file": path.name, "_src_entry": index}, self.type1)
                if self.refused and len(self.refused) == len(self.files):
                    raise self.refused[0]
                _check_practice(rows, self.practice, self.location)
                for name in SCHEMAS:
                    if name != TYPE1_EVIDENCE:
                        rows.flush(name)
                self.by_nhs = _nhs_map(rows.chunks["patients"])
                _resolve_evidence_nhs(rows, self.by_nhs)
                for name in ("patients", "practitioners", TYPE1_EVIDENCE):
                    _resolve_nhs_refs(rows.chunks[name], self.by_nhs)
                _practitioner_roles(rows)
                self.medications = rows.medications
                self.unreadable.update(rows.unreadable)
                self.unmapped.update(rows.unmapped)
                self.evidence_rows = self._evidence_rows(candidates)
        finally:
            _REF_IDS.clear()
        self._read_people = True
        return {name: _table(name, rows.chunks[name]) for name in ("patients", "practitioners", TYPE1_EVIDENCE)}

    def _evidence_rows(self, candidates: _Rows) -> dict[str, pa.Table]:
        """The event rows that may hold a type 1 code: those of resources whose own JSON holds one, and, where a
        Medication of the delivery is coded with one, every medication row (a row names it by reference)."""
        out = {}
        for name in EVENT_TABLES:
            candidates.flush(name)
            chunks = candidates.chunks[name]
            _resolve_nhs_refs(chunks, self.by_nhs)
            if name == "medications":
                _resolve_medications(chunks, 0, candidates.med_refs, self.medications)
            if chunks:
                out[name] = _table(name, chunks)
        if any(self.type1.kind(code) for _, code in self.medications.values()):
            out.pop("medications", None)
            out.update(self._pass({"MedicationStatement", "MedicationRequest"}.__contains__, None))
        return {name: out[name] for name in EVENT_TABLES if name in out}

    def events(self, batch_rows: int | None = None):
        """The second pass: (table, rows) of the event tables, at least ``batch_rows`` rows a table at a time but
        for each table's last (and at most those a bundle adds beyond it); each table at the end without it."""
        if not self._read_people:
            raise RuntimeError("Delivery.events before Delivery.people")
        try:
            yield from self._pass(lambda rtype: rtype not in _FIRST_PASS, batch_rows, count=True)
        finally:
            _REF_IDS.clear()
            gc.collect()

    def _pass(self, wanted, batch_rows: int | None, count: bool = False):
        rows = _Rows()
        rows.medications = self.medications
        taken = dict.fromkeys(EVENT_TABLES, 0)  # rows of each table handed on
        refs_done = 0  # medication references resolved (rows.med_refs is in row order)

        def take(name: str) -> pa.Table:
            nonlocal refs_done
            rows.flush(name)
            chunks = rows.chunks[name]
            _resolve_nhs_refs(chunks, self.by_nhs)
            if name == "medications":
                end = rows.size(name)
                upto = next((i for i in range(refs_done, len(rows.med_refs)) if rows.med_refs[i][0] >= end),
                            len(rows.med_refs))
                _resolve_medications(chunks, taken[name], rows.med_refs[refs_done:upto], self.medications)
                refs_done = upto
            table = _table(name, chunks)
            taken[name] += table.num_rows
            return table

        bundles = self._bundles(first=False)
        while True:
            # the collector paused while a bundle is decoded and read, not while the caller uses what it is handed
            with _without_cyclic_gc(collect=False):
                item = next(bundles, None)
                if item is None:
                    break
                path, entries, _ = item
                for index, (entry, res, rtype) in enumerate(entries):
                    entries[index] = None
                    if wanted(rtype):
                        self._read(path, index, entry, res, rtype, rows)
                del item, entries
                ready = [(name, take(name)) for name in EVENT_TABLES
                         if batch_rows and rows.size(name) - taken[name] >= batch_rows]
            yield from ready
            del ready
        for name in EVENT_TABLES:
            if rows.size(name) > taken[name]:
                yield name, take(name)
        if count:
            for path, n in rows.unreadable.items():
                self.unreadable[path] += n
            for rtype, n in rows.unmapped.items():
                self.unmapped[rtype] += n

    def report(self) -> dict:
        """What the delivery says beyond the tables: unmapped resource types and unreadable entries, counted."""
        return {"unmapped_resources": dict(sorted(self.unmapped.items())),
                "unreadable_entries": dict(sorted(self.unreadable.items()))}


def read_bundles(location: Path, practice: str, only: list[str] | None = None,
                 type1: OptOutCodes | None = None, *, report: dict | None = None,
                 strict: bool = False, independent_files: bool = False) -> dict[str, pa.Table]:
    """Read every bundle in a practice's delivery folder (or the ``only`` ones) into canonical tables, plus
    ``type1_evidence``: every type 1 code found anywhere in a resource (``type1``: the configured codes).

    An entry whose shape cannot be read becomes a row of its table with ``_issue`` "unreadable_entry" (the
    quality gate quarantines it by entry); with ``strict``, it raises a SourceError naming the practice, file,
    entry and FHIR path instead (never a value). ``report``, if given, receives the counts of resources by type
    that no table maps (``unmapped_resources``) and of unreadable entries by FHIR path (``unreadable_entries``),
    and the SourceError of each file refused alone (``refused_files``): with ``independent_files`` (a snapshot of
    independent per-patient bundles) a file that cannot be read is left out instead of refusing the delivery.
    The whole tables of ``Delivery``'s two passes (the pipeline streams the second).
    """
    delivery = Delivery(location, practice, only, type1, strict=strict, independent_files=independent_files)
    with _without_cyclic_gc():
        tables = delivery.people()
        tables.update(delivery.events())
    if report is not None:
        report["refused_files"] = delivery.refused
        report.update(delivery.report())
    return {name: tables.get(name, SCHEMAS[name].empty_table()) for name in SCHEMAS}
