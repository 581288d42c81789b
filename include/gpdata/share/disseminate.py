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
to a patient whose latest type 1 code in the store-wide register is a dissent. The extract is generalised to
the precision the project is approved for (gpdata.share.generalise; coarsest by default), its re-identification
risk measured (gpdata.share.risk, written beside it as ``risk.json``), and refused below the project's
minimum k. The output is plain Parquet per table, with a manifest (row counts, SHA-256 of every file) and an
aggregate summary with small-number suppression. Every extract and every refusal goes to the audit log.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gpdata import audit, settings, store
from gpdata.arrowutil import isin
from gpdata.errors import GpdataError
from gpdata.model import PSEUDONYM_FIELDS
from gpdata.privacy import keys, ndop, type1
from gpdata.privacy.deid import hmac_hex
from gpdata.privacy.keys import MasterKey
from gpdata.share import generalise, risk
from gpdata.share.projects import AREA_LEVELS, BIRTH_LEVELS, Project
from gpdata.share.publish import suppress
from gpdata.store import release


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


def _code_lists(project: Project) -> dict[str, pa.Array]:
    return {path.stem: _codes([path]) for path in project.code_list_paths()}


def _generalise(project: Project, selected: dict[str, pa.Table], key: MasterKey,
                areas: Path | None) -> tuple[generalise.Generalised, int]:
    """Generalise to the project's precision, then (if it says so) blank the quasi-identifiers of the records in
    classes below its minimum k. Returns the result and the number of records blanked."""
    gen = generalise.apply(project, dict(selected), areas=areas,
                           shift_key=project_key(key, project.project_id, "date_shift"),
                           code_lists=_code_lists(project))
    blanked = 0
    if project.small_classes == "suppress" and "patients" in gen.tables:
        patients = gen.tables["patients"]
        gen.tables["patients"], blanked = risk.suppress_small_classes(patients, risk.quasi_identifiers(patients),
                                                                      project.minimum_k)
    return gen, blanked


def _coarser(levels: tuple[str, ...], level: str) -> str | None:
    i = levels.index(level)
    return levels[i + 1] if i + 1 < len(levels) else None


def _hint(project: Project, patients: pa.Table, key: MasterKey, areas: Path | None) -> str:
    """Which single change of the approval would reach its minimum k, with the k each gives."""
    variants = []
    if "birth_month" in patients.column_names:
        level = _coarser(BIRTH_LEVELS, project.level("birth_month"))
        if level:
            variants.append((f"birth_month: {level}", {"precision": {**project.precision, "birth_month": level}}))
    if "lsoa_code" in patients.column_names:
        level = _coarser(AREA_LEVELS, project.level("lsoa_code"))
        if level:
            variants.append((f"lsoa_code: {level}", {"precision": {**project.precision, "lsoa_code": level}}))
    if "ethnic_category" in patients.column_names and project.level("ethnic_category") == "category":
        variants.append(("ethnic_category: group", {"precision": {**project.precision, "ethnic_category": "group"}}))
    for column in ("ethnic_category", "registration_date", "death_month"):
        if column in patients.column_names:
            tables = {**project.tables, "patients": [c for c in project.tables["patients"] if c != column]}
            variants.append((f"without {column}", {"tables": tables}))
    if project.small_classes != "suppress":
        variants.append(("small_classes: suppress", {"small_classes": "suppress"}))
    found = []
    for label, change in variants:
        variant = project.model_copy(update=change)
        gen, _ = _generalise(variant, {"patients": patients.select(variant.tables["patients"])}, key, areas)
        k = risk.k_anonymity(gen.tables["patients"], risk.quasi_identifiers(gen.tables["patients"]))["k"]
        found.append(f"{label} gives k={k}" + (" (enough)" if k is not None and k >= project.minimum_k else ""))
    return "; ".join(found) or "no single change of the approval reaches it"


