"""The commit stage streams each validated table into the store a batch at a time (issue 21): the store it leaves
is the one a single batch leaves, a dissent recorded since extraction drops the patient's rows in any batch, and
the commit's counts come from the batches."""

import datetime as dt
import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gpdata import pipeline, settings, store
from gpdata.arrowutil import BATCH_ROWS_ENV
from gpdata.ingest.feeds import Feed
from gpdata.ingest.sources.flatfile import write_delivery
from gpdata.model import CANONICAL, TABLES
from gpdata.privacy import keys
from gpdata.privacy.deid import Pseudonymiser
from tests import factory as f
from tests.test_helpers import emis_incremental_practice

TODAY = dt.date(2026, 6, 1)

X_NHS, Y_NHS, Z_NHS = "9990000018", "9990000026", "9990000034"


def _feed(home, ods, resources, name="bundle-0001.json"):
    f.write_bundle(home / "sources" / ods, resources, name=name)
    return Feed(ods_code=ods, name=ods, location=str(home / "sources" / ods), max_quarantine_fraction=1)


def _store_state(cfg) -> dict:
    return {name: store.read_table(cfg.store, name).sort_by([(c, "ascending") for c in ("practice_code",
                                                                                        store.KEYS[name])])
            for name in TABLES}


def _table_paths(cfg) -> dict:
    return {name: store.table_path(cfg.store, name) for name in [*TABLES, store.QUARANTINE]}


def _commit_in_batches_of(rows, feed, cfg, run_id, monkeypatch) -> tuple[dict, dict, dict]:
    """The store, the Delta versions each table gained and the counts of a commit at GPDATA_BATCH_ROWS=rows."""
    from gpdata import storage

    if rows:
        monkeypatch.setenv(BATCH_ROWS_ENV, str(rows))
    else:
        monkeypatch.delenv(BATCH_ROWS_ENV, raising=False)
    store.ensure_tables(cfg.store)
    before = {n: storage.delta_table(p).version() for n, p in _table_paths(cfg).items()}
    counts = pipeline.commit(feed, cfg, run_id)
    gained = {n: storage.delta_table(p).version() - before[n] for n, p in _table_paths(cfg).items()}
    monkeypatch.delenv(BATCH_ROWS_ENV, raising=False)
    return _store_state(cfg), gained, counts


def _same_in_500s_and_whole(feed, cfg, run_id, monkeypatch, tmp_path) -> dict:
    """Commit a staged run in batches of 500 rows, then the same staged run in one batch: same store, same
    versions gained per table, same counts. Returns the counts."""
    staged = pipeline.staging_dir(cfg, run_id, feed.ods_code)
    saved = tmp_path / f"saved-{run_id}"
    shutil.copytree(staged, saved)
    small = _commit_in_batches_of(500, feed, cfg, run_id, monkeypatch)
    shutil.copytree(saved, staged)  # the commit removed it: the same validated batch again
    whole = _commit_in_batches_of(None, feed, cfg, run_id, monkeypatch)
    assert small[0].keys() == whole[0].keys()
    for name in TABLES:
        assert small[0][name].equals(whole[0][name]), name
    assert small[1] == whole[1]
    for key in ("committed_rows", "type1_optout", "staged_rows"):
        assert small[2][key] == whole[2][key], key
    return whole[2]


