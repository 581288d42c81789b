"""Privacy guards pinned by tests (issue 23): each test here fails when its guard is broken in the way the
issue describes (a mutation that once survived the suite). The break each one was shown to catch is named in
its docstring."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from gpdata import audit, pipeline, settings, storage, store
from gpdata.errors import GpdataError
from gpdata.model import PSEUDONYM_FIELDS, TABLES
from gpdata.privacy import keys, ndop, type1
from gpdata.privacy.deid import Pseudonymiser, hmac_hex
from gpdata.share import disseminate
from gpdata.share.publish import REDACTED, suppress
from gpdata.store import erasure, release
from tests.unit.privacy.test_optouts_everywhere import (
    TODAY,
    X_NHS,
    Y_NHS,
    _ndop_file,
    _pid,
    _practice_a,
    _practice_b,
    _project,
    _project_pid,
    _store_holds,
)


def _ndop_project(home, cfg, key, numbers=(X_NHS,)):
    """Practice B committed (X, Z), a release, a National Data Opt-out list of ``numbers`` and a project that
    applies it."""
    pipeline.run_practice(_practice_b(home), cfg, "r1")
    rid = release.create_release(cfg.store)["release_id"]
    ndop.ingest(_ndop_file(home, list(numbers)), cfg.store, key, published=TODAY)
    return _project(home, national_data_optout="apply", exemption_reason=None, minimum_k=1,
                    rare_codes={"action": "keep"},
                    environment="trusted_research_environment",
                    environment_reason="test"), rid


# 1. NDOP on every table, not on patients only
def test_the_national_data_optout_removes_every_record_of_the_patient_not_only_the_patient_row(home):
    """Break: the NDOP filter applied only when ``table_name == "patients"`` -> observations/medications hold X."""
    cfg, key = settings.load(), keys.load_master_key()
    project, rid = _ndop_project(home, cfg, key)
    disseminate.extract(project, rid, cfg.store, cfg.extracts, key, requested_by="auditor")
    x = _project_pid(key, project, _pid())
    folder = cfg.extracts / project.project_id / rid
    for table in project.tables:
        held = pq.read_table(folder / f"{table}.parquet")["patient_pid"].to_pylist()
        assert x not in held, table
        if table != "medications":  # only X had a medication
            assert held, table  # the other patient is there: the filter removed X, not everything


# 2. an incremental delivery's new records of a patient who dissented earlier
def test_an_incremental_delivery_never_stages_new_records_of_a_known_dissenter(home, tmp_path):
    """Break: the extraction's drop of active dissenters' staged rows (pipeline ``_drop_pids(staged, active)``)
    disabled -> the increment stages the dissenter's new observation, resolved through the earlier delivery
    (the commit-time recheck is pinned apart, by test_a_commit_rechecks_the_register_recorded_since_its_extraction)."""
    from gpdata.ingest.dialects import load_dialect
    from gpdata.ingest.feeds import Feed
    from gpdata.ingest.sources.flatfile import write_delivery
    from gpdata.synth import exports, generate

    cfg, key, ods, today = settings.load(), keys.load_master_key(), "A81001", dt.date(2026, 1, 1)
    generate(home, n_practices=1, n_patients=12, seed=11, ods_codes=[ods])
    canonical = exports.canonical_of(home / "sources" / ods, ods)
    out, dialect = tmp_path / "tpp", load_dialect("tpp_pipe")
    write_delivery(canonical, out, ods, dialect, exports.FIRST_STAMP)
    feed = Feed(ods_code=ods, name="Test practice", supplier="test", format="flatfile", location=str(out),
                dialect="tpp_pipe", mode="incremental", max_quarantine_fraction=1)
    pipeline.run_practice(feed, cfg, "base", today=today)
    # a dissent in the register that no commit has erased yet (recorded at another practice, say)
    obs = canonical["observations"]
    new = obs.slice(0, 1).set_column(obs.schema.get_field_index("source_id"), "source_id", pa.array(["new-obs-1"]))
    patients = canonical["patients"]
    nhs = patients.filter(pa.compute.equal(patients["source_id"], new["patient_ref"][0]))["nhs_number"][0].as_py()
    pid = Pseudonymiser(key)(pa.array([nhs.replace(" ", "")]), "nhs_number")[0].as_py()
    events = type1.latest(pa.array([pid]), pa.array([dt.date(2025, 6, 1)], pa.date32()), pa.array([True]))
    type1.record(cfg.store, "B82002", events, key.version)
    # the increment: only a new observation of that patient
    changed = {name: t.slice(0, 0) for name, t in canonical.items()} | {"observations": new}
    write_delivery(changed, out, ods, dialect, "20260102020000")
    counts = pipeline.extract(feed, cfg, "delta")
    assert counts["source"]["mode"] == "incremental"
    staged = pq.read_table(pipeline.staging_dir(cfg, "delta", ods) / "extracted" / "observations.parquet")
    assert pid not in staged["patient_pid"].to_pylist()
    assert counts["type1_optout"]["records_excluded"].get("observations") == 1


# 3. erasure looks in releases
def test_a_patient_held_only_by_a_release_is_found_and_erased_after_a_late_optout(home):
    """Break: ``erasure.present`` stops looking in releases -> the release copy of X is never erased."""
    cfg = settings.load()
    pipeline.run_practice(_practice_b(home), cfg, "r1")
    release.create_release(cfg.store)
    x = _pid()
    for name in TABLES:  # X leaves the current store (a source deletion, say) but the release keeps them
        if name != "practitioners":
            storage.delta_table(store.table_path(cfg.store, name)).delete(f"patient_pid = '{x}'")
    assert erasure.present(cfg.store, pa.array([x])).to_pylist() == [x]
    pipeline.run_practice(_practice_a(home), cfg, "r1")  # the late opt-out
    assert _store_holds(cfg, x) == []


# 4. each field under its own derived key
def test_every_pseudonymised_field_uses_its_own_derived_key(home):
    """Break: ``Pseudonymiser`` chaining every field under the ``nhs_number`` key -> date_of_birth, postcode,
    practitioner and record_id pseudonyms equal the NHS-number key's HMAC."""
    key = keys.load_master_key()
    values = pa.array(["9990000018", "1980-05-17", "LS14AB"])
    pseudo = Pseudonymiser(key)
    by_field = {}
    for field in sorted(set(PSEUDONYM_FIELDS.values())):
        got = pseudo(values, field)
        assert got.equals(hmac_hex(key.derive(field), values)), field
        by_field[field] = got.to_pylist()
    firsts = [v[0] for v in by_field.values()]
    assert len(set(firsts)) == len(firsts)  # no two fields share a key


