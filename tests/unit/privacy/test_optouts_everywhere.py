"""Opt-outs that hold everywhere (issue 15), each tested from an auditor's side: a dissent at one practice
excludes the patient at every practice, in any order; real encodings of a dissent are recognised; a wrong key
or ring is refused before any source is read; a key rotation keeps every opt-out in force; a bad National Data
Opt-out list never replaces a good one."""

import datetime as dt
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from gpdata import pipeline, settings, store
from gpdata.codes import optout_codes
from gpdata.errors import ConfigError, GpdataError, KeyConfigError, SourceError
from gpdata.ingest.feeds import Feed
from gpdata.ops import cli
from gpdata.privacy import keys, ndop, type1
from gpdata.privacy.deid import Pseudonymiser, hmac_hex
from gpdata.share import disseminate
from gpdata.share.projects import load_project
from gpdata.store import release
from gpdata.store.rotation import rotate
from tests import factory as f

X_NHS, Y_NHS, Z_NHS = "9990000018", "9990000026", "9990000034"
TODAY = dt.date.today()
PROJECT = {
    "organisation": "University of Example", "purpose": "Opt-out audit", "legal_basis": "UK GDPR 6(1)(e), 9(2)(j)",
    "approvals": [{"panel": "IGARD", "reference": "IG-1", "date": "2026-01-10"},
                  {"panel": "Caldicott Guardian", "reference": "CG-7", "date": "2026-01-12"}],
    "tables": {"patients": ["patient_pid", "sex"], "observations": ["patient_pid", "event_date", "code"],
               "medications": ["patient_pid", "event_date", "code"]},
    "date_from": "2000-01-01", "date_to": "2030-12-31", "expires": "2099-12-31",
    # A handful of patients cannot reach k=5 (issue 16): these tests are about opt-outs in extracts.
    "environment": "trusted_research_environment", "environment_reason": "unit tests of a tiny store",
    "minimum_k": 1, "rare_codes": {"action": "keep"},
}


def _feed(home, ods, resources):
    f.write_bundle(home / "sources" / ods, resources)
    return Feed(ods_code=ods, name=ods, location=str(home / "sources" / ods), max_quarantine_fraction=1)


def _practice_a(home, dissent=True, dissent_date="2022-01-01"):
    res = [f.organization("A81001"), *f.practitioner("prac-1", "123456789012"),
           f.patient("p1", X_NHS), f.observation("a-bmi", "p1", f.BMI, "2020-01-01", value=25.0, unit="kg/m2"),
           f.patient("p2", Y_NHS, family="Other", given="Person"),
           f.observation("y-bmi", "p2", f.BMI, "2020-01-01", value=26.0, unit="kg/m2")]
    if dissent:
        res.append(f.observation("a-dissent", "p1", f.DISSENT, dissent_date))
    return _feed(home, "A81001", res)


def _practice_b(home, extra=()):
    """The same patient X at another practice (a temporary resident), under another id, no dissent there."""
    return _feed(home, "B82002", [
        f.organization("B82002"), *f.practitioner("prac-1", "123456789013"),
        f.patient("q9", "999 000 0018"), f.observation("b-bmi", "q9", f.BMI, "2021-01-01", value=24.0, unit="kg/m2"),
        f.medication_issue("b-med", "q9", f.GLIMEPIRIDE, "2021-02-02"),
        f.patient("q2", Z_NHS, family="Third", given="Person"),
        f.observation("z-bmi", "q2", f.BMI, "2021-01-01", value=28.0, unit="kg/m2"), *extra])


def _pid(nhs=X_NHS):
    return Pseudonymiser(keys.load_master_key())(pa.array([nhs]), "nhs_number")[0].as_py()


def _store_holds(cfg, pid) -> list[str]:
    """Every place under the store (any table, any version's file, any release copy) holding the pseudonym."""
    return [str(p) for p in cfg.store.rglob("*.parquet") if "_type1" not in p.parts and "_ndop" not in p.parts
            and "patient_pid" in pq.read_schema(p).names and pid in pq.read_table(p)["patient_pid"].to_pylist()]


def _project(home, project_id="AUDIT", **changes):
    path = home / "projects" / f"{project_id}.yaml"
    path.parent.mkdir(exist_ok=True)
    doc = {**PROJECT, "project_id": project_id, "national_data_optout": "exempt", "exemption_reason": "test",
           **changes}
    path.write_text(yaml.safe_dump(doc))
    return load_project(path)


