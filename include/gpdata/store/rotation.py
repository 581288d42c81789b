"""Key rotation, one complete procedure: every pseudonym the project keeps moves to the new key version.

`gpdata keys rotate` writes a journal (``<store>/_keys/rotation.json``) first; while it exists, extraction,
commit, releases, NDOP ingest and dissemination refuse to run, so two key versions are never in use. Then:

1. every readable release is *retired* (its pinned files hold the old pseudonyms and are about to be
   vacuumed), with an audit entry;
2. every curated table is rewritten so each pseudonym column holds HMAC(new field key, old pseudonym), in one
   Delta commit per table (never a mix of versions), and the old files are vacuumed;
3. the National Data Opt-out list, the store-wide type 1 register and every practice's ledger (patient and
   practitioner maps) are re-keyed the same way, so nothing needs re-extracting and no opt-out is lost;
4. the journal is removed, a fresh release is made at the new version and each retired release names it.

Every step leaves what is already at the new version alone, so an interrupted rotation is finished by running
the command again (it resumes from the journal rather than adding another version). Project pseudonyms are
HMACs of the curated pseudonyms, so they change too: the audit entry says so and projects are told.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from gpdata import audit, storage, store
from gpdata.errors import GpdataError
from gpdata.ingest import ledger
from gpdata.model import CURATED, PSEUDONYM_FIELDS, TABLES
from gpdata.privacy import keys, ndop, type1
from gpdata.privacy.deid import Pseudonymiser
from gpdata.privacy.keys import MasterKey
from gpdata.store import release

log = logging.getLogger("gpdata.store.rotation")


def rekey_table(table: pa.Table, pseudo: Pseudonymiser, from_version: str) -> pa.Table:
    for column, field in PSEUDONYM_FIELDS.items():
        if column in table.column_names:
            index = table.schema.get_field_index(column)
            table = table.set_column(index, table.schema.field(index),
                                     pseudo(table[column], field, after=from_version))
    index = table.schema.get_field_index("key_version")
    return table.set_column(index, table.schema.field(index),
                            pa.array([pseudo.version] * table.num_rows, pa.string()))


def rotate_store(store_root: Path, master: MasterKey) -> dict[str, str]:
    """Bring every curated table to the key ring's current version. Returns what was done per table."""
    pseudo = Pseudonymiser(master)
    done = {}
    for name in TABLES:
        table = store.read_table(store_root, name)
        versions = set(pc.unique(table["key_version"]).to_pylist()) - {None}
        if len(versions) > 1:
            raise GpdataError(f"table {name} mixes key versions {sorted(versions)}; restore it before rotating")
        current = versions.pop() if versions else master.version
        if current == master.version:
            done[name] = f"already {master.version}"
            continue
        if current not in master.versions:
            raise GpdataError(f"table {name} is at key version {current}, which the key ring does not hold")
        new_version = store.replace_table(store_root, name, rekey_table(table, pseudo, current)
                                          .cast(CURATED[name]))
        done[name] = f"{current} -> {master.version} ({table.num_rows} rows, table version {new_version})"
        log.info("table %s re-keyed %s", name, done[name])
    return done


