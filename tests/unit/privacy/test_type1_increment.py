"""A type 1 code in an incremental delivery for a patient excluded earlier (so never in the patient map): it is tied
to the patient through the ledger's dissenter map, and the practice's batch commits instead of stopping."""

import datetime as dt

import pyarrow as pa
import pyarrow.compute as pc

from gpdata import pipeline, settings, store
from gpdata.ingest import ledger
from gpdata.ingest.sources.flatfile import write_delivery
from gpdata.model import CANONICAL, TABLES
from gpdata.privacy import keys, nhsnumber, type1
from gpdata.privacy.deid import Pseudonymiser
from tests.test_helpers import emis_incremental_practice

TODAY = dt.date(2026, 6, 1)
DISSENT, WITHDRAWN = "827241000000103", "827261000000102"


def _code_row(patient_ref: str, code: str, when: dt.date, n: int) -> dict:
    row = {f.name: None for f in CANONICAL["observations"]}
    row.update(source_id=f"t1-{n}", patient_ref=patient_ref, event_date=when, code_system="snomed", code=code,
               category="observation", _src_file="increment", _src_entry=n)
    return row


def test_a_type1_code_for_a_patient_excluded_earlier_is_tied_and_the_batch_commits(home):
    canonical, feed, dialect = emis_incremental_practice(home, n_patients=120, events_per_patient=8, seed=4)
    ods, out = feed.ods_code, home / "inbox" / feed.ods_code
    cfg = settings.load()
    pipeline.run_practice(feed, cfg, "base", today=TODAY)
    # two patients with a valid NHS number whose latest type 1 code is a dissent: excluded, not in the patient map
    key = keys.load_master_key()
    pseudo = Pseudonymiser(key)
    patients = canonical["patients"]
    nhs = nhsnumber.normalise(patients["nhs_number"].combine_chunks())
    pids = pseudo(pc.if_else(nhsnumber.is_valid(nhs), nhs, pa.nulls(len(nhs), pa.string())), "nhs_number")
    active = type1.active_dissenters(cfg.store, key.version)[0]
    out_refs = patients["source_id"].filter(pc.fill_null(pc.is_in(pids, value_set=active), False)).to_pylist()
    assert len(out_refs) >= 2
    mapped = ledger.PracticeState.load(cfg.state, ods).patient_map()["patient_pid"].to_pylist()
    assert not set(mapped) & set(active.to_pylist())
    stays, withdraws = out_refs[0], out_refs[1]
    rows = [_code_row(stays, DISSENT, dt.date(2026, 1, 1), 1), _code_row(withdraws, WITHDRAWN, dt.date(2026, 1, 1), 2)]
    nothing = {n: CANONICAL[n].empty_table() for n in TABLES}
    changed = {**nothing, "observations": pa.Table.from_pylist(rows, schema=CANONICAL["observations"])}
    write_delivery(changed, out, ods, dialect, "20260102020000", deleted=nothing)

    counts = pipeline.run_practice(feed, cfg, "delta", today=TODAY)

    assert counts["status"] == "committed"
    after = set(type1.active_dissenters(cfg.store, key.version)[0].to_pylist())
    pid = dict(zip(patients["source_id"].to_pylist(), pids.to_pylist(), strict=True))
    assert pid[stays] in after and pid[withdraws] not in after  # tied to the right patients
    held = set(store.read_table(cfg.store, "observations", ods)["patient_pid"].to_pylist())
    assert pid[stays] not in held  # the dissenter's records stay out
