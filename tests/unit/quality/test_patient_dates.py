"""Impossible patient dates: each quarantined with its own reason, and the Great Expectations net behind them."""

import datetime as dt

import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from gpdata import quality
from gpdata.quality import rules, suites
from tests import factory as f
from tests.test_helpers import staged_tables

TODAY = dt.date(2026, 1, 1)


def _registration(start, end=None):
    period = {"start": start, **({"end": end} if end else {})}
    return [{"url": "https://fhir.nhs.uk/STU3/StructureDefinition/Extension-CareConnect-GPC-RegistrationDetails-1",
             "extension": [{"url": "registrationPeriod", "valuePeriod": period}]}]


def _patient(pid, nhs, dob="1980-05-17", reg="2001-02-03", end=None, died=None):
    res = f.patient(pid, nhs, dob=dob)
    res["extension"] = _registration(reg, end)
    if died:
        res["deceasedDateTime"] = died
    return res


def test_each_impossible_patient_date_is_quarantined_with_its_reason(tmp_path):
    extra = [_patient("d1", "9990000042", reg="1979-06-01"),                        # registered before birth
             _patient("d2", "9990000050", died="1979-06-10"),                      # died before birth
             _patient("d3", "9990000069", reg="2010-05-20", died="2009-03-01"),    # died before registration
             _patient("d4", "9990000077", reg="2010-05-20", end="2010-01-01"),     # ended before it started
             _patient("d5", "9990000085", reg="2010-05-20", died="2015-06-15"),    # dead, with events after
             _patient("d6", "9990000093", reg="2010-05-20", died="2010-05-02"),    # died in the month registered
             _patient("d7", "9990000107", dob="2011-01-05", reg="2011-01-20"),    # a baby, born in January
             f.observation("late", "d5", f.BMI, "2015-09-01", value=20.0, unit="kg/m2"),
             f.observation("grace", "d5", f.BMI, "2015-07-20", value=20.0, unit="kg/m2"),
             f.appointment("booked", "d5", "2015-10-01T09:00:00+00:00")]
    staged = staged_tables(tmp_path, extra)[0]
    result = quality.gate(staged, "A81001", "run-1", today=TODAY, max_quarantine_fraction=1.0)
    assert result.ok, result.failures
    assert result.counts["quarantined"]["patients"] == {
        "death_before_birth": 1, "death_before_registration": 1, "invalid_nhs_number": 1,
        "registration_before_birth": 1, "registration_end_before_start": 1}
    assert result.counts["quarantined"]["observations"]["after_death"] == 1
    assert "after_death" not in result.counts["quarantined"]["appointments"]
    assert result.counts["expectations"]["failed"] == 0
    # a source that gives only the year of birth has the first of July: d7 as such is not refused
    year_only = staged_tables(tmp_path / "y", [_patient("d7", "9990000107", dob="2011-07-01", reg="2011-01-20")])[0]
    result = quality.gate(year_only, "A81001", "run-2", today=TODAY, max_quarantine_fraction=1.0)
    assert result.ok and "registration_before_birth" not in result.counts["quarantined"]["patients"]


def test_the_expectations_and_the_rules_name_the_same_reasons():
    exps = [e for e in suites.suite("patients", "A81001", TODAY) if "pair" in type(e).__name__.lower()]
    assert {(e.column_A, e.column_B) for e in exps} == {("registration_end_date", "registration_date")}
    bad = {"registration_date": dt.date(2000, 1, 1), "birth_month": dt.date(2001, 1, 1),
           "death_month": None, "registration_end_date": None}
    table = pa.Table.from_pylist([bad], schema=pa.schema([(k, pa.date32()) for k in bad]))
    assert [r for _, r in rules._patient_date_rules(table) if _.to_pylist()[0]] == ["registration_before_birth"]


DATES = st.one_of(st.none(), st.dates(dt.date(1900, 1, 1), dt.date(2030, 12, 31)))


@given(DATES, DATES, DATES, DATES)
def test_patient_date_rules_agree_with_their_definition(birth, start, end, death):
    month = lambda d: d and d.replace(day=1)  # noqa: E731 - birth and death are kept to the month
    earliest = birth and month(birth) - dt.timedelta(days=suites.BIRTH_TOLERANCE_DAYS)
    table = pa.table({"birth_month": pa.array([month(birth)], pa.date32()),
                      "registration_date": pa.array([start], pa.date32()),
                      "registration_end_date": pa.array([end], pa.date32()),
                      "death_month": pa.array([month(death)], pa.date32())})
    broken = {reason for cond, reason in rules._patient_date_rules(table) if cond.to_pylist()[0]}
    both = lambda a, b: a is not None and b is not None  # noqa: E731
    expected = set()
    if both(start, birth) and start < earliest:
        expected.add("registration_before_birth")
    if both(death, birth) and month(death) < earliest:
        expected.add("death_before_birth")
    if both(death, start) and month(death) < month(start):
        expected.add("death_before_registration")
    if both(end, start) and end < start:
        expected.add("registration_end_before_start")
    assert broken == expected