def rekey_ledgers(state_dir: Path, key: MasterKey) -> dict[str, str]:
    """Every practice's ledger maps (pseudonyms of record ids, patients, practitioners) to the current version."""
    pseudo, done = Pseudonymiser(key), {}
    state_dir = Path(state_dir)
    for folder in sorted(p for p in state_dir.iterdir() if p.is_dir()) if state_dir.is_dir() else ():
        if not (folder / "ledger.json").exists():
            continue
        state = ledger.PracticeState.load(state_dir, folder.name)
        old = state.key_version
        if old is None or old == key.version:
            continue
        if old not in key.versions:
            raise GpdataError(f"the ledger of practice {folder.name} is at key version {old}, which the key ring "
                              "does not hold")
        key.verify({v: c for v, c in state.key_checks.items() if v == old}, f"the ledger of practice {folder.name}")
        pmap, prac = state.patient_map(), state.practitioner_map()
        pmap = pmap.set_column(0, "ref_pid", pseudo(pmap["ref_pid"], "record_id", after=old)) \
            .set_column(1, "patient_pid", pseudo(pmap["patient_pid"], "nhs_number", after=old))
        prac = prac.set_column(0, "ref_pid", pseudo(prac["ref_pid"], "record_id", after=old)) \
            .set_column(1, "practitioner_pid", pseudo(prac["practitioner_pid"], "practitioner", after=old))
        ledger._write_parquet(folder / "patients.parquet", pmap.cast(ledger.PATIENT_MAP))
        ledger._write_parquet(folder / "practitioners.parquet", prac.cast(ledger.PRACTITIONER_MAP))
        state.key_version, state.key_checks = key.version, key.checks()
        state.write(last_run=(storage.read_json(folder / "ledger.json") or {}).get("last_run"))
        done[folder.name] = f"{old} -> {key.version}"
    return done


def rotate(cfg, load_key: Callable[[], MasterKey], add_version: Callable[[], str] | None = None) -> dict:
    """Run (or resume) a whole rotation. ``load_key`` reads the key ring; ``add_version`` appends a new version
    to it (None when the ring was extended by hand, e.g. keys in the environment)."""
    root = cfg.store
    path = keys.rotation_journal(root)
    journal = storage.read_json(path)
    if journal is None:
        before = load_key()
        keys.verify_store(root, before)
        journal = {"from": keys.store_version(root) or before.version, "to": None,
                   "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "done": {}}
        storage.write_json_atomic(path, journal)
    if journal["to"] is None:
        key = load_key()
        if key.version == journal["from"] and add_version is not None:
            add_version()
            key = load_key()
        if key.version == journal["from"]:
            raise GpdataError(f"the key ring has no version newer than the store's ({journal['from']}): add one "
                              "(a key file with --key-file, or v1:<hex>,v2:<hex> in the environment)")
        journal["to"] = key.version
        storage.write_json_atomic(path, journal)
    key = load_key()
    if key.version != journal["to"]:
        raise GpdataError(f"a rotation to {journal['to']} is under way but the key ring's current version is "
                          f"{key.version}: load the ring the rotation started with")
    keys.verify_store(root, key, during_rotation=True)
    keys.record_store(root, key)
    reason = f"key rotation {journal['from']} -> {journal['to']}"
    steps: dict[str, object] = {}
    steps["releases_retired"] = [release.retire(root, r["release_id"], reason)["release_id"]
                                 for r in release.list_releases(root, readable_only=True)
                                 if r.get("key_version", journal["from"]) != key.version]
    steps["tables"] = rotate_store(root, key)
    steps["ndop"] = ndop.rekey(root, key)
    pseudo = Pseudonymiser(key)
    steps["type1_register"] = type1.rekey(root, lambda pids, v: pseudo(pids, "nhs_number", after=v), key.version)
    steps["ledgers"] = rekey_ledgers(cfg.state, key)
    path.unlink()
    retired = [r["release_id"] for r in release.list_releases(root) if r.get("status") == release.RETIRED
               and (r.get("retired") or {}).get("reason") == reason]
    new = None
    if any(store.row_counts(root).values()):
        new = release.create_release(root, key=key, note=f"re-issued after {reason}")["release_id"]
        for rid in retired:
            manifest = release.get_release(root, rid)
            manifest["retired"]["replaced_by"] = new
            store.write_json_atomic(release.releases_dir(root) / rid / "release.json", manifest)
    steps["release"] = new
    audit.append(root, "key_rotation", from_version=journal["from"], to_version=key.version,
                 releases_retired=retired, replaced_by=new, project_pseudonyms="changed: projects are told",
                 ledgers=len(steps["ledgers"]), register_files=steps["type1_register"])
    log.info("%s finished: %s", reason, steps)
    return steps
