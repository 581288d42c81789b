"""Dissemination: the minimum data an approved project needs, from a release, under its own pseudonyms.

For one project and one release:

* only approved tables and columns;
* only rows in the approved date range;
* only the cohort (patients with a code from the project's code lists in the range);
* the National Data Opt-out applied unless the project records an exemption; a stale list blocks.

Every pseudonym is then re-keyed: HMAC of the curated pseudonym under the project's own derived key, so two
projects never share a pseudonym and one project keeps the same ones across releases (until a key rotation,
which changes every curated pseudonym and so every project's: the rotation's audit entry says so). Before
anything is written, the key must be the one the release was made with (check value), and no row may belong
to a patient whose latest type 1 code in the store-wide register is a dissent. The output is plain
Parquet per table, with a manifest (row counts, SHA-256 of every file) and an aggregate summary with
small-number suppression. Every extract and every refusal goes to the audit log.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gpdata import audit, store
from gpdata.errors import GpdataError
from gpdata.model import PSEUDONYM_FIELDS
from gpdata.privacy import keys, ndop, type1
from gpdata.privacy.deid import hmac_hex
from gpdata.privacy.keys import MasterKey
from gpdata.share.projects import Project
from gpdata.store import release


def suppress(n: int) -> int | str:
    """Small-number suppression for published counts: 1-7 redacted, the rest rounded to the nearest 5."""
    if n == 0:
        return 0
    if n <= 7:
        return "[REDACTED]"
    return int(5 * round(n / 5))


def project_key(key: MasterKey, project_id: str, field: str) -> bytes:
    return key.derive(f"{project_id}/{field}", namespace="project")


def _codes(paths: list[Path]) -> pa.Array:
    codes: set[str] = set()
    for path in paths:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            codes.update(row["code"].strip() for row in csv.DictReader(fh) if row.get("code"))
    return pa.array(sorted(codes), pa.string())


def _in_range(table: pa.Table, project: Project) -> pa.Array:
    date = table["event_date"]
    return pc.fill_null(pc.and_(pc.greater_equal(date, pa.scalar(project.date_from)),
                                pc.less_equal(date, pa.scalar(project.date_to))), False)


def extract(project: Project, release_id: str, store_root: Path, out_root: Path, key: MasterKey, *,
            requested_by: str, today: dt.date | None = None, ndop_max_age_days: int = ndop.MAX_AGE_DAYS) -> dict:
    today = today or dt.date.today()
    base = {"project": project.project_id, "organisation": project.organisation, "release": release_id,
            "requested_by": requested_by}
    try:
        project.check_current(today)
        made = release.readable(release.get_release(store_root, release_id))
        keys.verify_store(store_root, key)
        made_with = made.get("key_version")
        if made_with and made_with != key.version:
            raise GpdataError(f"release {release_id} holds pseudonyms of key version {made_with}, the key is at "
                              f"{key.version}: disseminate a release made after the rotation")
        key.verify(made.get("key_checks"), f"release {release_id}")
        removed_by_ndop = None
        optouts = None
        if project.national_data_optout == "apply":
            optouts, _ = ndop.load(store_root, today, ndop_max_age_days, key=key)
        dissenters, _ = type1.active_dissenters(store_root, key.version)
    except GpdataError as exc:
        audit.append(store_root, "refusal", **base, reason=exc.cause)
        raise

    cohort = None
    if project.cohort:
        obs = release.read_release_table(store_root, release_id, "observations")
        hit = pc.and_(_in_range(obs, project), pc.fill_null(pc.is_in(obs["code"], value_set=_codes(
            project.code_list_paths())), False))
        cohort = pc.unique(obs.filter(hit)["patient_pid"])

    outputs, held = {}, set()
    for table_name, columns in project.tables.items():
        table = release.read_release_table(store_root, release_id, table_name)
        keep = pa.array([True] * table.num_rows, pa.bool_())  # typed: an empty table too
        if "event_date" in table.column_names:
            keep = pc.and_(keep, _in_range(table, project))
        if "patient_pid" in table.column_names:
            if cohort is not None:
                keep = pc.and_(keep, pc.fill_null(pc.is_in(table["patient_pid"], value_set=cohort), False))
            if optouts is not None:
                opted = pc.fill_null(pc.is_in(table["patient_pid"], value_set=optouts), False)
                if table_name == "patients":
                    removed_by_ndop = pc.sum(pc.and_(keep, opted)).as_py() or 0
                keep = pc.and_(keep, pc.invert(opted))
        kept = table.filter(keep)
        if "patient_pid" in kept.column_names and len(dissenters):
            held.update(kept.filter(pc.fill_null(pc.is_in(kept["patient_pid"], value_set=dissenters), False))
                        ["patient_pid"].to_pylist())
        out = kept.select(columns)
        for column in project.pseudonym_columns(table_name):
            i = out.schema.get_field_index(column)
            key_bytes = project_key(key, project.project_id, PSEUDONYM_FIELDS[column])
            out = out.set_column(i, out.schema.field(i), hmac_hex(key_bytes, out[column]))
        outputs[table_name] = out
    if held:  # the last line of defence: the commit and release guards should make this unreachable
        cause = (f"release {release_id} still holds {len(held)} patient(s) with an active type 1 dissent; "
                 "run their practices again (the commit erases them), then make a new release")
        audit.append(store_root, "refusal", **base, reason=cause)
        raise GpdataError(f"extract refused: {cause}")
    folder = Path(out_root) / project.project_id / release_id
    folder.mkdir(parents=True, exist_ok=True)
    files, counts, summary = {}, {}, {}
    for table_name, out in outputs.items():
        path = folder / f"{table_name}.parquet"
        pq.write_table(out, path, compression="zstd")
        files[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        counts[table_name] = out.num_rows
        if "patient_pid" in out.column_names:
            summary[table_name] = {"rows": suppress(out.num_rows),
                                   "patients": suppress(pc.count_distinct(out["patient_pid"]).as_py())}
    manifest = {**base, "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "tables": {t: {"columns": c, "rows": counts[t]} for t, c in project.tables.items()},
                "files_sha256": files, "date_from": project.date_from, "date_to": project.date_to,
                "national_data_optout": project.national_data_optout,
                "exemption_reason": project.exemption_reason, "key_version": key.version,
                "key_check": key.check_value()}
    store.write_json_atomic(folder / "manifest.json", manifest)
    store.write_json_atomic(folder / "summary.json", {"project": project.project_id, "release": release_id,
                                                      "suppression": "1-7 redacted, others rounded to 5",
                                                      "tables": summary})
    audit.append(store_root, "extract", **base, tables={t: c for t, c in project.tables.items()},
                 rows=counts, national_data_optout=project.national_data_optout,
                 removed_by_ndop=suppress(removed_by_ndop) if removed_by_ndop is not None else None,
                 files_sha256=files)
    return manifest


def disseminate_all(cfg, key: MasterKey, *, requested_by: str, release_id: str | None = None,
                    today: dt.date | None = None, projects: list[Project] | None = None) -> dict[str, dict]:
    """Each project's extract (default: every active one) of a release (default: the latest), then the
    register of all projects."""
    from gpdata import storage
    from gpdata.share import register

    storage.restrict_umask()
    from gpdata.share.projects import load_projects

    everyone = load_projects(cfg.projects_dir)
    projects = [p for p in everyone if p.active] if projects is None else projects
    release_id = release_id or release.latest_release(cfg.store)["release_id"]
    out = {p.project_id: extract(p, release_id, cfg.store, cfg.extracts, key, requested_by=requested_by,
                                 today=today) for p in projects}
    register.write(everyone, cfg.store, cfg.register)
    return out
