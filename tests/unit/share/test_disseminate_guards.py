"""Dissemination's guards, one decision at a time, on one store built once per module and copied for each test
(issue 23: every mutant of a guard is caught, and ``make mutate`` runs these in seconds). The store: practice
A81001 (p1 with hypertension in range, p2 on the National Data Opt-out list, p4 a type 1 dissenter), one release."""

import datetime as dt
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpdata import audit, pipeline, settings
from gpdata.errors import GpdataError
from gpdata.ingest.feeds import Feed
from gpdata.privacy import keys, ndop, type1
from gpdata.privacy.deid import Pseudonymiser
from gpdata.share import disseminate
from gpdata.share.publish import REDACTED
from gpdata.store import release
from tests import factory as f
from tests.conftest import built_once, copy_of, practice_resources
from tests.unit.share.test_disseminate import TODAY, _project


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    def build(home):
        f.write_lookup(home / "reference" / "postcode_lsoa.csv", [("LS1 4AB", "E01000001"), ("LS2 9XY", "E01000002")])
        resources = practice_resources() + [
            f.observation("old", "p1", f.BMI, "2015-01-01", value=26.0, unit="kg/m2"),
            f.observation("edge1", "p2", f.BMI, "2019-01-01", value=29.0, unit="kg/m2"),
            f.observation("edge2", "p2", f.BMI, "2021-12-31", value=28.0, unit="kg/m2"),
            f.observation("late", "p2", f.BMI, "2022-01-01", value=27.0, unit="kg/m2"),
            f.condition("htn2", "p2", f.HYPERTENSION, "2016-01-01")]
        f.write_bundle(home / "sources" / "A81001", resources)
        cfg = settings.load()
        pipeline.run_practice(Feed(ods_code="A81001", name="t", location=str(home / "sources" / "A81001"),
                                   max_quarantine_fraction=1), cfg, "r1")
        rid = release.create_release(cfg.store)["release_id"]
        (home / "ndop.csv").write_text("nhs_number\n999 000 0026\n")
        key = keys.load_master_key()
        ndop.ingest(home / "ndop.csv", cfg.store, key, published=TODAY - dt.timedelta(days=3),
                    today=TODAY - dt.timedelta(days=3))
        return rid

    return built_once(tmp_path_factory, "include/gpdata/share/disseminate.py", __file__, build)


@pytest.fixture
def world(template, tmp_path, monkeypatch):
    rid = template[1]
    copy_of(template, tmp_path, monkeypatch)
    cfg, key = settings.load(), keys.load_master_key()
    pids = dict(zip(["p1", "p2"], Pseudonymiser(key)(pa.array(["9990000018", "9990000026"]), "nhs_number")
                    .to_pylist(), strict=True))
    return cfg, rid, key, pids


def _extract(world, project, **kw):
    cfg, rid, key, _ = world
    kw.setdefault("today", TODAY)
    manifest = disseminate.extract(project, kw.pop("release_id", rid), cfg.store, cfg.extracts, kw.pop("key", key),
                                   requested_by="tester", **kw)
    folder = cfg.extracts / project.project_id / rid
    return {t: pq.read_table(folder / f"{t}.parquet") for t in project.tables}, manifest, folder


def _exempt(tmp_path, project_id, **changes):
    return _project(tmp_path, project_id, national_data_optout="exempt", exemption_reason="test", **changes)


def _key_of(project, key, table):
    return disseminate.project_key(key, project.project_id, table)


def test_the_ndop_removes_the_patient_from_every_table_and_counts_them_once(world, tmp_path):
    cfg, rid, key, pids = world
    project = _project(tmp_path, "APPLY", tables={"patients": ["patient_pid", "sex"],
                                                  "observations": ["patient_pid", "event_date", "code"],
                                                  "practitioners": ["practitioner_pid", "role_code"]})
    got, manifest, folder = _extract(world, project)
    assert got["patients"].num_rows == 1 and manifest["removed_by_ndop"] == 1
    assert len(set(got["observations"]["patient_pid"].to_pylist())) == 1 and got["practitioners"].num_rows == 1
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["removed_by_national_data_optout"] == REDACTED
    assert set(summary["tables"]) == {"patients", "observations"}  # tables of patients only
    assert audit.entries(cfg.store)[-1]["removed_by_ndop"] == REDACTED

    exempt, manifest, folder = _extract(world, _exempt(tmp_path, "EXEMPT"))
    assert exempt["patients"].num_rows == 2 and manifest["removed_by_ndop"] is None
    assert json.loads((folder / "summary.json").read_text())["removed_by_national_data_optout"] is None
    assert audit.entries(cfg.store)[-1]["removed_by_ndop"] is None


