"""Dissemination: minimum data, National Data Opt-out, project pseudonyms, audit and register."""

import datetime as dt
import hashlib
import hmac
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from gpdata import audit, pipeline, settings
from gpdata.errors import ConfigError, GpdataError
from gpdata.ingest.feeds import Feed
from gpdata.privacy import keys, ndop
from gpdata.privacy.deid import Pseudonymiser
from gpdata.share import disseminate, register
from gpdata.share.projects import load_project
from gpdata.store import release
from tests import factory as f
from tests.conftest import practice_resources

TODAY = dt.date(2026, 6, 1)
BASE = {
    "organisation": "University of Example", "purpose": "Hypertension outcomes research",
    "legal_basis": "UK GDPR 6(1)(e) and 9(2)(j); COPI not relied on",
    "approvals": [{"panel": "IGARD", "reference": "IG-1", "date": "2026-01-10"},
                  {"panel": "Caldicott Guardian", "reference": "CG-7", "date": "2026-01-12"}],
    "tables": {"patients": ["patient_pid", "birth_month", "sex"],
               "observations": ["patient_pid", "event_date", "code", "value"]},
    "date_from": "2019-01-01", "date_to": "2021-12-31", "expires": "2027-12-31",
    # A store of two patients cannot reach k=5: these tests are about the rest of dissemination.
    "environment": "trusted_research_environment", "environment_reason": "unit tests of a two-patient store",
    "minimum_k": 1, "precision": {"birth_month": "month", "event_date": "day"}, "rare_codes": {"action": "keep"},
}


def _project(tmp_path, project_id, **changes):
    doc = {**BASE, "project_id": project_id, **changes}
    path = tmp_path / "projects" / f"{project_id}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(json.loads(json.dumps(doc))))
    return load_project(path)


@pytest.fixture
def world(home):
    """A store with one release and a current National Data Opt-out list holding patient p2."""
    resources = practice_resources() + [
        f.observation("old", "p1", f.BMI, "2015-01-01", value=26.0, unit="kg/m2"),      # before the range
        f.condition("htn2", "p2", f.HYPERTENSION, "2016-01-01")]                          # outside the range
    f.write_bundle(home / "sources" / "A81001", resources)
    cfg = settings.load()
    pipeline.run_practice(Feed(ods_code="A81001", name="t", location=str(home / "sources" / "A81001"),
                               max_quarantine_fraction=1), cfg, "r1")
    rid = release.create_release(cfg.store)["release_id"]
    (home / "ndop.csv").write_text("nhs_number\n999 000 0026\n")
    key = keys.load_master_key()
    ndop.ingest(home / "ndop.csv", cfg.store, key, published=TODAY - dt.timedelta(days=3),
                today=TODAY - dt.timedelta(days=3))
    pseudo = Pseudonymiser(key)
    pids = dict(zip(["p1", "p2"], pseudo(pa.array(["9990000018", "9990000026"]), "nhs_number").to_pylist(),
                    strict=True))
    return cfg, rid, key, pids


def _run(world, project, tmp_path, **kw):
    cfg, rid, key, _ = world
    manifest = disseminate.extract(project, kw.pop("release_id", rid), cfg.store, tmp_path / "out", key,
                                   requested_by="tester", today=kw.pop("today", TODAY), **kw)
    folder = tmp_path / "out" / project.project_id / manifest["release"]
    return {t: pq.read_table(folder / f"{t}.parquet") for t in project.tables}, manifest