def test_a_commit_in_batches_leaves_the_store_a_single_batch_leaves(home, monkeypatch, tmp_path):
    canonical, feed, dialect = emis_incremental_practice(home, n_patients=60, events_per_patient=30, seed=5)
    ods, out = feed.ods_code, home / "inbox" / feed.ods_code
    cfg = settings.load()
    pipeline.extract(feed, cfg, "base", force=True)
    pipeline.check(feed, cfg, "base", today=TODAY)
    counts = _same_in_500s_and_whole(feed, cfg, "base", monkeypatch, tmp_path)
    assert counts["committed_rows"]["observations"] > 1000  # three batches of 500 or more
    # An incremental delivery: 200 records amended, 700 new and 50 deleted; merged in batches of 500 and whole alike.
    obs = canonical["observations"]
    amended = obs.slice(0, 200).set_column(obs.schema.get_field_index("value"), "value",
                                           pc.add(obs["value"].slice(0, 200), 0.5))
    new = obs.slice(200, 700).set_column(obs.schema.get_field_index("source_id"), "source_id",
                                         pc.binary_join_element_wise("new-", obs["source_id"].slice(200, 700), ""))
    nothing = {n: CANONICAL[n].empty_table() for n in TABLES}
    write_delivery({**nothing, "observations": pa.concat_tables([amended, new])}, out, ods, dialect,
                   "20260102020000", deleted={**nothing, "observations": obs.slice(1000, 50)})
    pipeline.extract(feed, cfg, "delta")
    pipeline.check(feed, cfg, "delta", today=TODAY)
    counts = _same_in_500s_and_whole(feed, cfg, "delta", monkeypatch, tmp_path)
    assert counts["committed_rows"]["observations"] > 500 and counts["deleted_keys"]["observations"] > 0


def _pid(nhs=X_NHS):
    return Pseudonymiser(keys.load_master_key())(pa.array([nhs]), "nhs_number")[0].as_py()


def test_a_dissent_recorded_since_extraction_drops_rows_in_any_batch(home, monkeypatch):
    cfg = settings.load()
    # X is the second patient and has the last observations: with one row a batch, never in the first batch.
    b = _feed(home, "B82002", [f.organization("B82002"), *f.practitioner("prac-1", "123456789013"),
                               f.patient("q2", Z_NHS), f.patient("q9", X_NHS),
                               *[f.observation(f"z-{i}", "q2", f.BMI, "2021-01-01", value=28.0, unit="kg/m2")
                                 for i in range(3)],
                               *[f.observation(f"x-{i}", "q9", f.BMI, "2021-01-01", value=24.0, unit="kg/m2")
                                 for i in range(2)]])
    pipeline.extract(b, cfg, "slow")
    pipeline.check(b, cfg, "slow")  # validated before A's dissent is known
    validated = pipeline.staging_dir(cfg, "slow", "B82002") / "validated"
    for name in ("patients", "observations"):
        first = next(pq.ParquetFile(validated / f"{name}.parquet").iter_batches(1))
        assert _pid() not in first["patient_pid"].to_pylist(), name  # X's rows come in later batches
    a = _feed(home, "A81001", [f.organization("A81001"), *f.practitioner("prac-1", "123456789012"),
                               f.patient("p1", X_NHS), f.observation("a-dissent", "p1", f.DISSENT, "2022-01-01")])
    pipeline.run_practice(a, cfg, "r1")
    monkeypatch.setenv(BATCH_ROWS_ENV, "1")
    counts = pipeline.commit(b, cfg, "slow")
    assert counts["type1_optout"]["excluded_at_commit"] == {"patients": 1, "observations": 2}
    assert counts["committed_rows"]["patients"] == 1 and counts["committed_rows"]["observations"] == 3
    for name in ("patients", "observations"):
        assert _pid() not in store.read_table(cfg.store, name)["patient_pid"].to_pylist(), name
    assert _pid(Z_NHS) in store.read_table(cfg.store, "patients", "B82002")["patient_pid"].to_pylist()


def _written_by_write_deltalake(store_root, name, practice, table):
    """``store.replace_partition`` as it was before the commit wrote its own data files: ``write_deltalake`` from
    a reader, overwrite with a predicate on the practice (the reference the store must still equal)."""
    from deltalake import WriterProperties

    from gpdata import arrowutil, storage
    from gpdata.store import tables

    path = tables.table_path(store_root, name)
    storage.write_delta(path, tables._stream(table, tables._schemas()[name]), mode="overwrite",
                        predicate=tables._predicate(practice), partition_by=["practice_code"],
                        writer_properties=WriterProperties(max_row_group_size=arrowutil.batch_rows()))
    return storage.delta_table(path).version()


