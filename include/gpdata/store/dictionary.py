"""The data dictionary, generated from the curated schemas: every column of every table with its type,
description, a synthetic example and a sensitivity note. Published as Markdown and JSON with each release.
"""

from __future__ import annotations

import json
from pathlib import Path

from gpdata.model import CURATED

_PSEUDONYM = "Pseudonym (keyed HMAC-SHA256): for linkage inside the store only; never released unchanged " \
             "(projects get their own re-keyed pseudonyms)"
_QUASI = "Quasi-identifier (generalised): combine with care; suppress small counts when publishing"
_DATE = "Event date: quasi-identifying in combination with other dates; suppress small counts when publishing"
_CLINICAL = "Clinical content: special category health data; released only under an approved project"
_ADMIN = "Administrative: not about a person"

# column -> (sensitivity, synthetic example); a table-specific entry wins over the column-wide one.
_COLUMNS: dict[str, tuple[str, object]] = {
    "practice_code": (_ADMIN, "A81001"),
    "key_version": (_ADMIN, "v1"),
    "patient_pid": (_PSEUDONYM, "3f0c5a..."),
    "dob_pid": (_PSEUDONYM, "9b1e27..."),
    "postcode_pid": (_PSEUDONYM, "c2f304..."),
    "practitioner_pid": (_PSEUDONYM, "903230..."),
    "record_id": (_PSEUDONYM, "2a4eef..."),
    "authorisation_id": (_PSEUDONYM, "6628b1..."),
    "panel_id": (_PSEUDONYM, "41d07c..."),
    "birth_month": (_QUASI, "1980-05-01"),
    "death_month": (_QUASI, "2024-02-01"),
    "sex": (_QUASI, "female"),
    "ethnic_category": (_QUASI + "; special category data", "A"),
    "lsoa_code": (_QUASI, "E01000001"),
    "postcode_district": (_QUASI, "LS1"),
    "registration_date": (_DATE, "2001-02-01"),
    "registration_end_date": (_DATE, "2024-03-01"),
    "event_date": (_DATE, "2020-01-01"),
    "due_date": (_DATE, "2026-06-01"),
    "start_time": (_DATE, "2024-03-01T09:10:00Z"),
    "role_code": (_ADMIN, "R0260"),
    "role_name": (_ADMIN, "General Medical Practitioner"),
    "staff_role": (_ADMIN, "R0260"),
    "category": (_CLINICAL, "observation"),
    "code_system": (_CLINICAL, "snomed"),
    "code": (_CLINICAL, "60621009"),
    "value": (_CLINICAL, 27.5),
    "unit": (_CLINICAL, "kg/m2"),
    "medication_type": (_CLINICAL, "issue"),
    "quantity": (_CLINICAL, 28.0),
    "quantity_unit": (_CLINICAL, "tablet"),
    "status": (_CLINICAL, "completed"),
    "priority": (_CLINICAL, "routine"),
    "duration_minutes": (_CLINICAL, 10),
}
_TABLE_OVERRIDES: dict[tuple[str, str], tuple[str, object]] = {
    ("medications", "code"): (_CLINICAL, "8093711000001103"),
    ("medications", "code_system"): (_CLINICAL, "dmd"),
    ("immunisations", "code"): (_CLINICAL, "1324681000000101"),
    ("allergies", "code"): (_CLINICAL, "91936005"),
    ("referrals", "code"): (_CLINICAL, "389938007"),
    ("recalls", "code"): (_CLINICAL, "170777000"),
    ("appointments", "status"): (_ADMIN, "fulfilled"),
}


def entries() -> list[dict]:
    """One entry per column of every curated table."""
    out = []
    for table, schema in CURATED.items():
        for f in schema:
            sensitivity, example = _TABLE_OVERRIDES.get((table, f.name)) or _COLUMNS[f.name]
            out.append({"table": table, "column": f.name, "type": str(f.type), "nullable": f.nullable,
                        "description": f.metadata[b"description"].decode(), "example": example,
                        "sensitivity": sensitivity})
    return out


def markdown(rows: list[dict] | None = None) -> str:
    rows = entries() if rows is None else rows
    parts = ["# gpdata data dictionary", "",
             "Every column of every curated table. Examples are synthetic (dates on the first of a month, so no "
             "example can match anyone's date of birth). Pseudonyms are shown shortened.", ""]
    for table in CURATED:
        parts += [f"## {table}", "", "| column | type | description | example | sensitivity |",
                  "|---|---|---|---|---|"]
        parts += [f"| {r['column']} | {r['type']}{'' if r['nullable'] else ' (required)'} | {r['description']} | "
                  f"{r['example']} | {r['sensitivity']} |" for r in rows if r["table"] == table]
        parts.append("")
    return "\n".join(parts)


def write(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rows = entries()
    (folder / "data_dictionary.json").write_text(json.dumps(rows, indent=2, default=str))
    (folder / "data_dictionary.md").write_text(markdown(rows))
    return [folder / "data_dictionary.json", folder / "data_dictionary.md"]