def test_projects_get_disjoint_pseudonyms_stable_across_releases(world, tmp_path):
    cfg, rid, key, pids = world
    a = _project(tmp_path, "PROJ-A", national_data_optout="exempt", exemption_reason="test exemption")
    b = _project(tmp_path, "PROJ-B", national_data_optout="exempt", exemption_reason="test exemption")
    got_a, _ = _run(world, a, tmp_path)
    got_b, _ = _run(world, b, tmp_path)
    ids_a, ids_b = set(got_a["patients"]["patient_pid"].to_pylist()), set(got_b["patients"]["patient_pid"].to_pylist())
    assert len(ids_a) == 2 and not ids_a & ids_b
    assert not ids_a & set(pids.values())  # never the curated pseudonym itself
    rid2 = release.create_release(cfg.store)["release_id"]
    again, _ = _run(world, a, tmp_path, release_id=rid2)
    assert set(again["patients"]["patient_pid"].to_pylist()) == ids_a


def test_national_data_optout_applies_unless_exempt_and_a_stale_list_blocks(world, tmp_path):
    cfg, rid, key, pids = world
    applying, exempt = _project(tmp_path, "APPLY"), _project(tmp_path, "EXEMPT", national_data_optout="exempt",
                                                              exemption_reason="COPI notice")
    n_apply = _run(world, applying, tmp_path)[0]["patients"].num_rows
    n_exempt = _run(world, exempt, tmp_path)[0]["patients"].num_rows
    assert (n_apply, n_exempt) == (1, 2)
    with pytest.raises(GpdataError, match="National Data Opt-out list is 40 days old"):
        _run(world, applying, tmp_path, today=TODAY + dt.timedelta(days=37))
    assert audit.entries(cfg.store)[-1]["event"] == "refusal"
    assert not (world[0].home / "ndop.csv").exists()  # the identifiable list is not kept


def test_a_project_gets_nothing_outside_its_approval(world, tmp_path):
    cfg, rid, key, pids = world
    (tmp_path / "htn.csv").write_text(f"code,term\n{f.HYPERTENSION},Hypertensive disorder\n")
    cohort = _project(tmp_path, "COHORT", national_data_optout="exempt", exemption_reason="x",
                      cohort={"code_lists": ["../htn.csv"]})
    got, manifest = _run(world, cohort, tmp_path)
    assert set(got) == {"patients", "observations"}                                  # tables
    assert got["patients"].column_names == ["patient_pid", "birth_month", "sex"]      # columns
    assert got["observations"].column_names == ["patient_pid", "event_date", "code", "value"]
    dates = got["observations"]["event_date"].to_pylist()
    assert dates and all(dt.date(2019, 1, 1) <= d <= dt.date(2021, 12, 31) for d in dates)  # date range
    assert got["patients"].num_rows == 1  # cohort: only p1 has hypertension inside the range
    assert len(set(got["observations"]["patient_pid"].to_pylist())) == 1
    assert manifest["files_sha256"] and all(len(h) == 64 for h in manifest["files_sha256"].values())
    summary = json.loads((tmp_path / "out" / "COHORT" / rid / "summary.json").read_text())
    assert summary["tables"]["patients"]["patients"] == "[REDACTED]"


@pytest.mark.parametrize("change, message", [
    ({"tables": {"patients": ["patient_pid", "nhs_number"]}}, "not in the data dictionary"),
    ({"tables": {"addresses": ["patient_pid"]}}, "not in the data dictionary"),
    ({"approvals": [{"panel": "IGARD", "reference": "1", "date": "2026-01-01"}]}, "two independent panels"),
    ({"national_data_optout": "exempt"}, "needs its exemption_reason"),
])
def test_invalid_approvals_are_refused_with_file_and_field(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message) as err:
        _project(tmp_path, "BAD", **change)
    assert "BAD.yaml" in str(err.value)


def test_expired_approval_is_refused_and_audited(world, tmp_path):
    cfg, *_ = world
    with pytest.raises(ConfigError, match="expired on 2026-05-31"):
        _run(world, _project(tmp_path, "OLD", expires="2026-05-31"), tmp_path)
    assert audit.entries(cfg.store)[-1]["event"] == "refusal"