def _extract_pids(cfg, project, rid, key):
    m = disseminate.extract(project, rid, cfg.store, cfg.extracts, key, requested_by="auditor")
    folder = cfg.extracts / project.project_id / m["release"]
    return {p for t in project.tables for p in pq.read_table(folder / f"{t}.parquet")["patient_pid"].to_pylist()}


def _project_pid(key, project, pid):
    return hmac_hex(disseminate.project_key(key, project.project_id, "nhs_number"), pa.array([pid]))[0].as_py()


@pytest.mark.parametrize("order", [["A", "B"], ["B", "A"], ["A", "B", "A", "B"], ["B", "A", "B", "A"],
                                   ["B", "B", "A", "A"]])
def test_a_dissent_at_one_practice_excludes_the_patient_everywhere_in_any_order(home, order):
    cfg = settings.load()
    feeds = {"A": _practice_a(home), "B": _practice_b(home)}
    key = keys.load_master_key()
    x = _pid()
    project = _project(home)
    for i, name in enumerate(order):
        pipeline.run_practice(feeds[name], cfg, f"r{i}", force=True)
        rid = release.create_release(cfg.store)["release_id"]  # refused if the store held an active dissenter
        if "A" in order[:i + 1]:  # from the moment the dissent is known: in no release and no extract
            for r in release.list_releases(cfg.store, readable_only=True):
                for table in ("patients", "observations", "medications"):
                    held = release.read_release_table(cfg.store, r["release_id"], table)["patient_pid"].to_pylist()
                    assert x not in held, (r["release_id"], table)
            assert _project_pid(key, project, x) not in _extract_pids(cfg, project, rid, key)
    assert _store_holds(cfg, x) == []  # no table, no older file, no release copy
    others = set(store.read_table(cfg.store, "patients")["patient_pid"].to_pylist())
    assert others == {_pid(Y_NHS), _pid(Z_NHS)}  # everyone else is there, from both practices


def test_the_latest_code_wins_across_practices(home):
    cfg = settings.load()
    x = _pid()
    pipeline.run_practice(_practice_a(home, dissent_date="2021-01-01"), cfg, "r1")
    withdrawal = f.observation("b-withdrawn", "q9", f.WITHDRAWN, "2023-06-01")  # later, at the other practice
    counts = pipeline.run_practice(_practice_b(home, [withdrawal]), cfg, "r1")
    assert counts["type1_optout"]["patients_readmitted"] == 1
    assert x in store.read_table(cfg.store, "patients", "B82002")["patient_pid"].to_pylist()
    pipeline.run_practice(_practice_a(home, dissent_date="2021-01-01"), cfg, "r2", force=True)
    assert x in store.read_table(cfg.store, "patients", "A81001")["patient_pid"].to_pylist()
    later = f.observation("a-dissent2", "p1", f.DISSENT, "2024-01-01")  # and a later dissent excludes again
    feed = _practice_a(home, dissent_date="2021-01-01")
    f.write_bundle(home / "sources" / "A81001", [later], name="bundle-0002.json")
    pipeline.run_practice(feed, cfg, "r3", force=True)
    assert _store_holds(cfg, x) == []


def test_a_commit_rechecks_the_register_recorded_since_its_extraction(home):
    cfg = settings.load()
    b = _practice_b(home)
    pipeline.extract(b, cfg, "slow")
    pipeline.check(b, cfg, "slow")                   # B's batch holds X, validated before A's dissent is known
    pipeline.run_practice(_practice_a(home), cfg, "r1")
    counts = pipeline.commit(b, cfg, "slow")
    assert counts["type1_optout"]["excluded_at_commit"]["patients"] == 1
    assert _store_holds(cfg, _pid()) == []


