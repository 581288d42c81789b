"""The shape of the data.

*Canonical* tables are what a source adapter produces from a delivery: identifiable, in memory only,
one per curated table. *Curated* tables are the allow-list: the only columns that can ever be written.
Every curated column carries a description (``field.metadata[b"description"]``).
"""

from __future__ import annotations

import pyarrow as pa

PARTITION = "practice_code"
POSITION = ("_src_file", "_src_entry")  # where a row came from: kept for quarantine, never curated
ISSUE = "_issue"                        # a reason found before pseudonymisation (e.g. invalid NHS number)

# Pseudonym columns and the field key each is made with.
PSEUDONYM_FIELDS = {"patient_pid": "nhs_number", "dob_pid": "date_of_birth", "postcode_pid": "postcode",
                    "practitioner_pid": "practitioner", "record_id": "record_id", "authorisation_id": "record_id",
                    "panel_id": "record_id"}

TABLES = ("patients", "practitioners", "observations", "medications", "allergies", "immunisations",
          "referrals", "recalls", "appointments")
EVENT_TABLES = TABLES[2:]


def _f(name: str, typ: pa.DataType, description: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, typ, nullable=nullable, metadata={"description": description})


_STR, _DATE, _F64 = pa.string(), pa.date32(), pa.float64()

_COMMON = [
    _f(PARTITION, _STR, "ODS code of the GP practice that holds the record", nullable=False),
    _f("key_version", _STR, "Version of the pseudonymisation key the *_pid columns were made with",
       nullable=False),
]
_EVENT = [
    _f("record_id", _STR, "Pseudonym of the source system's record id (stable across deliveries)",
       nullable=False),
    _f("patient_pid", _STR, "Patient pseudonym (keyed HMAC-SHA256 of the NHS number)", nullable=False),
    _f("practitioner_pid", _STR, "Pseudonym of the clinician involved, if recorded"),
]

CURATED: dict[str, pa.Schema] = {
    "patients": pa.schema(_COMMON + [
        _f("patient_pid", _STR, "Patient pseudonym (keyed HMAC-SHA256 of the NHS number)", nullable=False),
        _f("dob_pid", _STR, "Pseudonym of the full date of birth, for linkage only"),
        _f("postcode_pid", _STR, "Pseudonym of the full postcode, for linkage only"),
        _f("birth_month", _DATE, "Date of birth generalised to the first day of its month"),
        _f("sex", _STR, "Administrative gender as recorded: male, female, other or unknown"),
        _f("ethnic_category", _STR, "NHS ethnic category (data dictionary letter A-Z)"),
        _f("lsoa_code", _STR, "Lower layer super output area of the home postcode (2021)"),
        _f("postcode_district", _STR, "Outward code of the home postcode (e.g. LS1)"),
        _f("registration_date", _DATE, "Date the current registration at the practice started"),
        _f("registration_end_date", _DATE, "Date the registration at the practice ended (null while registered)"),
        _f("death_month", _DATE, "Date of death generalised to the first day of its month"),
    ]),
    "practitioners": pa.schema(_COMMON + [
        _f("practitioner_pid", _STR, "Practitioner pseudonym (keyed HMAC of the SDS user id)", nullable=False),
        _f("role_code", _STR, "SDS job role code (e.g. R0260 General Medical Practitioner)"),
        _f("role_name", _STR, "SDS job role name"),
    ]),
    "observations": pa.schema(_COMMON + _EVENT + [
        _f("event_date", _DATE, "Date the finding, diagnosis or measurement applies to"),
        _f("category", _STR, "condition (a diagnosis on the problem list) or observation"),
        _f("code_system", _STR, "snomed, readv2 or ctv3"),
        _f("code", _STR, "Clinical code"),
        _f("value", _F64, "Numeric result, if any"),
        _f("unit", _STR, "UCUM unit of the value"),
        _f("panel_id", _STR, "record_id of the panel (e.g. a blood pressure) this value is a component of"),
    ]),
    "medications": pa.schema(_COMMON + _EVENT + [
        _f("event_date", _DATE, "Date authorised (authorisation) or issued (issue)"),
        _f("medication_type", _STR, "authorisation (a prescribing decision) or issue (a prescription)"),
        _f("code_system", _STR, "dmd"),
        _f("code", _STR, "dm+d identifier of the product"),
        _f("status", _STR, "Status as recorded by the source"),
        _f("quantity", _F64, "Quantity issued"),
        _f("quantity_unit", _STR, "Unit of the quantity"),
        _f("authorisation_id", _STR, "record_id of the authorisation an issue belongs to"),
    ]),
    "allergies": pa.schema(_COMMON + _EVENT + [
        _f("event_date", _DATE, "Date the allergy was recorded or began"),
        _f("code_system", _STR, "snomed"),
        _f("code", _STR, "SNOMED CT code of the allergy or intolerance"),
    ]),
    "immunisations": pa.schema(_COMMON + _EVENT + [
        _f("event_date", _DATE, "Date the vaccine was given"),
        _f("code_system", _STR, "snomed or dmd"),
        _f("code", _STR, "Vaccine or vaccination procedure code"),
        _f("status", _STR, "completed, not-done or entered-in-error"),
    ]),
    "referrals": pa.schema(_COMMON + _EVENT + [
        _f("event_date", _DATE, "Date the referral was made"),
        _f("code_system", _STR, "snomed"),
        _f("code", _STR, "What the patient was referred for"),
        _f("status", _STR, "Status of the referral"),
        _f("priority", _STR, "routine, urgent, asap or stat"),
    ]),
    "recalls": pa.schema(_COMMON + _EVENT + [
        _f("event_date", _DATE, "Date the recall was set"),
        _f("due_date", _DATE, "Date the patient is due to be seen"),
        _f("code_system", _STR, "snomed"),
        _f("code", _STR, "What the patient is recalled for"),
        _f("status", _STR, "Status of the recall"),
    ]),
    "appointments": pa.schema(_COMMON + _EVENT + [
        _f("event_date", _DATE, "Date of the appointment"),
        _f("start_time", pa.timestamp("us", tz="UTC"), "Start of the appointment slot"),
        _f("duration_minutes", pa.int32(), "Length of the slot in minutes"),
        _f("status", _STR, "booked, fulfilled, noshow or cancelled"),
        _f("staff_role", _STR, "SDS job role code of the clinician the patient saw"),
    ]),
}