def test_audit_log_detects_edits_and_removals(world, tmp_path):
    cfg, *_ = world
    project = _project(tmp_path, "AUD", national_data_optout="exempt", exemption_reason="x")
    for _ in range(3):
        _run(world, project, tmp_path)
    events = [e["event"] for e in audit.entries(cfg.store)]
    assert events == ["release", "ndop_ingested", "extract", "extract", "extract"] and audit.verify(cfg.store) == 5
    log = audit.audit_dir(cfg.store) / "audit.jsonl"
    original = log.read_text()
    lines = original.splitlines(keepends=True)
    first = json.loads(lines[2])
    first["rows"]["observations"] += 1  # someone edits a count in the first extract's entry
    log.write_text("".join(lines[:2]) + json.dumps(first, sort_keys=True) + "\n" + "".join(lines[3:]))
    assert log.read_text() != original
    with pytest.raises(GpdataError, match="entry 3 was altered"):
        audit.verify(cfg.store)
    log.write_text("".join(lines[:3]) + lines[4])
    with pytest.raises(GpdataError, match="entry 4 is missing"):
        audit.verify(cfg.store)
    log.write_text("".join(lines[:4]))
    with pytest.raises(GpdataError, match="entries were removed"):
        audit.verify(cfg.store)


@pytest.mark.parametrize("n, shown", [(0, 0), (1, "[REDACTED]"), (7, "[REDACTED]"), (8, 10), (12, 10),
                                      (13, 15), (17, 15), (18, 20), (1002, 1000)])
def test_small_number_suppression_edges(n, shown):
    assert disseminate.suppress(n) == shown


def test_register_lists_projects_and_their_releases(world, tmp_path):
    cfg, rid, *_ = world
    p = _project(tmp_path, "REG", national_data_optout="exempt", exemption_reason="x",
                 purpose="=HYPERLINK(\"http://x\")<script>")
    _run(world, p, tmp_path)
    csv_path, html_path = register.write([p], cfg.store, tmp_path / "register")
    text = csv_path.read_text()
    assert "REG" in text and rid in text and "'=HYPERLINK" in text
    assert "<script>" not in html_path.read_text() and "&lt;script&gt;" in html_path.read_text()


def test_an_extract_below_its_minimum_k_is_refused_with_numbers_and_a_hint(world, tmp_path):
    cfg, rid, key, _ = world
    strict = _project(tmp_path, "STRICT", national_data_optout="exempt", exemption_reason="x", minimum_k=5,
                      environment="standard", environment_reason=None, precision={})
    with pytest.raises(GpdataError) as err:
        _run(world, strict, tmp_path)
    message = str(err.value)
    assert message.startswith("project STRICT: extract refused: k-anonymity 1 is below the approved minimum k 5 "
                              "(quasi-identifiers birth_band, sex; 2 patients; 100.0% of them in classes below 5")
    assert "hint: small_classes: suppress gives k=2" in message
    assert not (tmp_path / "out" / "STRICT").exists()
    refusal = [e for e in audit.entries(cfg.store) if e["event"] == "refusal"][-1]
    assert refusal["project"] == "STRICT" and "k-anonymity 1" in refusal["reason"]


def test_every_extract_has_its_risk_report_beside_it(world, tmp_path):
    cfg, rid, key, _ = world
    project = _project(tmp_path, "RISKY", national_data_optout="exempt", exemption_reason="x")
    _, manifest = _run(world, project, tmp_path)
    report = json.loads((tmp_path / "out" / "RISKY" / rid / "risk.json").read_text())
    assert report["quasi_identifiers"] == ["birth_month", "sex"] and report["k"] == 1
    assert report["linkage"]["unique_match_share"] == 1.0 and report["records"] == 2
    assert manifest["risk"]["k"] == 1 and manifest["precision"]["birth_month"] == "month"
    entry = [e for e in audit.entries(cfg.store) if e["event"] == "extract"][-1]
    assert entry["risk"]["unique_share"] == 1.0


