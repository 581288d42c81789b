"""The data dictionary, generated from the curated schemas: every column of every table with its type,
description, a synthetic example and a sensitivity note, and the code lists of the coded columns with their
terms. Published as Markdown and JSON with each release (``data_dictionary.md``/``.json``, ``code_lists.json``).

The reference code lists shipped in ``include/config/codelists/`` (public lists, e.g. for project cohorts) are
read by :func:`reference_code_lists`; they are configuration, not pinned by a release. Metadata only: nothing
here is read from a table.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from gpdata.errors import GpdataError
from gpdata.ingest.dialects import CODE_SYSTEMS
from gpdata.model import CURATED
from gpdata.quality.suites import VALUE_SETS
from gpdata.settings import CODELISTS_DIR

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


_TERMS: dict[str, dict[str, str]] = {
    "sex": {"male": "Male", "female": "Female", "other": "Other", "unknown": "Unknown (not recorded or not known)"},
    "medication_type": {"authorisation": "Authorisation: a prescribing decision",
                        "issue": "Issue: a prescription issued under an authorisation"},
    "category": {"condition": "Condition: a diagnosis on the problem list",
                 "observation": "Observation: a finding or a measurement"},
    "code_system": {"snomed": "SNOMED CT", "readv2": "Read codes version 2", "ctv3": "Clinical Terms Version 3 (CTV3)",
                    "dmd": "Dictionary of medicines and devices (dm+d)"},
    # NHS Data Model and Dictionary, ethnic category (England)
    "ethnic_category": {
        "A": "White - British", "B": "White - Irish", "C": "White - Any other White background",
        "D": "Mixed - White and Black Caribbean", "E": "Mixed - White and Black African",
        "F": "Mixed - White and Asian", "G": "Mixed - Any other mixed background",
        "H": "Asian or Asian British - Indian", "J": "Asian or Asian British - Pakistani",
        "K": "Asian or Asian British - Bangladeshi", "L": "Asian or Asian British - Any other Asian background",
        "M": "Black or Black British - Caribbean", "N": "Black or Black British - African",
        "P": "Black or Black British - Any other Black background", "R": "Other Ethnic Groups - Chinese",
        "S": "Other Ethnic Groups - Any other ethnic group", "Z": "Not stated"},
}
_SOURCES = {"sex": "the quality suites' value set (gpdata.quality.suites.VALUE_SETS)",
            "medication_type": "the quality suites' value set (gpdata.quality.suites.VALUE_SETS)",
            "category": "the quality suites' value set (gpdata.quality.suites.VALUE_SETS)",
            "code_system": "the code systems gpdata reads (gpdata.ingest.dialects.CODE_SYSTEMS)",
            "ethnic_category": "NHS Data Model and Dictionary: ethnic category"}


def code_lists() -> list[dict]:
    """The code list of every coded column with a closed set of values: name, the columns that use it, its
    source, and each code with its term."""
    values = {**VALUE_SETS, "code_system": list(CODE_SYSTEMS), "ethnic_category": list(_TERMS["ethnic_category"])}
    out = []
    for name, codes in values.items():
        missing = [c for c in codes if c not in _TERMS[name]]
        if missing:  # a value added to a value set without a term here
            raise GpdataError(f"data dictionary: code list {name!r} has no term for {missing}")
        out.append({"name": name, "source": _SOURCES[name],
                    "columns": [f"{table}.{name}" for table, schema in CURATED.items() if name in schema.names],
                    "terms": [{"code": c, "term": _TERMS[name][c]} for c in codes]})
    return out


_LIST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,120}$")
_CODE_COLUMNS = ("code", "Code", "CTV3Code", "SourceCode")
_TERM_COLUMNS = ("term", "Term", "Description", "Ethnicity", "SourceTerm")


def reference_code_lists(folder: Path = CODELISTS_DIR) -> list[str]:
    """Names (file stems) of the reference code lists shipped in ``folder``."""
    return sorted(p.stem for p in folder.glob("*.csv") if _LIST_NAME.match(p.stem))


def reference_code_list(name: str, folder: Path = CODELISTS_DIR) -> dict:
    """One reference code list's codes and terms. ``name`` must be one of :func:`reference_code_lists` (never a
    path)."""
    if name not in reference_code_lists(folder):
        raise GpdataError(f"no reference code list {name!r}")
    with (folder / f"{name}.csv").open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        code_col = next((c for c in _CODE_COLUMNS if c in header), None)
        term_col = next((c for c in _TERM_COLUMNS if c in header), None)
        if code_col is None:
            raise GpdataError(f"reference code list {name}: no code column (looked for {', '.join(_CODE_COLUMNS)})")
        terms = [{"code": row[code_col].strip(), "term": (row.get(term_col) or "").strip() if term_col else ""}
                 for row in reader if (row.get(code_col) or "").strip()]
    return {"name": name, "code_column": code_col, "term_column": term_col, "terms": terms}


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
    parts += ["## Code lists", "", "The values of coded columns with a closed set of values, and what each means.", ""]
    for cl in code_lists():
        parts += [f"### {cl['name']}", "", f"Used by {', '.join(cl['columns'])}; from {cl['source']}.", "",
                  "| code | term |", "|---|---|"]
        parts += [f"| {t['code']} | {t['term']} |" for t in cl["terms"]]
        parts.append("")
    return "\n".join(parts)


def write(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rows = entries()
    (folder / "data_dictionary.json").write_text(json.dumps(rows, indent=2, default=str))
    (folder / "data_dictionary.md").write_text(markdown(rows))
    (folder / "code_lists.json").write_text(json.dumps(code_lists(), indent=2))
    return [folder / "data_dictionary.json", folder / "data_dictionary.md", folder / "code_lists.json"]
