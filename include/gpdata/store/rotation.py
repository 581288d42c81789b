"""Key rotation: add a master key version and re-key the curated store to it.

`gpdata keys rotate` appends a new random key to the key file, then rewrites every curated table so that
each pseudonym column holds HMAC(new field key, old pseudonym). Each table is replaced in one Delta commit
(never a mix of versions) and the files holding the old pseudonyms are vacuumed. The command is
restartable: a table already at the current version is left alone, one at an older version is re-keyed
through every later version. Extractions after the rotation produce the same pseudonyms directly, so
linkage continues. Releases made before a rotation carry the old pseudonyms and must be re-issued.
Do not run it while an extraction is running: a commit of a batch made under the old version is refused.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from gpdata import store
from gpdata.errors import GpdataError
from gpdata.model import CURATED, PSEUDONYM_FIELDS, TABLES
from gpdata.privacy.deid import Pseudonymiser
from gpdata.privacy.keys import MasterKey

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
