"""Generalisation to the approved precision: birth, area, dates, rare codes; coarsest unless declared."""

import datetime as dt
import json

import pyarrow as pa
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from gpdata.errors import ConfigError
from gpdata.share import generalise, register
from gpdata.share.projects import load_project

BASE = {
    "organisation": "University of Example", "purpose": "p", "legal_basis": "b",
    "approvals": [{"panel": "IGARD", "reference": "IG-1", "date": "2026-01-10"},
                  {"panel": "Caldicott Guardian", "reference": "CG-7", "date": "2026-01-12"}],
    "tables": {"patients": ["patient_pid", "birth_month", "sex", "lsoa_code", "registration_date"],
               "observations": ["patient_pid", "event_date", "code_system", "code"]},
    "date_from": "2019-01-01", "date_to": "2021-12-31", "expires": "2027-12-31",
    "rare_codes": {"action": "keep"},  # two patients: every code is rare
}
KEY = b"k" * 32


def _project(tmp_path, project_id="P-1", **changes):
    path = tmp_path / "projects" / f"{project_id}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(json.loads(json.dumps({**BASE, "project_id": project_id, **changes}))))
    return load_project(path)


def _areas(tmp_path):
    path = tmp_path / "areas.csv"
    path.write_text("lsoa_code,msoa_code,lad_code\nE01000001,E02000001,E08000001\nE01000002,E02000001,E08000001\n")
    return path


def _tables():
    patients = pa.table({"patient_pid": ["a", "b"], "birth_month": [dt.date(1983, 7, 1), dt.date(1990, 1, 1)],
                         "sex": ["female", "male"], "lsoa_code": ["E01000001", "E01000002"],
                         "registration_date": [dt.date(2001, 2, 3), dt.date(2010, 11, 30)]})
    obs = pa.table({"patient_pid": ["a", "a", "b"], "event_date": [dt.date(2020, 6, 15), dt.date(2020, 8, 1),
                                                                  dt.date(2021, 3, 9)],
                    "code_system": ["snomed"] * 3, "code": ["X", "X", "Y"]})
    return {"patients": patients, "observations": obs}


def test_the_default_is_the_coarsest(tmp_path):
    project = _project(tmp_path)
    gen = generalise.apply(project, _tables(), areas=_areas(tmp_path), shift_key=KEY)
    pat = gen.tables["patients"]
    assert pat.column_names == ["patient_pid", "birth_band", "sex", "lad_code", "registration_date"]
    assert pat["birth_band"].to_pylist() == ["1980-1984", "1990-1994"]
    assert pat["lad_code"].to_pylist() == ["E08000001", "E08000001"]
    assert pat["registration_date"].to_pylist() == [dt.date(2001, 1, 1), dt.date(2010, 1, 1)]
    assert gen.tables["observations"]["event_date"].to_pylist() == [dt.date(2020, 1, 1)] * 2 + [dt.date(2021, 1, 1)]
    assert project.finer_precision() == {}


def test_ethnicity_is_grouped_unless_the_category_is_approved(tmp_path):
    tables = _tables()
    tables["patients"] = tables["patients"].append_column("ethnic_category", pa.array(["A", "M"]))
    grouped = generalise.apply(_project(tmp_path), tables, areas=_areas(tmp_path), shift_key=KEY)
    assert grouped.tables["patients"]["ethnic_group"].to_pylist() == ["White", "Black"]
    kept = generalise.apply(_project(tmp_path, precision={"ethnic_category": "category"}), tables,
                            areas=_areas(tmp_path), shift_key=KEY)
    assert kept.tables["patients"]["ethnic_category"].to_pylist() == ["A", "M"]


def test_declared_precision_is_applied_and_recorded(tmp_path):
    project = _project(tmp_path, precision={"birth_month": "year", "lsoa_code": "msoa", "event_date": "month",
                                            "registration_date": "year"})
    gen = generalise.apply(project, _tables(), areas=_areas(tmp_path), shift_key=KEY)
    pat = gen.tables["patients"]
    assert pat["birth_year"].to_pylist() == [1983, 1990] and pat["msoa_code"].to_pylist() == ["E02000001"] * 2
    assert gen.tables["observations"]["event_date"].to_pylist()[0] == dt.date(2020, 6, 1)
    assert project.finer_precision() == {"birth_month": "year", "event_date": "month", "lsoa_code": "msoa"}
    row = register.rows([project], tmp_path / "store")[0]
    assert row["precision"] == "finer than default: birth_month year; event_date month; lsoa_code msoa"


def test_shifted_dates_keep_each_patients_intervals_and_differ_by_project(tmp_path):
    project = _project(tmp_path, precision={"event_date": "shift", "registration_date": "shift"})
    a = generalise.apply(project, _tables(), areas=_areas(tmp_path), shift_key=KEY)
    b = generalise.apply(project, _tables(), areas=_areas(tmp_path), shift_key=b"other project key" * 2)
    before = _tables()["observations"]["event_date"].to_pylist()
    after = a.tables["observations"]["event_date"].to_pylist()
    moves = [(x - y).days for x, y in zip(after, before, strict=True)]
    assert moves[0] == moves[1] and all(abs(m) <= generalise.SHIFT_DAYS for m in moves)  # patient a moves once
    reg = a.tables["patients"]["registration_date"].to_pylist()[0] - dt.date(2001, 2, 3)
    assert reg.days == moves[0]                                  # the same offset in every table
    assert b.tables["observations"]["event_date"].to_pylist() != after


@pytest.mark.parametrize(("action", "codes"), [("keep", ["X", "X", "Y"]), ("drop", []),
                                               ("group", ["group:htn", "group:htn"])])
def test_rare_codes_kept_grouped_or_dropped(tmp_path, action, codes):
    project = _project(tmp_path, rare_codes={"min_patients": 2, "action": action})
    gen = generalise.apply(project, _tables(), areas=_areas(tmp_path), shift_key=KEY,
                           code_lists={"htn": pa.array(["X"])})
    assert gen.tables["observations"]["code"].to_pylist() == codes
    assert gen.rare["rare_codes"] == 2  # X (one patient) and Y (one patient)


def test_invalid_precision_and_minimum_k_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="birth_month 'day' is not one of month, year, band5"):
        _project(tmp_path, precision={"birth_month": "day"})
    with pytest.raises(ConfigError, match="minimum_k below 5 needs environment: trusted_research_environment"):
        _project(tmp_path, minimum_k=3)
    with pytest.raises(ConfigError, match="needs its environment_reason"):
        _project(tmp_path, minimum_k=3, environment="trusted_research_environment")
    assert _project(tmp_path, minimum_k=3, environment="trusted_research_environment",
                    environment_reason="TRE with output checking").minimum_k == 3


def test_a_missing_area_lookup_stops_with_its_path(tmp_path):
    with pytest.raises(ConfigError, match="area lookup .*nowhere.csv does not exist"):
        generalise.apply(_project(tmp_path), _tables(), areas=tmp_path / "nowhere.csv", shift_key=KEY)


@given(st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2030, 12, 31)))
def test_every_birth_level_holds_the_true_date(day):
    values = pa.array([day.replace(day=1)])
    year = generalise.birth(values, "year").to_pylist()[0]
    lo, hi = map(int, generalise.birth(values, "band5").to_pylist()[0].split("-"))
    assert year == day.year and lo <= day.year <= hi and hi - lo == 4 and lo % 5 == 0
    for level in ("month", "year"):
        got = generalise.date(pa.array([day]), level).to_pylist()[0]
        assert got <= day and got.year == day.year and (level == "year" or got.month == day.month)