def extract(project: Project, release_id: str, store_root: Path, out_root: Path, key: MasterKey, *,
            requested_by: str, today: dt.date | None = None, ndop_max_age_days: int = ndop.MAX_AGE_DAYS,
            areas: Path | None = None, write: bool = True) -> dict:
    """The project's extract of a release, generalised to its precision and within its minimum k (else refused
    with the numbers and a hint). ``write=False`` measures the risk only (``gpdata projects risk``): nothing is
    written and nothing audited; the returned dict is then the risk report."""
    today = today or dt.date.today()
    areas = areas if areas is not None else settings.load().area_lookup
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
        if write:
            audit.append(store_root, "refusal", **base, reason=exc.cause)
        raise

    cohort = None
    if project.cohort:
        obs = release.read_release_table(store_root, release_id, "observations")
        hit = pc.and_(_in_range(obs, project), isin(obs["code"], _codes(
            project.code_list_paths())))
        cohort = pc.unique(obs.filter(hit)["patient_pid"])

    selected, held = {}, set()
    for table_name, columns in project.tables.items():
        table = release.read_release_table(store_root, release_id, table_name)
        keep = pa.array([True] * table.num_rows, pa.bool_())  # typed: an empty table too
        if "event_date" in table.column_names:
            keep = pc.and_(keep, _in_range(table, project))
        if "patient_pid" in table.column_names:
            if cohort is not None:
                keep = pc.and_(keep, isin(table["patient_pid"], cohort))
            if optouts is not None:
                opted = isin(table["patient_pid"], optouts)
                if table_name == "patients":
                    removed_by_ndop = pc.sum(pc.and_(keep, opted)).as_py() or 0
                keep = pc.and_(keep, pc.invert(opted))
        kept = table.filter(keep)
        if "patient_pid" in kept.column_names and len(dissenters):
            held.update(kept.filter(isin(kept["patient_pid"], dissenters))
                        ["patient_pid"].to_pylist())
        selected[table_name] = kept.select(columns)
    if held:  # the last line of defence: the commit and release guards should make this unreachable
        cause = (f"release {release_id} still holds {len(held)} patient(s) with an active type 1 dissent; "
                 "run their practices again (the commit erases them), then make a new release")
        if write:
            audit.append(store_root, "refusal", **base, reason=cause)
        raise GpdataError(f"extract refused: {cause}")
    try:
        gen, blanked = _generalise(project, selected, key, areas)
    except GpdataError as exc:
        if write:
            audit.append(store_root, "refusal", **base, reason=exc.cause)
        raise
    population = None
    if "patients" in project.tables:
        everyone = release.read_release_table(store_root, release_id, "patients").select(project.tables["patients"])
        population = generalise.apply(project, {"patients": everyone}, areas=areas,
                                      shift_key=project_key(key, project.project_id, "date_shift")).tables["patients"]
    sensitive = (project.sensitive.table, project.sensitive.column) if project.sensitive else None
    if sensitive and sensitive[1] in ("birth_month", "lsoa_code"):
        sensitive = None
    report = {"project": project.project_id, "release": release_id,
              "precision": {c: project.level(c) for t in project.tables.values() for c in t
                            if c in ("birth_month", "lsoa_code", *generalise.DATE_COLUMNS)},
              "environment": project.environment, "small_classes": project.small_classes,
              "records_suppressed": blanked,
              **risk.report(gen.tables.get("patients"), gen.tables, population=population, sensitive=sensitive,
                            rare=gen.rare, minimum_k=project.minimum_k)}
    if not write:
        return report
    if not report["meets_minimum_k"]:
        hint = _hint(project, selected["patients"], key, areas) if "patients" in selected \
            else "fewer patients than the minimum k: no generalisation of the approval reaches it"
        cause = (f"k-anonymity {report['k']} is below the approved minimum k {project.minimum_k} "
                 f"(quasi-identifiers {', '.join(report['quasi_identifiers'])}; {report['records']} patients; "
                 f"{report['share_below_5']:.1%} of them in classes below 5, {report['unique_share']:.1%} unique); "
                 f"hint: {hint}")
        audit.append(store_root, "refusal", **base, reason=cause)
        raise GpdataError(f"project {project.project_id}: extract refused: {cause}")
    outputs = {}
    for table_name, out in gen.tables.items():
        for column in project.pseudonym_columns(table_name):
            i = out.schema.get_field_index(column)
            key_bytes = project_key(key, project.project_id, PSEUDONYM_FIELDS[column])
            out = out.set_column(i, out.schema.field(i), hmac_hex(key_bytes, out[column]))
        outputs[table_name] = out
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
                "tables": {t: {"columns": gen.columns[t], "rows": counts[t]} for t in project.tables},
                "precision": report["precision"],
                "risk": {k: report[k] for k in ("quasi_identifiers", "minimum_k", "k", "median_k", "unique_share",
                                                "share_below_5", "share_below_10", "records_suppressed")}
                | {"linkage_unique_match_share": report["linkage"]["unique_match_share"],
                   "rare_codes": report["rare_codes"]["rare_codes"],
                   "l": report.get("l_diversity", {}).get("l")},
                "files_sha256": files, "date_from": project.date_from, "date_to": project.date_to,
                "national_data_optout": project.national_data_optout, "removed_by_ndop": removed_by_ndop,
                "exemption_reason": project.exemption_reason, "key_version": key.version,
                "key_check": key.check_value()}
    store.write_json_atomic(folder / "risk.json", report)
    store.write_json_atomic(folder / "manifest.json", manifest)
    store.write_json_atomic(folder / "summary.json", {"project": project.project_id, "release": release_id,
                                                      "suppression": "1-7 redacted, others rounded to 5",
                                                      "tables": summary,
                                                      "removed_by_national_data_optout":
                                                          suppress(removed_by_ndop) if removed_by_ndop is not None
                                                          else None})
    audit.append(store_root, "extract", **base, tables={t: c for t, c in project.tables.items()},
                 rows=counts, national_data_optout=project.national_data_optout,
                 removed_by_ndop=suppress(removed_by_ndop) if removed_by_ndop is not None else None,
                 files_sha256=files, precision=report["precision"], risk=manifest["risk"])
    return manifest