def test_the_ndop_count_is_of_the_patients_the_project_would_have_had(world, tmp_path):
    (tmp_path / "htn.csv").write_text(f"code,term\n{f.HYPERTENSION},Hypertensive disorder\n")
    cohort = _project(tmp_path, "COHORT", cohort={"code_lists": ["../htn.csv"]})
    got, manifest, _ = _extract(world, cohort)
    assert got["patients"].num_rows == 1 and manifest["removed_by_ndop"] == 0  # p2 is outside the cohort anyway


def test_only_the_approved_date_range_inclusive_and_the_cohort(world, tmp_path):
    cfg, rid, key, pids = world
    got, _, _ = _extract(world, _exempt(tmp_path, "RANGE"))
    dates = sorted(got["observations"]["event_date"].to_pylist())
    assert dates[0] == dt.date(2019, 1, 1) and dates[-1] == dt.date(2021, 12, 31)
    assert dt.date(2022, 1, 1) not in dates and dt.date(2015, 1, 1) not in dates
    (tmp_path / "htn.csv").write_text(f"code,term\n{f.HYPERTENSION},Hypertensive disorder\n")
    got, _, _ = _extract(world, _exempt(tmp_path, "COHORT", cohort={"code_lists": ["../htn.csv"]}))
    assert got["patients"].num_rows == 1 and len(set(got["observations"]["patient_pid"].to_pylist())) == 1


def test_every_pseudonym_is_rekeyed_under_the_projects_own_key(world, tmp_path):
    cfg, rid, key, pids = world
    project = _exempt(tmp_path, "KEYED")
    got, manifest, _ = _extract(world, project)
    mine = disseminate.project_key(key, "KEYED", "nhs_number")
    from gpdata.privacy.deid import hmac_hex
    expected = set(hmac_hex(mine, pa.array(list(pids.values()))).to_pylist())
    assert set(got["patients"]["patient_pid"].to_pylist()) == expected
    assert set(got["observations"]["patient_pid"].to_pylist()) <= expected
    assert manifest["key_version"] == key.version and manifest["key_check"] == key.check_value()


def test_a_release_still_holding_an_active_dissenter_is_refused_and_audited(world, tmp_path):
    cfg, rid, key, pids = world
    events = type1.latest(pa.array([pids["p1"]]), pa.array([dt.date(2022, 1, 1)], pa.date32()), pa.array([True]))
    type1.record(cfg.store, "B82002", events, key.version)
    project = _exempt(tmp_path, "HELD", tables={"practitioners": ["practitioner_pid"],
                                                "patients": ["patient_pid", "sex"]})
    with pytest.raises(GpdataError, match=r"still holds 1 patient\(s\) with an active type 1 dissent") as caught:
        _extract(world, project)
    assert pids["p1"] not in str(caught.value)
    assert not (cfg.extracts / "HELD").exists()
    assert audit.entries(cfg.store)[-1]["event"] == "refusal"
    withdrawn = type1.latest(pa.array([pids["p1"]]), pa.array([dt.date(2023, 1, 1)], pa.date32()), pa.array([False]))
    type1.record(cfg.store, "B82002", withdrawn, key.version)
    assert _extract(world, project)[0]["patients"].num_rows == 2  # a later withdrawal: nobody held back