def test_projects_risk_prints_the_report_without_writing(world, tmp_path, monkeypatch, capsys):
    from gpdata.ops import cli

    cfg, rid, key, _ = world
    _project(tmp_path, "RISKY", national_data_optout="exempt", exemption_reason="x")
    before = len(audit.entries(cfg.store))
    assert cli.main(["projects", "risk", "RISKY", "--release", rid, "--dir", str(tmp_path / "projects")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["project"] == "RISKY" and report["k"] == 1 and report["meets_minimum_k"]
    assert not (cfg.extracts / "RISKY").exists() and len(audit.entries(cfg.store)) == before


def test_a_late_optout_after_an_extract_reissues_it_without_the_patient(world, tmp_path):
    from gpdata.ops import status
    from gpdata.share import recall

    cfg, rid, key, pids = world
    project = _project(tmp_path, "HELD", national_data_optout="exempt", exemption_reason="x")
    disseminate.extract(project, rid, cfg.store, cfg.extracts, key, requested_by="tester", today=TODAY)
    folder = cfg.extracts / "HELD" / rid
    theirs = hmac.digest(disseminate.project_key(key, "HELD", "nhs_number"), pids["p1"].encode(), "sha256").hex()
    assert theirs in pq.read_table(folder / "patients.parquet")["patient_pid"].to_pylist()

    late = practice_resources() + [f.observation("late", "p1", f.DISSENT, "2025-01-01")]
    f.write_bundle(cfg.sources / "A81001", late)
    counts = pipeline.run_practice(Feed(ods_code="A81001", name="t", location=str(cfg.sources / "A81001"),
                                        max_quarantine_fraction=1), cfg, "late")
    assert counts["extracts_recalled"] == [{
        "project": "HELD", "release": rid, "action": "reissued", "patients": 1,
        "rows_removed": {"observations": 2, "patients": 1}, "recipients": ["University of Example"],
        "at": counts["extracts_recalled"][0]["at"]}]
    for name in ("patients", "observations"):
        assert theirs not in pq.read_table(folder / f"{name}.parquet")["patient_pid"].to_pylist()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "reissued" and manifest["tables"]["patients"]["rows"] == 1
    assert all(hashlib.sha256((folder / n).read_bytes()).hexdigest() == h for n, h in manifest["files_sha256"].items())
    entry = [e for e in audit.entries(cfg.store) if e["event"] == "extract_reissued"][-1]
    assert entry["project"] == "HELD" and entry["recipients_to_notify"] == ["University of Example"]
    assert theirs not in json.dumps(audit.entries(cfg.store)) and pids["p1"] not in json.dumps(counts)
    page = status.overview(cfg)["notifications"]
    assert [(n["project"], n["release"], n["recipients"]) for n in page] == [("HELD", rid, ["University of Example"])]
    assert recall.mark_notified(cfg.extracts, cfg.store, "HELD", rid, "operator") == 1
    assert status.overview(cfg)["notifications"] == []


def test_an_extract_that_falls_below_its_minimum_k_is_withdrawn(world, tmp_path):
    from gpdata.share import recall

    cfg, rid, key, pids = world
    # No quasi-identifier: the two patients form one class, k=2, which the approval's minimum k (2) accepts.
    project = _project(tmp_path, "THIN", national_data_optout="exempt", exemption_reason="x", minimum_k=2,
                       tables={"patients": ["patient_pid"], "observations": ["patient_pid", "event_date", "code"]})
    disseminate.extract(project, rid, cfg.store, cfg.extracts, key, requested_by="tester", today=TODAY)
    folder = cfg.extracts / "THIN" / rid
    assert json.loads((folder / "manifest.json").read_text())["risk"]["k"] == 2
    done = recall.recall(cfg.extracts, cfg.store, key, pa.array([pids["p1"]]))
    assert [d["action"] for d in done] == ["withdrawn"]
    assert not list(folder.glob("*.parquet")) and json.loads((folder / "manifest.json").read_text())["status"] \
        == "withdrawn"
