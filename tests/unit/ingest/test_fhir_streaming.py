"""A FHIR delivery read in two passes (fhir.Delivery, issue 21): the people and every type 1 code first, then the
event tables batch by batch. The batches must make exactly the tables of one whole read, every type 1 code must be
found before any event row is handed on (also one hidden behind a medicationReference), and a bundle that changes
between the passes must be refused, never read half old, half new."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpdata import pipeline
from gpdata import settings as gp_settings
from gpdata.codes import optout_codes
from gpdata.errors import SourceError
from gpdata.ingest.feeds import Feed
from gpdata.ingest.sources import fhir
from gpdata.ingest.sources.fhir import Delivery, read_bundles
from gpdata.model import EVENT_TABLES, ISSUE, TYPE1_EVIDENCE
from gpdata.privacy import type1
from tests import factory as f
from tests.conftest import practice_resources, use_home
from tests.unit.ingest.test_fhir_chunks import _delivery

NHS = "https://fhir.nhs.uk/Id/nhs-number"
PATIENTS = [("p1", f.VALID_NHS[0]), ("p2", f.VALID_NHS[1]), ("p3", f.VALID_NHS[2])]


def _joined(name: str, batches: list[pa.Table]) -> pa.Table:
    """A table's batches as one table, ``_issue`` only when a row has one (as a whole read gives it)."""
    if not batches:
        return fhir.SCHEMAS[name].empty_table()
    table = pa.concat_tables(batches, promote_options="permissive").combine_chunks()
    if ISSUE in table.column_names and table[ISSUE].null_count == table.num_rows:
        table = table.drop_columns([ISSUE])
    return table


def _streamed(folder, batch_rows: int, ods: str = "A81001"):
    """(the first pass's tables, each event table joined from its batches, the batches, the delivery)."""
    delivery = Delivery(folder, ods)
    people = delivery.people()
    batches: dict[str, list[pa.Table]] = {}
    for name, table in delivery.events(batch_rows):
        batches.setdefault(name, []).append(table)
    return people, {name: _joined(name, batches.get(name, [])) for name in EVENT_TABLES}, batches, delivery


def _evidence(tables: dict[str, pa.Table]) -> pa.Table:
    return type1.evidence(dict(tables), optout_codes())


@pytest.mark.parametrize("batch_rows", [1, 2, 4, 1000])
def test_the_batches_make_the_tables_of_a_whole_read(tmp_path, batch_rows):
    _delivery(tmp_path)
    report = {}
    whole = read_bundles(tmp_path, "A81001", report=report)
    people, events, batches, delivery = _streamed(tmp_path, batch_rows)
    for name, table in {**people, **events}.items():
        assert table.schema == whole[name].schema and table.equals(whole[name]), name
    assert {**report, "refused_files": []} == {**delivery.report(), "refused_files": delivery.refused}
    # NHS-number subjects and a medicationReference resolved across the files, in every batch
    obs = {o["source_id"]: o for o in events["observations"].to_pylist()}
    assert obs["o2"]["patient_ref"] == "p2" and obs["o3"]["patient_ref"] is None
    meds = {m["source_id"]: m for m in events["medications"].to_pylist()}
    assert meds["ms1"]["code"] == "323509004"
    largest_bundle = 8  # rows one bundle of this delivery adds to a table, at most
    assert all(t.num_rows < batch_rows + largest_bundle for parts in batches.values() for t in parts)


def test_events_come_only_after_the_first_pass(tmp_path):
    _delivery(tmp_path)
    with pytest.raises(RuntimeError, match="before Delivery.people"):
        next(Delivery(tmp_path, "A81001").events(10))