# Canonical tables: identifiable fields, then the fields that map to curated ones. In memory only.
_POS = [pa.field("_src_file", _STR), pa.field("_src_entry", pa.int32())]
_EV = [pa.field("source_id", _STR), pa.field("patient_ref", _STR), pa.field("practitioner_ref", _STR),
       pa.field("event_date", _DATE), pa.field("code_system", _STR), pa.field("code", _STR),
       pa.field("free_text", _STR)]


def _canon(*fields: pa.Field) -> pa.Schema:
    return pa.schema(list(fields) + _POS)


CANONICAL: dict[str, pa.Schema] = {
    "patients": _canon(
        pa.field("source_id", _STR), pa.field("nhs_number", _STR), pa.field("family_name", _STR),
        pa.field("given_names", _STR), pa.field("birth_date", _DATE), pa.field("gender", _STR),
        pa.field("address", _STR), pa.field("postcode", _STR), pa.field("telecom", _STR),
        pa.field("ethnic_category", _STR), pa.field("registration_date", _DATE),
        pa.field("deceased_date", _DATE), pa.field("gp_ref", _STR), pa.field("registration_end_date", _DATE)),
    "practitioners": _canon(
        pa.field("source_id", _STR), pa.field("sds_user_id", _STR), pa.field("family_name", _STR),
        pa.field("given_names", _STR), pa.field("role_code", _STR), pa.field("role_name", _STR)),
    "observations": _canon(*_EV, pa.field("category", _STR), pa.field("value", _F64), pa.field("unit", _STR),
                           pa.field("panel_ref", _STR)),
    "medications": _canon(*_EV, pa.field("medication_type", _STR), pa.field("status", _STR),
                          pa.field("quantity", _F64), pa.field("quantity_unit", _STR),
                          pa.field("authorisation_ref", _STR)),
    "allergies": _canon(*_EV),
    "immunisations": _canon(*_EV, pa.field("status", _STR)),
    "referrals": _canon(*_EV, pa.field("status", _STR), pa.field("priority", _STR)),
    "recalls": _canon(*_EV, pa.field("status", _STR), pa.field("due_date", _DATE)),
    "appointments": _canon(*_EV, pa.field("status", _STR), pa.field("start_time", pa.timestamp("us", tz="UTC")),
                           pa.field("duration_minutes", pa.int32())),
}

# Type 1 opt-out evidence an adapter found in places the canonical tables do not carry (a second coding of a
# concept, a value, an extension, a resource type that is not mapped): identifiable, in memory only. The patient
# is a source reference or an NHS number (a subject given by identifier).
TYPE1_EVIDENCE = "type1_evidence"
TYPE1_EVIDENCE_SCHEMA = _canon(pa.field("patient_ref", _STR), pa.field("nhs_number", _STR),
                               pa.field("event_date", _DATE), pa.field("kind", _STR))


def staged_schema(table: str) -> pa.Schema:
    """A curated table's schema, all nullable (the quality gate quarantines missing keys), plus the
    position and pre-pseudonymisation issue columns."""
    schema = pa.schema([f.with_nullable(True) for f in CURATED[table]])
    for name in (*POSITION, ISSUE):
        schema = schema.append(pa.field(name, pa.int32() if name == "_src_entry" else pa.string()))
    return schema

# A quarantined row: where it came from and why, never its values.
QUARANTINE_SCHEMA = pa.schema([
    pa.field(PARTITION, pa.string(), nullable=False),
    pa.field("table_name", pa.string(), nullable=False),
    pa.field("source_file", pa.string()),
    pa.field("source_entry", pa.int32()),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
])