def test_another_key_or_a_stale_list_is_refused_and_audited_but_a_risk_check_audits_nothing(world, tmp_path):
    cfg, rid, key, pids = world
    other = keys.MasterKey(ring=(("v1", bytes(range(32))),), development=False)
    for kw, message in [({"key": other}, "not the key the store was made with"),
                        ({"today": TODAY + dt.timedelta(days=40)}, "days old")]:
        with pytest.raises(GpdataError, match=message):
            _extract(world, _project(tmp_path, "APPLY"), **kw)
        assert audit.entries(cfg.store)[-1]["event"] == "refusal"
    before = len(audit.entries(cfg.store))
    with pytest.raises(GpdataError, match="days old"):
        disseminate.extract(_project(tmp_path, "APPLY"), rid, cfg.store, cfg.extracts, key, requested_by="t",
                            today=TODAY + dt.timedelta(days=40), write=False)
    report = disseminate.extract(_exempt(tmp_path, "RISK", minimum_k=5, environment="standard",
                                         environment_reason=None, precision={}),
                                 rid, cfg.store, cfg.extracts, key, requested_by="t", today=TODAY, write=False)
    assert report["meets_minimum_k"] is False and report["k"] == 1
    assert len(audit.entries(cfg.store)) == before and not (cfg.extracts / "RISK").exists()


def test_a_release_of_another_key_version_is_refused(world, tmp_path):
    cfg, rid, key, pids = world
    path = release.releases_dir(cfg.store) / rid / "release.json"
    made = json.loads(path.read_text())
    path.write_text(json.dumps({**made, "key_version": "v2"}))
    with pytest.raises(GpdataError, match=f"release {rid} holds pseudonyms of key version v2"):
        _extract(world, _exempt(tmp_path, "OLD"))
    path.write_text(json.dumps({**made, "key_checks": {"v1": "0" * 16}}))
    with pytest.raises(GpdataError, match=f"not the key release {rid} was made with"):
        _extract(world, _exempt(tmp_path, "OLD"))
    path.write_text(json.dumps({k: v for k, v in made.items() if k != "key_version"}))
    assert _extract(world, _exempt(tmp_path, "OLD"))[0]["patients"].num_rows == 2  # older releases: no version


def test_below_the_minimum_k_is_refused_with_the_hint_or_suppressed_when_approved(world, tmp_path):
    cfg, rid, key, pids = world
    strict = dict(minimum_k=2, precision={},
                  tables={"patients": ["patient_pid", "birth_month", "sex", "ethnic_category"]})
    with pytest.raises(GpdataError, match="k-anonymity 1 is below the approved minimum k 2") as caught:
        _extract(world, _exempt(tmp_path, "STRICT", **strict))
    hint = str(caught.value).split("hint: ", 1)[1]
    assert hint == "without ethnic_category gives k=1; small_classes: suppress gives k=2 (enough)"
    assert not (cfg.extracts / "STRICT").exists()
    no_ethnicity = {**strict, "tables": {"patients": ["patient_pid", "birth_month", "sex"]},
                    "precision": {"ethnic_category": "category"}}  # approved precision, but not the column
    with pytest.raises(GpdataError) as caught:
        _extract(world, _exempt(tmp_path, "PLAIN", **no_ethnicity))
    assert "ethnic_category" not in str(caught.value).split("hint: ", 1)[1]
    got, manifest, _ = _extract(world, _exempt(tmp_path, "SUPP", small_classes="suppress", **no_ethnicity))
    assert manifest["risk"]["records_suppressed"] == 2 and manifest["risk"]["k"] >= 2
    assert got["patients"].num_rows == 2 and got["patients"]["sex"].null_count == 2


def test_a_row_without_a_date_is_outside_every_range(tmp_path):
    project = _exempt(tmp_path, "RANGE")
    dates = pa.array([None, dt.date(2019, 1, 1), dt.date(2021, 12, 31), dt.date(2022, 1, 1), dt.date(2018, 12, 31)],
                     pa.date32())
    assert disseminate._in_range(pa.table({"event_date": dates}), project).to_pylist() == \
        [False, True, True, False, False]


def test_an_extract_made_again_replaces_the_first(world, tmp_path):
    project = _exempt(tmp_path, "AGAIN")
    first = _extract(world, project)[1]
    second = _extract(world, project)[1]
    assert first["files_sha256"].keys() == second["files_sha256"].keys()