def _resources(draw_events, meds_dissent: bool) -> list[dict]:
    out = [f.organization("A81001"), *f.practitioner("prac-1", "123456789012")]
    out += [f.patient(pid, nhs) for pid, nhs in PATIENTS]
    out.append({"resourceType": "Medication", "id": "med-a", "code": {"coding": [{"system": f.SNOMED,
                                                                                  "code": "323509004"}]}})
    out.append({"resourceType": "Medication", "id": "med-b", "code": {"coding": [{"system": f.SNOMED, "code": (
        f.DISSENT if meds_dissent else "322236009")}]}})
    for i, (kind, who, day) in enumerate(draw_events):
        pid, nhs = PATIENTS[who]
        date = f"2021-01-{day:02d}"
        if kind == "obs":
            out.append(f.observation(f"e{i}", pid, f.BMI, date, value=25.0, unit="kg/m2"))
        elif kind == "obs_by_nhs":
            out.append(dict(f.observation(f"e{i}", pid, f.BMI, date), subject={"identifier": {"system": NHS,
                                                                                              "value": nhs}}))
        elif kind in ("dissent", "withdrawn"):
            out.append(f.observation(f"e{i}", pid, f.DISSENT if kind == "dissent" else f.WITHDRAWN, date))
        elif kind == "condition_dissent":  # a date of its own (recordedDate) beside its onset
            out.append(dict(f.condition(f"e{i}", pid, f.DISSENT, date), recordedDate=f"2021-02-{day:02d}"))
        elif kind in ("med_a", "med_b"):
            out.append({"resourceType": "MedicationStatement", "id": f"e{i}", "status": "active",
                        "subject": {"reference": f"Patient/{pid}"}, "effectivePeriod": {"start": date},
                        "medicationReference": {"reference": f"Medication/{kind.replace('_', '-')}"}})
        else:
            out.append(f.appointment(f"e{i}", pid, f"{date}T09:00:00+00:00"))
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(st.tuples(st.sampled_from(["obs", "obs_by_nhs", "dissent", "withdrawn", "condition_dissent",
                                                  "med_a", "med_b", "appointment"]),
                                 st.integers(0, 2), st.integers(1, 28)), max_size=25),
       meds_dissent=st.booleans(), order=st.randoms(use_true_random=False), files=st.integers(1, 4),
       batch_rows=st.integers(1, 6))
def test_any_delivery_streams_to_its_whole_tables_and_every_type_1_code(tmp_path_factory, events, meds_dissent,
                                                                        order, files, batch_rows):
    """Any order of resources over any number of bundles: the batches make the whole read's tables, and the first
    pass finds every type 1 code the whole tables hold (a Medication coded as a dissent, named by reference from
    a statement in an earlier bundle, included), with the same dates."""
    folder = tmp_path_factory.mktemp("delivery")
    resources = _resources(events, meds_dissent)
    order.shuffle(resources)
    for k in range(files):
        f.write_bundle(folder, resources[k::files], f"bundle-{k:04d}.json")
    whole = read_bundles(folder, "A81001")
    people, streamed, _, delivery = _streamed(folder, batch_rows)
    for name, table in {**people, **streamed}.items():
        assert table.equals(whole[name]), name
    found = _evidence({TYPE1_EVIDENCE: people[TYPE1_EVIDENCE], **delivery.evidence_rows})
    expected = _evidence({name: whole[name] for name in (TYPE1_EVIDENCE, *EVENT_TABLES)})
    assert found.equals(expected)


def test_a_bundle_changed_between_the_passes_is_refused(tmp_path):
    _delivery(tmp_path)
    delivery = Delivery(tmp_path, "A81001")
    delivery.people()
    path = tmp_path / "bundle-0002.json"
    path.write_bytes(path.read_bytes().replace(b"p3", b"p9"))
    with pytest.raises(SourceError, match="file changed while the delivery was being read") as err:
        list(delivery.events(10))
    assert err.value.file == "bundle-0002.json" and "p9" not in str(err.value)


# ------------------------------------------------------------------------------------- through the pipeline
def _feed(home, resources, name="bundle-0001.json") -> Feed:
    f.write_bundle(home / "sources" / "A81001", resources, name)
    return Feed(ods_code="A81001", name="A81001", location=str(home / "sources" / "A81001"),
                max_quarantine_fraction=1)


def _staged(home, run_id: str) -> dict[str, pa.Table]:
    folder = pipeline.staging_dir(gp_settings.load(), run_id, "A81001") / "extracted"
    return {p.stem: pq.read_table(p) for p in sorted(folder.glob("*.parquet"))}


