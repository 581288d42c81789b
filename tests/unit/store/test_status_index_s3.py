"""The status index on an S3 store (moto): kept at commit time, read in one GET plus a listing, and a row lost
from index.parquet by two racing writers (S3 has no lock) is still found from its own object."""

from __future__ import annotations

from gpdata import storage, store
from gpdata.store import statusindex
from tests.unit.store.test_store_s3 import endpoint, s3_env  # noqa: F401 - the moto fixtures


def test_the_index_on_s3_is_kept_at_commit_time_and_repairs_a_lost_row(s3_env):  # noqa: F811
    manifests = storage.root(s3_env["uri"]) / "_manifests"
    for ods, n in (("A81001", 10), ("B82002", 20)):
        store.write_manifest(manifests, ods, "r1", {"practice": ods, "run_id": "r1", "status": "committed",
                                                    "finished_at": "2026-11-23T10:00:00+00:00", "patients_read": n,
                                                    "committed_rows": {"patients": n}})
    rows = statusindex.read_index(manifests, fresh=True)
    assert {o: r["patients_read"] for o, r in rows.items()} == {"A81001": 10, "B82002": 20}
    # A writer that read the index before B82002's update rewrites it without B82002's row.
    table = statusindex._read_index_table(manifests)
    statusindex._write_index_rows(manifests, {r["practice"]: r for r in table.to_pylist() if r["practice"] == "A81001"})
    assert sorted(r["practice"] for r in statusindex._read_index_table(manifests).to_pylist()) == ["A81001"]
    rows = statusindex.read_index(manifests, fresh=True)
    assert rows["B82002"]["patients_read"] == 20
    # The rebuild makes the index whole again from the manifests.
    assert statusindex.rebuild(manifests) == 2
    assert sorted(r["practice"] for r in statusindex._read_index_table(manifests).to_pylist()) == ["A81001", "B82002"]