@pytest.mark.parametrize("check_seconds", [0.0, 1e9], ids=["each commit checked", "commits checked together"])
@pytest.mark.parametrize("when", ["before its commits", "between its commits"])
def test_a_chunk_rechecks_the_register_recorded_since_it_read_it(home, monkeypatch, when, check_seconds):
    """A chunk of practices reads the register once for all its extractions and once more after recording their
    dissents (not once per practice and stage): a dissent another practice records after either read still keeps
    the patient out of the store, dropped at the commit or erased by the check after the commits' writes, whether
    it follows each commit or several (``pipeline.CHECK_SECONDS``)."""
    monkeypatch.setattr(pipeline, "CHECK_SECONDS", check_seconds)
    cfg = settings.load()
    c = _feed(home, "C83003", [f.organization("C83003"), *f.practitioner("prac-1", "123456789014"),
                               f.patient("r2", Y_NHS), f.observation("c-bmi", "r2", f.BMI, "2021-01-01", value=27.0,
                                                                     unit="kg/m2")])
    a_records = lambda: pipeline.run_practice(_practice_a(home), cfg, "r1")  # noqa: E731 - X's dissent, at A
    if when == "before its commits":  # after the chunk extracted and checked B's batch, which holds X
        settle = pipeline.settle_optouts
        monkeypatch.setattr(pipeline, "settle_optouts", lambda *args: (a_records(), settle(*args))[1])
    else:  # after the chunk's second read and B's drop of dissenters, before B's write
        write = pipeline._write
        monkeypatch.setattr(pipeline, "_write", lambda cfg_, c: (
            a_records() if c.practice == "B82002" else None, write(cfg_, c))[1])
    out = pipeline.run_chunk([_practice_b(home), c], cfg, "slow")
    assert {o["status"] for o in out.values()} == {"committed"}
    if when == "before its commits":
        assert out["B82002"]["type1_optout"]["excluded_at_commit"]["patients"] == 1
    else:
        assert out["B82002"]["erasure_after_commit"]["patients"] == 1
        manifest = store.read_json(cfg.manifests / "B82002" / "latest.json")
        assert manifest["status"] == "committed" and manifest["erasure_after_commit"]["patients"] == 1
        assert "erasure_after_commit" not in out["C83003"]
    assert out["C83003"]["commit_checked_with"] == (1 if check_seconds == 0 else 2)
    assert _store_holds(cfg, _pid()) == []
    assert _pid(Y_NHS) in store.read_table(cfg.store, "patients", "C83003")["patient_pid"].to_pylist()


def test_a_chunk_whose_check_after_its_commits_fails_fails_them(home, monkeypatch):
    """The check after the commits' writes is part of each commit: if it cannot be made, every practice it covered
    fails at its commit stage (manifest, cause), never reported committed unchecked."""
    cfg = settings.load()
    monkeypatch.setattr(pipeline, "CHECK_SECONDS", 1e9)
    c = _feed(home, "C83003", [f.organization("C83003"), *f.practitioner("prac-1", "123456789014"),
                               f.patient("r2", Y_NHS)])

    def unreadable(*args):
        raise GpdataError("the type 1 register cannot be read")

    monkeypatch.setattr(type1, "dissented_since", unreadable)
    out = pipeline.run_chunk([_practice_b(home), c], cfg, "r1")
    assert {o["status"] for o in out.values()} == {"failed"}
    assert {o["stage"] for o in out.values()} == {"commit"}
    for ods in out:
        manifest = store.read_json(cfg.manifests / ods / "latest.json")
        assert manifest["error"]["stage"] == "commit" and "cannot be read" in manifest["error"]["cause"]


def _with_dissent(home, dissent: dict):
    res = [f.organization("A81001"), *f.practitioner("prac-1", "123456789012"), f.patient("p1", X_NHS),
           f.observation("bmi", "p1", f.BMI, "2020-01-01", value=25.0, unit="kg/m2"),
           f.medication_issue("med", "p1", f.GLIMEPIRIDE, "2020-01-01"), f.patient("p2", Y_NHS), dissent]
    return _feed(home, "A81001", res)


def _obs(coding, subject=None, **extra):
    return {"resourceType": "Observation", "id": "dissent", "status": "final",
            "subject": subject or {"reference": "Patient/p1"}, "effectiveDateTime": "2022-01-01",
            "code": {"coding": coding}, **extra}