def test_a_dissent_behind_a_medication_reference_excludes_the_patient(home):
    """The attacker's view: a statement for p1 in the first bundle names by reference a Medication in the last,
    coded as a dissent (and itself dated and tied to p2, so the code in the Medication resource speaks for p2
    only). A whole read excluded p1 too: the statement's code is the Medication's. The first pass must find
    that before any of p1's rows is staged, though p1's statement holds no type 1 code of its own."""
    first = [f.organization("A81001"), *f.practitioner("prac-1", "123456789012"), f.patient("p1", f.VALID_NHS[0]),
             f.patient("p2", f.VALID_NHS[1]), f.patient("p3", f.VALID_NHS[2]),
             f.observation("o1", "p1", f.BMI, "2021-01-01", value=25.0, unit="kg/m2"),
             f.observation("o3", "p3", f.BMI, "2021-01-01", value=26.0, unit="kg/m2"),
             {"resourceType": "MedicationStatement", "id": "ms1", "status": "active",
              "subject": {"reference": "Patient/p1"}, "effectivePeriod": {"start": "2021-03-01"},
              "medicationReference": {"reference": "Medication/med-x"}}]
    _feed(home, first)
    feed = _feed(home, [{"resourceType": "Medication", "id": "med-x", "subject": {"reference": "Patient/p2"},
                         "effectiveDateTime": "2020-01-01",
                         "code": {"coding": [{"system": f.SNOMED, "code": f.DISSENT}]}}], "bundle-0002.json")
    whole = read_bundles(home / "sources" / "A81001", "A81001")
    assert whole["medications"].column("code").to_pylist() == [f.DISSENT]  # the whole read's evidence for p1
    counts = pipeline.extract(feed, gp_settings.load(), "r1")
    assert counts["type1_optout"]["patients_excluded"] == 2  # p1 and p2
    staged = _staged(home, "r1")
    assert staged["patients"].num_rows == 1 and staged["observations"].num_rows == 1  # p3's
    assert staged["medications"].num_rows == 0


def test_a_bundle_replaced_while_the_delivery_is_read_stages_nothing(home, monkeypatch):
    """A dissent and new records for a patient written over a bundle after the first pass read it without them:
    read on, the second pass would stage that patient's records. The delivery is refused and quarantined."""
    feed = _feed(home, practice_resources())
    bundle = home / "sources" / "A81001" / "bundle-0001.json"
    people = Delivery.people

    def then_replaced(self):
        tables = people(self)
        f.write_bundle(bundle.parent, [*practice_resources(), f.observation("late", "p1", f.DISSENT, "2023-01-01"),
                                       f.observation("o9", "p1", f.HYPERTENSION, "2023-01-02")], bundle.name)
        return tables

    monkeypatch.setattr(Delivery, "people", then_replaced)
    with pytest.raises(SourceError, match="file changed while the delivery was being read"):
        pipeline.extract(feed, gp_settings.load(), "r1")
    assert not bundle.exists() and list((home / "sources" / "A81001").iterdir()) == []  # moved to quarantine
    assert not (pipeline.staging_dir(gp_settings.load(), "r1", "A81001") / "extracted").exists()


def test_the_staged_tables_do_not_depend_on_the_batch_size(tmp_path, monkeypatch):
    """The same delivery extracted in batches of 2 rows and of the default size (two homes, one key): the same
    staged rows, in the same order, and the same counts."""
    out = {}
    for rows in ("2", ""):
        home = tmp_path / f"home-{rows or 'default'}"
        use_home(monkeypatch, home)
        f.write_lookup(home / "reference" / "postcode_lsoa.csv", [("LS1 4AB", "E01000001"), ("LS2 9XY", "E01000002")])
        monkeypatch.setenv("GPDATA_BATCH_ROWS", rows)
        _feed(home, practice_resources()[:9], "bundle-0001.json")
        feed = _feed(home, practice_resources()[9:], "bundle-0002.json")
        counts = pipeline.extract(feed, gp_settings.load(), "r1")
        out[rows] = (_staged(home, "r1"), {k: v for k, v in counts.items() if k not in ("seconds", "source")})
    (small, small_counts), (default, default_counts) = out["2"], out[""]
    assert small_counts == default_counts and small.keys() == default.keys()
    for name, table in default.items():
        assert small[name].equals(table), name
    assert pc.sum(pc.equal(default["observations"]["code"], f.DISSENT)).as_py() in (0, None)
