"""The curated store on an S3 API: a local endpoint (moto's server mode) started by the test.

Round trip of tables, manifests, journal and releases through an s3:// root, and concurrent writers: several
processes committing different practices to the same tables at once all land (delta-rs commits with
conditional writes; a lost commit would show as a missing practice or a missing table version)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pyarrow as pa
import pytest

from gpdata import settings, storage, store
from gpdata.errors import GpdataError
from gpdata.model import CURATED, QUARANTINE_SCHEMA, TABLES
from gpdata.store import release
from tests.support.s3 import create_bucket, moto_server

BUCKET = "gpdata-test"


@pytest.fixture(scope="module")
def endpoint():
    with moto_server() as url:
        yield url


@pytest.fixture
def s3_env(endpoint, monkeypatch, request, home):
    env = {"AWS_ACCESS_KEY_ID": "gpdata-test-key", "AWS_SECRET_ACCESS_KEY": "gpdata-test-secret",
           "AWS_ENDPOINT_URL": endpoint, "AWS_REGION": "eu-west-2"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    bucket = f"{BUCKET}-{abs(hash(request.node.name)) % 10**8}"
    client = create_bucket(endpoint, bucket, env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
    env["uri"] = f"s3://{bucket}/store"
    env["client"] = client
    env["bucket"] = bucket
    return env


def _batch(practice: str, n: int) -> dict[str, pa.Table]:
    tables = {t: CURATED[t].empty_table() for t in TABLES}
    tables["practitioners"] = pa.table({
        "practice_code": [practice] * n, "key_version": ["v1"] * n,
        "practitioner_pid": [f"{practice}{i:058d}" for i in range(n)],
        "role_code": ["R0260"] * n, "role_name": ["GP"] * n}, schema=CURATED["practitioners"])
    return tables


def _keys(env) -> list[str]:
    return [o["Key"] for o in env["client"].list_objects_v2(Bucket=env["bucket"]).get("Contents", [])]


def test_the_endpoint_refuses_a_second_create_of_the_same_object(s3_env):
    """What delta-rs relies on for safe concurrent commits: put-if-absent (If-None-Match: *)."""
    client = s3_env["client"]
    client.put_object(Bucket=s3_env["bucket"], Key="probe", Body=b"1", IfNoneMatch="*")
    with pytest.raises(client.exceptions.ClientError, match="PreconditionFailed|412"):
        client.put_object(Bucket=s3_env["bucket"], Key="probe", Body=b"2", IfNoneMatch="*")


def test_settings_take_an_s3_store_and_keep_gx_files_local(s3_env, tmp_path):
    cfg = settings.load({"GPDATA_HOME": str(tmp_path), "GPDATA_STORE": s3_env["uri"], **{
        k: v for k, v in s3_env.items() if k.startswith("AWS_")}})
    assert isinstance(cfg.store, storage.StorePath) and str(cfg.store) == s3_env["uri"]
    assert str(cfg.manifests) == s3_env["uri"] + "/_manifests"
    assert cfg.state == tmp_path / "state"  # the delivery ledger holds opt-out pseudonyms: never in the store
    assert cfg.quality == tmp_path / "quality" and cfg.data_docs == tmp_path / "docs" / "quality"
    assert storage.delta_options(cfg.store / "patients") == {
        "conditional_put": "etag", "AWS_ACCESS_KEY_ID": "gpdata-test-key",
        "AWS_SECRET_ACCESS_KEY": "gpdata-test-secret", "AWS_ENDPOINT_URL": s3_env["AWS_ENDPOINT_URL"],
        "AWS_REGION": "eu-west-2", "AWS_ALLOW_HTTP": "true"}
    with pytest.raises(GpdataError, match="only local folders and s3://"):
        storage.root("gs://bucket/store")


def test_tables_manifests_journal_and_releases_round_trip_through_s3(s3_env):
    root = storage.root(s3_env["uri"])
    created = store.ensure_tables(root)
    assert sorted(created) == sorted([*TABLES, store.QUARANTINE])
    versions = store.commit_practice(root, "A81001", _batch("A81001", 3), QUARANTINE_SCHEMA.empty_table(), "v1")
    store.commit_practice(s3_env["uri"], "B82002", _batch("B82002", 5), QUARANTINE_SCHEMA.empty_table(), "v1")
    assert versions["practitioners"] == 1
    assert store.row_counts(root, "A81001")["practitioners"] == 3
    assert store.read_table(s3_env["uri"], "practitioners").num_rows == 8
    assert store.unfinished_commits(root) == []  # the journal was written and removed on S3
    keys = _keys(s3_env)
    assert any(k.startswith("store/practitioners/_delta_log/") for k in keys)
    assert any(k.startswith("store/practitioners/practice_code=B82002/") and k.endswith(".parquet") for k in keys)

    manifests = root / "_manifests"
    for practice in ("A81001", "B82002"):
        store.write_manifest(manifests, practice, "manual__2026-01-01T00:00:00", {"status": "committed",
                                                                                  "practice": practice})
    assert sorted(store.latest_manifests(manifests)) == ["A81001", "B82002"]
    assert store.last_committed(manifests, "A81001")["practice"] == "A81001"
    assert store.read_json(root / "_state" / "A81001" / "none.json") is None
    store.write_json_atomic(root / "_state" / "A81001" / "ledger.json", {"files": {"a": 1}})
    assert store.read_json(str(root / "_state" / "A81001" / "ledger.json")) == {"files": {"a": 1}}

    made = release.create_release(root, note="s3")
    assert made["tables"]["practitioners"]["rows"] == 8
    assert release.list_releases(root)[0]["release_id"] == made["release_id"]
    assert f"store/_releases/{made['release_id']}/data_dictionary.md" in _keys(s3_env)
    store.commit_practice(root, "A81001", _batch("A81001", 1), QUARANTINE_SCHEMA.empty_table(), "v1")
    assert release.read_release_table(root, made["release_id"], "practitioners").num_rows == 8  # pinned
    assert store.read_table(root, "practitioners").num_rows == 6


@pytest.mark.parametrize("file_bytes", [1, None])
def test_a_partition_written_on_s3_has_the_statistics_and_a_failure_leaves_no_object(s3_env, monkeypatch,
                                                                                    file_bytes):
    """The commit writes its data files itself (storage.overwrite_partition): on S3 through pyarrow's filesystem,
    with the statistics key_versions reads; a write that fails midway commits nothing and deletes what it wrote
    (files complete before the failure, or one still being written)."""
    monkeypatch.setenv("GPDATA_BATCH_ROWS", "2")
    monkeypatch.setattr(storage, "TARGET_FILE_BYTES", 1)  # a file per row group
    root = storage.root(s3_env["uri"])
    store.ensure_tables(root)
    store.replace_partition(root, "practitioners", "A81001", _batch("A81001", 5)["practitioners"])
    files = pa.table(storage.delta_table(store.table_path(root, "practitioners")).get_add_actions(flatten=True))
    assert files["num_records"].to_pylist() == [2, 2, 1] and store.key_versions(root, "practitioners") == {"v1"}
    assert files["min.practitioner_pid"].to_pylist() == [f"A81001{i:058d}" for i in (0, 2, 4)]
    keys, version = _keys(s3_env), storage.delta_table(store.table_path(root, "practitioners")).version()
    rows = _batch("A81001", 7)["practitioners"]
    if file_bytes is None:  # one file, open when the reader fails
        monkeypatch.setattr(storage, "TARGET_FILE_BYTES", 100 << 20)

    def open_():
        def batches():
            yield from rows.to_batches(max_chunksize=2)[:3]
            raise OSError("staged file lost")
        return pa.RecordBatchReader.from_batches(rows.schema, batches())

    with pytest.raises(OSError, match="staged file lost"):
        store.replace_partition(root, "practitioners", "A81001", store.Batches(open_, frozenset({"v1"})))
    assert _keys(s3_env) == keys
    assert storage.delta_table(store.table_path(root, "practitioners")).version() == version
    assert store.read_table(root, "practitioners").num_rows == 5


WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_store_s3 import _batch
    from gpdata import store
    from gpdata.model import QUARANTINE_SCHEMA
    store.commit_practice({uri!r}, {practice!r}, _batch({practice!r}, {n}), QUARANTINE_SCHEMA.empty_table(), "v1")
""")


