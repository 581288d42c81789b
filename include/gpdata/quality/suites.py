"""The Great Expectations suites, one per curated table, and the measurement rules they share with the
row checks. Kept here and in include/config/quality.yaml, and reviewed like code.

Families: required columns (exactly the allow-list), non-null keys, pseudonym format, unique record ids,
date bounds (not before 1900, not in the future), value sets, and plausible values and units of common
measurements. Malformed codes, dates before birth and referential integrity are row rules
(gpdata.quality.rules), because they need the patients table or per-code checks GX does not offer.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import yaml

from gpdata.codes import Measurement, measurements  # noqa: F401 (re-exported)
from gpdata.errors import ConfigError
from gpdata.model import CURATED, PARTITION, PSEUDONYM_FIELDS
from gpdata.settings import CONFIG_DIR

PSEUDONYM_REGEX = r"^[0-9a-f]{64}$"
EARLIEST = dt.date(1900, 1, 1)
# Appointments may be booked ahead; everything else must have happened by the day of the check.
FUTURE_ALLOWANCE_DAYS = {"appointments": 366}
VALUE_SETS = {
    "sex": ["male", "female", "other", "unknown"],
    "medication_type": ["authorisation", "issue"],
    "category": ["condition", "observation"],
}
UNIQUE_KEY = {"patients": "patient_pid", "practitioners": "practitioner_pid"}
# Tables whose rows may be dated after the patient's death (an appointment booked before it).
AFTER_DEATH_ALLOWED = {"appointments"}
# A birth month may be the first of July of a year when a source gives only the year: dates compared with it
# allow this much (gpdata.quality.rules). Patient dates that must not be before another, exactly (column A >=
# column B, where both are recorded), as expectations; those compared with the birth month are row rules only.
BIRTH_TOLERANCE_DAYS = 183
PATIENT_DATE_ORDER = (("registration_end_date", "registration_date"),)


@lru_cache(maxsize=4)
def death_grace_days(path: Path = CONFIG_DIR / "quality.yaml") -> int:
    """Days after the month of death an event may still be dated (a late entry, a post-mortem result)."""
    try:
        doc = yaml.safe_load(path.read_text()) or {}
        value = int(doc.get("events_after_death_grace_days", 0))
    except (FileNotFoundError, yaml.YAMLError, TypeError, ValueError) as exc:
        raise ConfigError(f"quality configuration {path}: events_after_death_grace_days: {exc}") from None
    if value < 0:
        raise ConfigError(f"quality configuration {path}: events_after_death_grace_days must be 0 or more")
    return value


def latest_allowed(table: str, today: dt.date) -> dt.date:
    return today + dt.timedelta(days=FUTURE_ALLOWANCE_DAYS.get(table, 0))


# Several practices validated as one batch (gpdata.quality.rules.run_suites_together): the practice each row was
# staged for, added beside the curated columns, so "every row belongs to its practice" stays a per-row check.
CHUNK_COLUMN = "_staged_for"


def suite(table: str, practice: str | None, today: dt.date, empty: frozenset[str] = frozenset(),
          with_measurements: bool = True) -> list:
    """The expectations for one table. Min/max bounds apply to columns with at least one value (``empty``
    names the all-null ones: GX cannot take the minimum of nothing). ``with_measurements=False`` leaves out
    the measurement expectations of observations (see measurement_suite).

    ``practice=None``: the suite of several practices' rows together, with ``CHUNK_COLUMN`` naming the practice
    each row was staged for. It differs from one practice's suite in three expectations only, each with the same
    verdict on every practice's rows: the columns are the curated ones plus ``CHUNK_COLUMN``, and the practice
    code must equal ``CHUNK_COLUMN`` (instead of being in the set of the one practice)."""
    import great_expectations as gx

    e = gx.expectations
    schema: pa.Schema = CURATED[table]
    if practice is None:
        exps = [e.ExpectTableColumnsToMatchSet(column_set=[*schema.names, CHUNK_COLUMN], exact_match=True),
                e.ExpectColumnPairValuesToBeEqual(column_A=PARTITION, column_B=CHUNK_COLUMN)]
    else:
        exps = [e.ExpectTableColumnsToMatchSet(column_set=schema.names, exact_match=True),
                e.ExpectColumnValuesToBeInSet(column=PARTITION, value_set=[practice])]
    for f in schema:
        if not f.nullable:
            exps.append(e.ExpectColumnValuesToNotBeNull(column=f.name))
        if f.name in PSEUDONYM_FIELDS:
            exps.append(e.ExpectColumnValuesToMatchRegex(column=f.name, regex=PSEUDONYM_REGEX))
        if pa.types.is_date32(f.type) and f.name not in empty:
            exps.append(e.ExpectColumnMinToBeBetween(column=f.name, min_value=dt.datetime(1900, 1, 1)))
            if f.name != "due_date":
                exps.append(e.ExpectColumnMaxToBeBetween(
                    column=f.name, max_value=dt.datetime.combine(latest_allowed(table, today), dt.time())))
        if f.name in VALUE_SETS:
            exps.append(e.ExpectColumnValuesToBeInSet(column=f.name, value_set=VALUE_SETS[f.name]))
    key = UNIQUE_KEY.get(table, "record_id")
    if practice is None:  # unique within each practice (a patient registered at two practices has one pseudonym)
        exps.append(e.ExpectCompoundColumnsToBeUnique(column_list=[key, CHUNK_COLUMN]))
    else:
        exps.append(e.ExpectColumnValuesToBeUnique(column=key))
    if table == "patients":
        for later, earlier in PATIENT_DATE_ORDER:
            if later in schema.names and earlier in schema.names and not {later, earlier} & empty:
                exps.append(e.ExpectColumnPairValuesAToBeGreaterThanB(
                    column_A=later, column_B=earlier, or_equal=True, ignore_row_if="either_value_is_missing"))
    if table == "observations" and with_measurements:
        exps += measurement_suite()
    return exps


MEASURED_COLUMNS = ("code", "value", "unit")


def measurement_codes() -> list[str]:
    """Every code of a measurement with plausible values and units."""
    return sorted({c for m in measurements() for c in m.codes})


def measurement_suite() -> list:
    """Plausible values and units of each measurement, on the rows whose code is one of its codes (a pandas
    row condition). gpdata.quality.rules runs these on the measurement rows of observations only, where they cost
    least: the result is the same as on the whole table, without filtering every column of it per expectation."""
    import great_expectations as gx

    e = gx.expectations
    exps = []
    for m in measurements():
        condition = f"code.isin({list(m.codes)!r})"
        exps.append(e.ExpectColumnValuesToBeBetween(column="value", min_value=m.min, max_value=m.max,
                                                    row_condition=condition, condition_parser="pandas"))
        exps.append(e.ExpectColumnValuesToBeInSet(column="unit", value_set=list(m.units),
                                                  row_condition=condition, condition_parser="pandas"))
    return exps