def _files(cfg) -> dict:
    """Each table's schema, partitioning and file statistics (without names, sizes and times)."""
    from gpdata import storage

    out = {}
    for name, path in _table_paths(cfg).items():
        table = storage.delta_table(path)
        stats = pa.table(table.get_add_actions(flatten=True)).drop_columns(["path", "size_bytes", "modification_time"])
        out[name] = (table.schema(), table.metadata().partition_columns, stats.to_pylist())
    return out


def test_the_store_a_commit_leaves_is_the_one_write_deltalake_left(home, monkeypatch, tmp_path):
    from gpdata.store import tables

    canonical, feed, dialect = emis_incremental_practice(home, n_patients=60, events_per_patient=30, seed=5)
    cfg = settings.load()
    pipeline.extract(feed, cfg, "base", force=True)
    pipeline.check(feed, cfg, "base", today=TODAY)
    staged, saved = pipeline.staging_dir(cfg, "base", feed.ods_code), tmp_path / "saved"
    shutil.copytree(staged, saved)
    real = tables.replace_partition
    monkeypatch.setattr(tables, "replace_partition", _written_by_write_deltalake)
    old_state, old_gained, old_counts = _commit_in_batches_of(500, feed, cfg, "base", monkeypatch)
    old_files = _files(cfg)
    old_quarantine = store.read_table(cfg.store, store.QUARANTINE).sort_by("source_entry")
    old_versions = {name: store.key_versions(cfg.store, name) for name in TABLES}
    monkeypatch.setattr(tables, "replace_partition", real)
    shutil.copytree(saved, staged)
    new_state, new_gained, new_counts = _commit_in_batches_of(500, feed, cfg, "base", monkeypatch)
    assert old_counts["committed_rows"]["observations"] > 1000  # three batches of 500 or more
    for name in TABLES:
        assert new_state[name].equals(old_state[name]), name
    assert store.read_table(cfg.store, store.QUARANTINE).sort_by("source_entry").equals(old_quarantine)
    assert new_gained == old_gained == {name: 1 for name in _table_paths(cfg)}  # one commit per table
    for key in ("committed_rows", "type1_optout", "staged_rows"):
        assert new_counts[key] == old_counts[key], key
    new_files = _files(cfg)
    for name in old_files:  # the old files were removed: one file per table and practice, each way
        assert new_files[name] == old_files[name], name
    assert {name: store.key_versions(cfg.store, name) for name in TABLES} == old_versions


def _staged_like(path, groups: int, rows: int = 20_000) -> None:
    import random

    rng = random.Random(groups)
    with pq.ParquetWriter(path, pa.schema([("patient_pid", pa.string()), ("key_version", pa.string()),
                                           ("value", pa.float64())]), compression="zstd") as writer:
        for _ in range(groups):
            writer.write_table(pa.table({"patient_pid": [f"{rng.getrandbits(256):064x}" for _ in range(rows)],
                                         "key_version": ["v1"] * rows, "value": [rng.random() for _ in range(rows)]}))


def test_the_commit_reads_a_staged_file_a_row_group_at_a_time(tmp_path, monkeypatch):
    """One iter_batches over a whole file held more of what it had read the further it went (Arrow's allocations
    peaked at 9 MiB over 4 row groups and 46 MiB over 48); a reader per row group holds one."""
    monkeypatch.setenv(BATCH_ROWS_ENV, "16384")
    peaks, sizes_of = {}, {}
    for groups in (4, 48):
        path = tmp_path / f"staged-{groups}.parquet"
        _staged_like(path, groups)
        peak, sizes = 0, []
        for batch in pipeline._batches_by_row_group(pq.ParquetFile(path)):
            peak = max(peak, pa.total_allocated_bytes())
            sizes.append(batch.num_rows)
        peaks[groups], sizes_of[groups] = peak, sizes
    assert peaks[48] < peaks[4] + (2 << 20), peaks
    for groups, sizes in sizes_of.items():  # every row, batch_rows() at most, never across two row groups
        assert sizes == [16384, 3616] * groups
    first = next(pipeline._batches_by_row_group(pq.ParquetFile(path), ["key_version"]))
    assert first.schema.names == ["key_version"] and first.num_rows == 16384