def test_concurrent_writers_on_s3_all_land(s3_env):
    root = storage.root(s3_env["uri"])
    store.ensure_tables(root)
    practices = ["A81001", "B82002", "C83003", "D84004", "E85005"]
    env = {**os.environ, **{k: v for k, v in s3_env.items() if k.startswith("AWS_")}}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER.format(tests=os.path.dirname(__file__),
                                                                  uri=s3_env["uri"], practice=p, n=10 + i)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, p in enumerate(practices)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert [rc for rc, _ in results] == [0] * len(practices), [err[-2000:] for _, err in results]
    counts = {p: store.read_table(root, "practitioners", p).num_rows for p in practices}
    assert counts == {p: 10 + i for i, p in enumerate(practices)}
    # One commit per writer per table, none overwritten: version 0 (creation) plus one per practice.
    for name in [*TABLES, store.QUARANTINE]:
        assert storage.delta_table(store.table_path(root, name)).version() == len(practices), name


def test_opt_out_list_audit_log_and_erasure_work_on_s3(s3_env, tmp_path):
    import datetime as dt

    from gpdata import audit
    from gpdata.privacy import ndop
    from gpdata.privacy.keys import load_master_key
    from gpdata.store import erasure

    root = storage.root(s3_env["uri"])
    store.ensure_tables(root)
    listing = tmp_path / "ndop.csv"
    listing.write_text("nhs_number\n9990000018\n999 000 0026\n123\n")
    key = load_master_key({"GPDATA_MASTER_KEY": "5a" * 32})
    meta = ndop.ingest(listing, root, key, published=dt.date(2026, 1, 1), today=dt.date(2026, 1, 1),
                       rules=ndop.Policy(max_invalid_fraction=0.5))  # one invalid row of three, dropped
    assert meta["patients"] == 2 and not listing.exists()
    pids, loaded = ndop.load(root, dt.date(2026, 1, 10))
    assert len(pids) == 2 and loaded == meta
    audit.append(root, "extract", project="P1")
    audit.append(root, "refusal", project="P2")
    assert audit.verify(root) == 3 and [e["event"] for e in audit.entries(root)] == ["ndop_ingested", "extract",
                                                                                      "refusal"]
    result = erasure.erase(root, pids)
    assert result["patients"] == 2 and len(erasure.pending(root)) == 0
    assert audit.verify(root) == 4 and audit.entries(root)[-1]["event"] == "erasure"
    assert any(k == "store/_erasures/log.jsonl" for k in _keys(s3_env))