def test_the_store_holds_date_of_birth_and_postcode_under_their_own_keys(home):
    """The same through the pipeline: deidentify passes each field's own name."""
    cfg = settings.load()
    pipeline.run_practice(_practice_b(home), cfg, "r1")
    key = keys.load_master_key()
    patients = store.read_table(cfg.store, "patients")
    row = patients.filter(pa.compute.equal(patients["patient_pid"], _pid())).to_pylist()[0]
    assert row["dob_pid"] == hmac_hex(key.derive("date_of_birth"), pa.array(["1980-05-17"]))[0].as_py()
    assert row["postcode_pid"] == hmac_hex(key.derive("postcode"), pa.array(["LS1 4AB"]))[0].as_py() or \
        row["postcode_pid"] == hmac_hex(key.derive("postcode"), pa.array(["LS14AB"]))[0].as_py()


# 5. an undated dissent beats every withdrawal
_dates = st.one_of(st.none(), st.dates(dt.date(1900, 1, 1), dt.date(2100, 12, 31)))


@hsettings(max_examples=200, deadline=None)
@given(withdrawals=st.lists(_dates, min_size=1, max_size=5), dissents=st.lists(_dates, max_size=3))
def test_an_undated_dissent_beats_every_withdrawal(withdrawals, dissents):
    """Break: an undated dissent ranked like an undated withdrawal (``_MIN_DAY``) -> a dated withdrawal wins."""
    dates = [*withdrawals, *dissents, None]
    dissent = [False] * len(withdrawals) + [True] * (len(dissents) + 1)
    best = type1.latest(pa.array(["p"] * len(dates)), pa.array(dates, pa.date32()), pa.array(dissent))
    assert best["dissent"].to_pylist() == [True]


@hsettings(max_examples=200, deadline=None)
@given(dissents=st.lists(st.dates(dt.date(1900, 1, 1), dt.date(2100, 12, 31)), min_size=1, max_size=4))
def test_an_undated_withdrawal_loses_to_every_dated_dissent(dissents):
    """Break: an undated withdrawal ranked as the latest (``_MAX_DAY``) -> it lifts a dated dissent."""
    dates = [*dissents, None]
    best = type1.latest(pa.array(["p"] * len(dates)), pa.array(dates, pa.date32()),
                        pa.array([True] * len(dissents) + [False]))
    assert best["dissent"].to_pylist() == [True]


