"""Store: the curated Delta tables (atomic, idempotent commits per practice, run manifests), releases, erasure of
late opt-outs from tables, history and releases, key rotation of the store, and the data dictionary.
"""

from gpdata.store.tables import (
    KEYS,
    ODS_RE,
    QUARANTINE,
    Batches,
    Increment,
    commit_increments,
    commit_practice,
    ensure_tables,
    journal_path,
    key_versions,
    last_committed,
    latest_manifests,
    merge_practice,
    practice_lock,
    read_json,
    read_table,
    replace_partition,
    replace_table,
    row_counts,
    safe_name,
    table_path,
    unfinished_commits,
    write_json_atomic,
    write_manifest,
)

__all__ = ["KEYS", "ODS_RE", "QUARANTINE", "Batches", "Increment", "commit_increments", "commit_practice",
           "ensure_tables", "journal_path", "key_versions", "last_committed", "latest_manifests", "merge_practice",
           "practice_lock", "read_json", "read_table", "replace_partition", "replace_table", "row_counts",
           "safe_name", "table_path", "unfinished_commits", "write_json_atomic", "write_manifest"]