AUDIT_WRITER = textwrap.dedent("""
    from gpdata import audit, storage
    root = storage.root({uri!r})
    for i in range({n}):
        audit.append(root, "extract", writer={w}, i=i)
""")


def test_concurrent_audit_appends_on_s3_take_distinct_sequence_numbers(s3_env):
    """Each entry is its own object, written put-if-absent: racing writers never share a sequence number."""
    from gpdata import audit

    root = storage.root(s3_env["uri"])
    env = {**os.environ, **{k: v for k, v in s3_env.items() if k.startswith("AWS_")}}
    procs = [subprocess.Popen([sys.executable, "-c", AUDIT_WRITER.format(uri=s3_env["uri"], n=15, w=w)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in range(3)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert [rc for rc, _ in results] == [0, 0, 0], [err[-2000:] for _, err in results]
    assert audit.verify(root) == 45
    assert sorted((e["writer"], e["i"]) for e in audit.entries(root)) == [(w, i) for w in range(3) for i in range(15)]


def test_the_leak_scanner_reads_a_store_on_s3(s3_env, tmp_path):
    """`gpdata scan` covers the store wherever it lives: a clean S3 store passes, and an identifier planted
    in a Parquet object or a JSON object on S3 is found and named by its s3:// path."""
    import pyarrow.parquet as pq

    from gpdata.ops.leakscan import collect_identifiers, scan_tree
    from tests import factory as f
    from tests.conftest import practice_resources

    f.write_bundle(tmp_path / "sources" / "A81001", practice_resources())
    ids = collect_identifiers(tmp_path / "sources")
    root = storage.root(s3_env["uri"])
    store.ensure_tables(root)
    store.commit_practice(root, "A81001", _batch("A81001", 3), QUARANTINE_SCHEMA.empty_table(), "v1")
    store.write_manifest(root / "_manifests", "A81001", "manual__2026-01-01T00:00:00", {"status": "committed"})
    assert scan_tree([s3_env["uri"]], ids) == []

    client, bucket = s3_env["client"], s3_env["bucket"]
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"note": ["seen 999 000 0018 today"]}), sink)
    client.put_object(Bucket=bucket, Key="store/stray/leak.parquet", Body=sink.getvalue().to_pybytes())
    client.put_object(Bucket=bucket, Key="store/_manifests/A81001/stray.json", Body=b'{"who": "Morwenna Quinlan"}')
    found = sorted((str(x).split(": ")[0], x.kind) for x in scan_tree([root], ids))
    assert found == [(f"{s3_env['uri']}/_manifests/A81001/stray.json", "name"),
                     (f"{s3_env['uri']}/stray/leak.parquet", "nhs_number")]


def test_a_cached_handle_on_s3_sees_another_writer_and_a_table_made_again(s3_env):
    """gpdata.storage keeps Delta handles per process: on S3 too every read sees the newest commit."""
    from deltalake import write_deltalake

    path = storage.root(s3_env["uri"]) / "t"

    def values(table):
        return sorted(table.to_pyarrow_table()["v"].to_pylist())

    storage.write_delta(path, pa.table({"v": ["a"]}))
    first = storage.delta_table(path)
    write_deltalake(str(path), pa.table({"v": ["b"]}), mode="append", storage_options=storage.delta_options(path))
    assert storage.delta_table(path) is first and first.version() == 1 and values(first) == ["a", "b"]
    assert values(storage.delta_table(path, version=0)) == ["a"] and values(first) == ["a", "b"]
    client = s3_env["client"]
    for key in _keys(s3_env):
        if key.startswith("store/t/"):
            client.delete_object(Bucket=s3_env["bucket"], Key=key)
    for value in ("x", "y"):  # made again, up to the same version
        write_deltalake(str(path), pa.table({"v": [value]}), mode="append",
                        storage_options=storage.delta_options(path))
    again = storage.delta_table(path)
    assert again.version() == 1 and values(again) == ["x", "y"]