# 6, 8. published row counts and the audit log's removed_by_ndop are suppressed
def test_every_count_in_summary_json_and_the_audit_entry_is_suppressed(home):
    """Breaks: summary.json ``rows`` written as ``out.num_rows`` (6); the audit entry's ``removed_by_ndop``
    written unsuppressed (8). Both hold small exact counts here (1 to 3), which suppression redacts."""
    cfg, key = settings.load(), keys.load_master_key()
    project, rid = _ndop_project(home, cfg, key)
    manifest = disseminate.extract(project, rid, cfg.store, cfg.extracts, key, requested_by="auditor")
    summary = storage.read_json(cfg.extracts / project.project_id / rid / "summary.json")
    for table, counts in summary["tables"].items():
        exact = manifest["tables"][table]["rows"]
        assert counts["rows"] == suppress(exact), table
    assert manifest["tables"]["patients"]["rows"] == 1  # a count suppression must change
    assert summary["tables"]["patients"] == {"rows": REDACTED, "patients": REDACTED}
    assert manifest["removed_by_ndop"] == 1
    assert summary["removed_by_national_data_optout"] == REDACTED
    entry = [e for e in audit.entries(cfg.store) if e["event"] == "extract"][-1]
    assert entry["removed_by_ndop"] == REDACTED
    assert all(v == manifest["tables"][t]["rows"] for t, v in entry["rows"].items())  # exact, access-controlled


# 7. an inactive project is never disseminated
def test_an_inactive_project_is_refused_and_nothing_is_written(home):
    """Break: ``check_current`` without its ``active`` check -> the extract is written."""
    cfg, key = settings.load(), keys.load_master_key()
    pipeline.run_practice(_practice_b(home), cfg, "r1")
    rid = release.create_release(cfg.store)["release_id"]
    project = _project(home, active=False, minimum_k=1, environment="trusted_research_environment",
                    environment_reason="test")
    with pytest.raises(GpdataError, match="is not active"):
        disseminate.extract(project, rid, cfg.store, cfg.extracts, key, requested_by="auditor")
    assert not (cfg.extracts / project.project_id).exists()
    assert audit.entries(cfg.store)[-1]["event"] == "refusal"


# 9. production mode in any case
@pytest.mark.parametrize("value", ["production", "PRODUCTION", "Production", " production\n"])
def test_production_mode_is_recognised_in_any_case(value):
    """Break: the mode compared without ``.lower()`` (or ``.strip()``) -> ``PRODUCTION`` is development."""
    assert settings.production_mode({"GPDATA_MODE": value})
    assert keys.production_mode({"GPDATA_MODE": value})


@pytest.mark.parametrize("value", [None, "development", "prod", "productionx", ""])
def test_anything_else_is_not_production_mode(value):
    assert not settings.production_mode({} if value is None else {"GPDATA_MODE": value})


# 10. erasure takes pseudonyms only
_not_pseudonym = st.one_of(
    st.text(max_size=80), st.from_regex(r"\A[0-9]{10}\Z"), st.from_regex(r"\A[0-9A-F]{64}\Z"),
    st.from_regex(r"\A[0-9a-f]{63}\Z"), st.from_regex(r"\A[0-9a-f]{64}[' ;\-a-z]{1,8}\Z"),
).filter(lambda s: not erasure._PID.match(s))


@hsettings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=_not_pseudonym)
def test_erasure_refuses_anything_but_a_pseudonym(tmp_path, bad):
    """Break: ``erase`` without its ``_PID`` check -> a raw NHS number or a quoting string reaches the delete
    predicate."""
    with pytest.raises(GpdataError, match="pseudonyms only"):
        erasure.erase(tmp_path, pa.array([_pid_like(), bad], pa.string()))
    assert not (tmp_path / "_erasures" / "pending.parquet").exists()


def _pid_like() -> str:
    return "a" * 64


@pytest.mark.parametrize("bad", [X_NHS, "999 000 0026", "x') OR ('1'='1", "' OR 1=1 --", Y_NHS])
def test_erasure_refuses_raw_nhs_numbers_and_quoting_strings(tmp_path, bad):
    with pytest.raises(GpdataError, match="pseudonyms only") as err:
        erasure.erase(tmp_path, pa.array([bad]))
    assert bad not in str(err.value)  # the refused value is never quoted