def test_disseminating_all_takes_the_active_projects_and_the_latest_release(world, tmp_path, monkeypatch):
    cfg, rid, key, _ = world
    _exempt(tmp_path, "LIVE")
    _exempt(tmp_path, "PAUSED", active=False)
    monkeypatch.setenv("GPDATA_PROJECTS_DIR", str(tmp_path / "projects"))
    cfg = settings.load()
    done = disseminate.disseminate_all(cfg, key, requested_by="tester", today=TODAY)
    assert list(done) == ["LIVE"] and done["LIVE"]["release"] == rid
    assert (cfg.register / "register.csv").exists()  # written after the extract that happened
    (cfg.register / "register.csv").unlink()
    assert disseminate.disseminate_all(cfg, key, requested_by="tester", today=TODAY, projects=[]) == {}
    assert not (cfg.register / "register.csv").exists()  # no extract, no register written


def test_the_hint_names_a_coarser_area_and_ethnicity_only_where_they_apply(world, tmp_path):
    world[0].area_lookup.write_text("lsoa_code,msoa_code,lad_code\nE01000001,E02000001,E08000035\n"
                                    "E01000002,E02000002,E08000035\n")
    strict = dict(minimum_k=2, tables={"patients": ["patient_pid", "sex", "lsoa_code", "ethnic_category"]},
                  precision={"lsoa_code": "lsoa", "ethnic_category": "category"})
    with pytest.raises(GpdataError) as caught:
        _extract(world, _exempt(tmp_path, "AREA", **strict))
    hint = str(caught.value).split("hint: ", 1)[1]
    assert "lsoa_code: msoa gives k=" in hint and "ethnic_category: group gives k=" in hint


def test_the_hint_gives_each_variants_k_and_a_generalisation_failure_is_refused_and_audited(world, tmp_path):
    cfg, rid, key, _ = world
    strict = dict(minimum_k=2, tables={"patients": ["patient_pid", "birth_month", "sex", "lsoa_code",
                                                    "registration_date"]},
                  precision={"birth_month": "month", "lsoa_code": "lsoa"})
    msoa = _exempt(tmp_path, "NOAREA", **{**strict, "precision": {"lsoa_code": "msoa"}})
    with pytest.raises(GpdataError, match="area lookup .* does not exist"):
        _extract(world, msoa)
    assert audit.entries(cfg.store)[-1]["event"] == "refusal"
    before = len(audit.entries(cfg.store))
    with pytest.raises(GpdataError, match="area lookup"):
        disseminate.extract(msoa, rid, cfg.store, cfg.extracts, key, requested_by="t", today=TODAY, write=False)
    assert len(audit.entries(cfg.store)) == before
    cfg.area_lookup.write_text("lsoa_code,msoa_code,lad_code\nE01000001,E02000001,E08000035\n"
                               "E01000002,E02000002,E08000035\n")
    with pytest.raises(GpdataError) as caught:
        _extract(world, _exempt(tmp_path, "HINTS", **strict))
    hint = str(caught.value).split("hint: ", 1)[1]
    assert "birth_month: year gives k=" in hint and "lsoa_code: msoa gives k=" in hint


def test_the_risk_report_measures_linkage_against_the_whole_release(world, tmp_path):
    _, manifest, folder = _extract(world, _exempt(tmp_path, "LINK"))
    report = json.loads((folder / "risk.json").read_text())
    assert manifest["risk"]["linkage_unique_match_share"] == report["linkage"]["unique_match_share"]


def test_a_cohort_patients_certain_match_is_judged_against_every_patient_of_the_release(world, tmp_path):
    """The cohort holds p1 alone, so p1 is unique in the extract whatever; only the release's whole population
    (p1 and p2, whose birth year, sex and area differ) can tell that the intruder's match is also certain."""
    (tmp_path / "htn.csv").write_text(f"code,term\n{f.HYPERTENSION},Hypertensive disorder\n")
    project = _exempt(tmp_path, "CERTAIN", cohort={"code_lists": ["../htn.csv"]})
    got, _, folder = _extract(world, project)
    linkage = json.loads((folder / "risk.json").read_text())["linkage"]
    assert got["patients"].num_rows == 1
    assert linkage["unique_match_share"] == 1.0 and linkage.get("certain_match_share") == 1.0