def disseminate_all(cfg, key: MasterKey, *, requested_by: str, release_id: str | None = None,
                    today: dt.date | None = None, projects: list[Project] | None = None) -> dict[str, dict]:
    """Each project's extract (default: every active one) of a release (default: the latest), then the
    register of all projects. A refused project (each refusal audited) stops only itself: the others are
    extracted, then ``DisseminationRefused`` names every refusal and carries the extracts made (a single
    project refused alone raises its own error)."""
    from gpdata import storage
    from gpdata.share import register

    storage.restrict_umask()
    from gpdata.share.projects import load_projects

    everyone = load_projects(cfg.projects_dir)
    projects = [p for p in everyone if p.active] if projects is None else projects
    release_id = release_id or release.latest_release(cfg.store)["release_id"]
    out, refused = {}, {}
    for p in projects:  # a refused project (expired approval, stale opt-out list, ...) stops only itself
        try:
            out[p.project_id] = extract(p, release_id, cfg.store, cfg.extracts, key, requested_by=requested_by,
                                        today=today, areas=cfg.area_lookup)
        except GpdataError as exc:
            refused[p.project_id] = exc
    if out:  # the register names only extracts that happened
        register.write(everyone, cfg.store, cfg.register)
    if len(refused) == 1 and not out:
        raise next(iter(refused.values()))
    if refused:
        raise DisseminationRefused(refused, out)
    return out


class DisseminationRefused(GpdataError):
    """Some projects were refused: ``refused`` maps each to its error; ``done`` holds the extracts made."""

    def __init__(self, refused: dict[str, GpdataError], done: dict[str, dict]) -> None:
        self.refused, self.done = refused, done
        super().__init__(f"{len(refused)} of {len(refused) + len(done)} project(s) refused: "
                         + "; ".join(f"{p}: {e}" for p, e in refused.items()))