ENCODINGS = {
    "snomed": _obs([{"system": f.SNOMED, "code": f.DISSENT}]),
    "ctv3 in a condition": {"resourceType": "Condition", "id": "dissent", "subject": {"reference": "Patient/p1"},
                            "recordedDate": "2022-01-01",
                            "code": {"coding": [{"system": "http://read.info/ctv3", "code": "XaZ89"}]}},
    "read v2 with term code": _obs([{"system": "http://read.info/readv2", "code": "9Nu0.00"}]),
    "snomed with a trailing space": _obs([{"system": f.SNOMED, "code": f.DISSENT + " "}]),
    "https system": _obs([{"system": "https://snomed.info/sct", "code": f.DISSENT}]),
    "read beside another concept": _obs([{"system": f.SNOMED, "code": f.BMI},
                                         {"system": "http://read.info/readv2", "code": "9Nu0."}]),
    "subject by nhs number": _obs([{"system": f.SNOMED, "code": f.DISSENT}], subject={
        "identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "999 000 0018"}}),
    "oid system, procedure, period": {"resourceType": "Procedure", "id": "dissent", "status": "completed",
                                      "subject": {"reference": "urn:uuid:p1"},
                                      "performedPeriod": {"start": "2022-01-01T10:00:00+00:00"},
                                      "code": {"coding": [{"system": "urn:oid:2.16.840.1.113883.6.96",
                                                           "code": f.DISSENT}]}},
}


@pytest.mark.parametrize("name", ENCODINGS)
def test_every_realistic_encoding_of_a_dissent_excludes_the_patient(home, name):
    cfg = settings.load()
    counts = pipeline.run_practice(_with_dissent(home, ENCODINGS[name]), cfg, "r1")
    assert counts["status"] == "committed" and counts["type1_optout"]["patients_excluded"] == 1
    assert _store_holds(cfg, _pid()) == []
    assert _pid(Y_NHS) in store.read_table(cfg.store, "patients")["patient_pid"].to_pylist()


@pytest.mark.parametrize("dissent, cause", [
    (_obs([{"system": f.SNOMED, "code": f.DISSENT}], effectiveDateTime="not a date"), "has no date"),
    ({**_obs([{"system": f.SNOMED, "code": f.DISSENT}]), "effectiveDateTime": None}, "has no date"),
    (_obs([{"system": f.SNOMED, "code": f.DISSENT}], subject={"reference": "Patient/nobody"}), "cannot be tied"),
    (_obs([{"system": f.SNOMED, "code": f.DISSENT}], subject={"display": "Mrs X"}), "cannot be tied"),
])
def test_a_dissent_that_cannot_be_applied_stops_the_batch(home, dissent, cause):
    cfg = settings.load()
    with pytest.raises(SourceError, match=cause) as err:
        pipeline.run_practice(_with_dissent(home, {k: v for k, v in dissent.items() if v is not None}), cfg, "r1")
    assert f.file_token("bundle-0001.json") in str(err.value) and "row 7" in str(err.value)  # its entry index
    store.ensure_tables(cfg.store)
    assert not any(store.row_counts(cfg.store).values())  # nothing committed, nothing quarantined


def test_dissent_codes_in_canonical_rows_of_any_adapter_are_found_by_code_alone():
    """Flat-file and SQL dialects give canonical rows: their codes go through the same detection."""
    codes = optout_codes()
    obs = pa.table({"patient_ref": ["a", "b", "c", "d", "e", "f"],
                    "event_date": pa.array([dt.date(2022, 1, 1)] * 6, pa.date32()),
                    "code_system": ["SNOMED CT", "Read", "readv2", "ctv3", "snomed", "snomed"],
                    "code": [" 827241000000103", "9Nu0.00", "9Nu0", "XaZ89\u00a0", "827261000000102", "38341003"],
                    "_src_file": ["x.csv"] * 6, "_src_entry": pa.array(range(6), pa.int32())})
    found = type1.evidence({"observations": obs}, codes)
    assert dict(zip(found["patient_ref"].to_pylist(), found["dissent"].to_pylist(), strict=True)) == {
        "a": True, "b": True, "c": True, "d": True, "e": False}


def test_a_wrong_key_with_the_right_label_is_refused_before_any_source_is_read(home, monkeypatch):
    cfg = settings.load()
    feed = _practice_a(home)
    pipeline.run_practice(feed, cfg, "r1")
    monkeypatch.setenv("GPDATA_MASTER_KEY", "6b" * 32)  # another key, also labelled v1

    def never(*args, **kwargs):
        raise AssertionError("a source was read before the key was checked")

    monkeypatch.setattr(pipeline.sources, "collect", never)
    with pytest.raises(KeyConfigError, match="not the key the store was made with"):
        pipeline.extract(feed, cfg, "r2")
    (cfg.store / "_keys" / "checks.json").unlink()  # without the store's record, the ledger's still refuses
    with pytest.raises(KeyConfigError, match="not the key the ledger of practice A81001 was made with"):
        pipeline.extract(feed, cfg, "r2")


@pytest.mark.parametrize("ring, message", [
    (f"v2:{'5a' * 32},v1:{'6b' * 32}", "out of order"),
    (f"v1:{'5a' * 32},v1:{'6b' * 32}", "repeats a key version"),
    (f"current:{'5a' * 32}", "not of the form v1"),
])
def test_a_ring_out_of_order_is_refused(home, monkeypatch, ring, message):
    monkeypatch.setenv("GPDATA_MASTER_KEY", ring)
    with pytest.raises(KeyConfigError, match=message):
        pipeline.extract(_practice_a(home), settings.load(), "r1")


@pytest.fixture
def ring(home, monkeypatch):
    key_file = home / "ring.key"
    keys.write_development_key(key_file)
    monkeypatch.delenv("GPDATA_MASTER_KEY")
    monkeypatch.setenv("GPDATA_MASTER_KEY_FILE", str(key_file))
    return key_file


def _ndop_file(home, numbers, name="ndop.csv"):
    path = home / name
    path.write_text("nhs_number\n" + "".join(f"{n}\n" for n in numbers))
    return path


def _rotate(cfg, key_file):
    return rotate(cfg, lambda: keys.load_master_key(), lambda: keys.add_key_version(key_file))


def test_after_a_rotation_the_ndop_still_applies_and_every_release_is_retired_or_readable(home, ring, tmp_path,
                                                                                         capsys):
    cfg = settings.load()
    from tests.conftest import practice_resources  # p4 has a type 1 dissent; p2 is on the NDOP list

    feed = _feed(home, "A81001", practice_resources())
    pipeline.run_practice(feed, cfg, "r1")
    first = release.create_release(cfg.store)["release_id"]
    ndop.ingest(_ndop_file(home, ["999 000 0026"]), cfg.store, keys.load_master_key(), published=TODAY)
    applying = _project(home, "APPLY", national_data_optout="apply", exemption_reason=None)
    before = _extract_pids(cfg, applying, first, keys.load_master_key())

    steps = _rotate(cfg, ring)
    key = keys.load_master_key()
    assert key.versions == ["v1", "v2"] and steps["releases_retired"] == [first] and steps["release"]
    assert steps["ndop"].startswith("v1 -> v2")
    after = _extract_pids(cfg, applying, release.latest_release(cfg.store)["release_id"], key)
    assert _project_pid(key, applying, _pid(Y_NHS)) not in after        # the NDOP patient is still removed
    assert len(after) == len(before) == 1 and after != before             # and project pseudonyms changed
    assert json.loads((cfg.store / "_audit" / "audit.jsonl").read_text().splitlines()[-1])["removed_by_ndop"]

    counts = pipeline.run_practice(feed, cfg, "r2", force=True)  # a practice with a dissenter commits
    assert counts["status"] == "committed" and counts["type1_optout"]["patients_excluded"] == 1
    for r in release.list_releases(cfg.store):
        if r["status"] == release.RETIRED:
            assert cli.main(["release", "export", r["release_id"], "--out", str(tmp_path / "x")]) == 2
            assert f"retired on {r['retired']['at']} (key rotation v1 -> v2)" in capsys.readouterr().err
            assert r["retired"]["replaced_by"] == steps["release"]
        else:
            assert cli.main(["release", "export", r["release_id"], "--out", str(tmp_path / r["release_id"])]) == 0


def test_an_interrupted_rotation_resumes_and_never_leaves_two_versions(home, ring, monkeypatch):
    cfg = settings.load()
    feed = _practice_a(home)
    pipeline.run_practice(feed, cfg, "r1")
    ndop.ingest(_ndop_file(home, [Y_NHS]), cfg.store, keys.load_master_key(), published=TODAY)

    def crash(*args, **kwargs):
        raise OSError("worker lost")

    real = ndop.rekey
    monkeypatch.setattr(ndop, "rekey", crash)
    with pytest.raises(OSError):
        _rotate(cfg, ring)
    with pytest.raises(KeyConfigError, match="rotation .* is unfinished"):
        pipeline.extract(feed, cfg, "r2")
    with pytest.raises(GpdataError, match="rotation is unfinished"):
        release.create_release(cfg.store)
    monkeypatch.setattr(ndop, "rekey", real)
    _rotate(cfg, ring)  # resumes: no third version
    assert keys.load_master_key().versions == ["v1", "v2"]
    assert {v for t in ("patients", "observations") for v in store.read_table(cfg.store, t)["key_version"]
            .to_pylist()} == {"v2"}
    assert ndop.current(cfg.store)["key_version"] == "v2"
    assert type1.load_register(cfg.store, "v2")[0].num_rows == 1  # X's dissent, re-keyed, still in force
    assert pipeline.run_practice(feed, cfg, "r3", force=True)["status"] == "committed"
    assert _store_holds(cfg, _pid()) == []


@pytest.mark.parametrize("numbers, published, message", [
    ([], TODAY, "no valid NHS number"),
    (["9.99102086E+09", "9.99000002E+09"], TODAY, "no valid NHS number"),  # a spreadsheet's numbers
    ([Y_NHS, "9.99102086E+09", Z_NHS], TODAY, "1 of 3 rows .* are not valid NHS numbers"),
    ([Y_NHS], TODAY + dt.timedelta(days=1), "in the future"),
    ([Y_NHS], TODAY - dt.timedelta(days=60), "60 days ago"),
])
def test_a_bad_ndop_list_is_refused_and_the_list_in_force_stays(home, numbers, published, message):
    cfg = settings.load()
    key = keys.load_master_key()
    good = [X_NHS, Y_NHS, Z_NHS]
    ndop.ingest(_ndop_file(home, good), cfg.store, key, published=TODAY - dt.timedelta(days=2))
    in_force = ndop.load(cfg.store, TODAY, key=key)
    bad = _ndop_file(home, numbers, "new.csv")
    with pytest.raises(ConfigError, match=message) as err:
        ndop.ingest(bad, cfg.store, key, published=published)
    assert "new.csv" in str(err.value) and "the list in force is unchanged" in str(err.value)
    assert bad.exists()  # the identifiable file is kept for the operator until a list is accepted
    assert ndop.load(cfg.store, TODAY, key=key)[0].equals(in_force[0])
    assert ndop.current(cfg.store)["published"] == (TODAY - dt.timedelta(days=2)).isoformat()


def test_a_shrunken_ndop_list_is_refused_and_staleness_counts_from_publication(home):
    cfg = settings.load()
    key = keys.load_master_key()
    many = [n for n in (f"9990001{i:03d}" for i in range(300)) if _valid(n)][:20]
    ndop.ingest(_ndop_file(home, many), cfg.store, key, published=TODAY - dt.timedelta(days=30))
    with pytest.raises(ConfigError, match="a drop of 50.0%"):
        ndop.ingest(_ndop_file(home, many[:10], "half.csv"), cfg.store, key, published=TODAY)
    ndop.ingest(_ndop_file(home, many[:19], "most.csv"), cfg.store, key, published=TODAY - dt.timedelta(days=30))
    with pytest.raises(GpdataError, match="36 days old"):
        ndop.load(cfg.store, TODAY + dt.timedelta(days=6), key=key)  # received today, published 30 days ago
    with pytest.raises(GpdataError, match="key version"):
        ndop.load(cfg.store, TODAY, key=keys.load_master_key({"GPDATA_MASTER_KEY": f"v2:{'77' * 32}"}))


def _valid(n: str) -> bool:
    total = sum(int(d) * w for d, w in zip(n[:9], range(10, 1, -1), strict=True))
    check = 11 - total % 11
    return len(n) == 10 and check != 10 and (0 if check == 11 else check) == int(n[9])


def test_the_register_keeps_pseudonyms_only(home):
    cfg = settings.load()
    pipeline.run_practice(_practice_a(home), cfg, "r1")
    files = list((cfg.store / "_type1").glob("*.parquet"))
    assert [p.name for p in files] == ["A81001.parquet"]
    table = pq.read_table(files[0])
    assert table.column_names == ["patient_pid", "event_date", "dissent"]
    assert table["patient_pid"].to_pylist() == [_pid()] and X_NHS not in files[0].read_bytes().decode("latin-1")
    assert table.schema.metadata[b"key_version"] == b"v1"
    assert os.stat(files[0]).st_size > 0


@pytest.mark.parametrize("dialect", ["emis_csv", "tpp_pipe"])
@pytest.mark.parametrize("code, date, outcome", [
    ("9Nu0.00", "2022-01-01", "excluded"), (" 827241000000103 ", "2022-01-01", "excluded"),
    ("XaZ89", None, "has no date"),
])
def test_flat_file_dialects_follow_the_same_rules(home, tmp_path, dialect, code, date, outcome):
    from gpdata.ingest.dialects import load_dialect
    from gpdata.ingest.sources.fhir import read_bundles
    from gpdata.ingest.sources.flatfile import write_delivery
    from gpdata.synth.exports import FIRST_STAMP

    dissent = _obs([{"system": "http://read.info/readv2", "code": code}])
    dissent.pop("effectiveDateTime")
    if date:
        dissent["effectiveDateTime"] = date
    f.write_bundle(tmp_path / "fhir", [f.organization("A81001"), *f.practitioner("prac-1", "123456789012"),
                                       f.patient("p1", X_NHS), f.patient("p2", Y_NHS),
                                       f.medication_issue("med", "p1", f.GLIMEPIRIDE, "2020-01-01"),
                                       f.observation("bmi", "p1", f.BMI, "2020-01-01", value=25.0, unit="kg/m2"),
                                       dissent])
    canonical = read_bundles(tmp_path / "fhir", "A81001")
    write_delivery(canonical, tmp_path / dialect, "A81001", load_dialect(dialect), FIRST_STAMP)
    feed = Feed(ods_code="A81001", name="t", format="flatfile", dialect=dialect, location=str(tmp_path / dialect),
                max_quarantine_fraction=1)
    cfg = settings.load()
    if outcome != "excluded":
        with pytest.raises(SourceError, match=outcome):
            pipeline.run_practice(feed, cfg, "r1")
        return
    assert pipeline.run_practice(feed, cfg, "r1")["type1_optout"]["patients_excluded"] == 1
    assert _store_holds(cfg, _pid()) == [] and _pid(Y_NHS) in store.read_table(cfg.store, "patients")[
        "patient_pid"].to_pylist()


def test_a_type1_code_in_any_code_column_of_a_row_is_never_hidden_behind_another():
    """A dialect with several code columns takes the first non-empty one, except a type 1 code anywhere."""
    from gpdata.ingest.dialects import load_dialect
    from gpdata.ingest.sources.convert import to_canonical

    d = load_dialect("research_tab")
    rows = [  # medcodeid (a BMI concept through the look-up), snomed, read, ctv3
        ("1001", "", "9Nu0.00", ""), ("1001", "", "", ""), ("1001", "", "", "XaZ8A"), ("", f.DISSENT, "", "XaZ8A")]
    raw = pa.table({"obsid": [f"o{i}" for i in range(4)], "patid": ["p1"] * 4, "staffid": ["s"] * 4,
                    "obsdate": ["01/01/2022"] * 4, "medcodeid": [r[0] for r in rows],
                    "snomedctconceptid": [r[1] for r in rows], "readcode": [r[2] for r in rows],
                    "ctv3code": [r[3] for r in rows], "obstypeid": ["2"] * 4, "value": [""] * 4, "numunit": [""] * 4})
    out = to_canonical("observations", raw, d, "A81001", "Observation.txt",
                       lookups=lambda name: (pa.array(["1001"]), pa.array([f.BMI])))
    assert list(zip(out["code_system"].to_pylist(), out["code"].to_pylist(), strict=True)) == [
        ("readv2", "9Nu0.00"), ("snomed", f.BMI), ("ctv3", "XaZ8A"), ("snomed", f.DISSENT)]


def test_a_release_holding_an_active_dissenter_is_refused_naming_counts_only(home):
    """The last line of defence, reached by hand: a dissent in the register that no commit has erased yet."""
    cfg = settings.load()
    pipeline.run_practice(_practice_b(home), cfg, "r1")  # X committed at B while no dissent is known
    events = type1.latest(pa.array([_pid()]), pa.array([dt.date(2022, 1, 1)], pa.date32()), pa.array([True]))
    type1.record(cfg.store, "A81001", events, "v1")
    with pytest.raises(GpdataError, match=r"release refused: 1 patient\(s\) .* \(in medications, observations, "
                                          r"patients\)") as err:
        release.create_release(cfg.store)
    assert _pid() not in str(err.value)
    assert release.list_releases(cfg.store) == []
