"""The quality gate for one practice's staged batch.

Two layers:

1. **Row rules** (pyarrow, vectorised): each row that breaks a rule goes to quarantine with a reason
   code and its position (file, entry), never its values. Reasons: ``_issue`` flags set before
   pseudonymisation (invalid NHS number, unknown patient...), missing keys or dates, future dates, dates
   before 1900 or before the patient's birth month, malformed SNOMED CT / dm+d / Read codes, implausible
   measurement values or units, duplicate records and events whose patient is not in the batch.
2. **Great Expectations suites** (gpdata.quality.suites) per curated table, run on the rows that passed. A failed
   expectation fails the batch. Results keep counts only (SUMMARY, ``partial_unexpected_count`` 0).

The batch fails as a whole (nothing is committed for the practice) when an expectation fails, when a
table's quarantined rows exceed both the feed's fraction and its allowance, or when the delivery's volume
moved too far from the practice's previous committed run.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpdata.arrowutil import const, first_reason, isin
from gpdata.codes import codes_valid
from gpdata.model import CURATED, EVENT_TABLES, ISSUE, POSITION, QUARANTINE_SCHEMA, TABLES
from gpdata.quality import suites, units

log = logging.getLogger("gpdata.quality")
# Tables whose (system, code) must be well formed. Appointments carry no code.
_CODED = {t for t in EVENT_TABLES if t != "appointments"}

@dataclass
class GateResult:
    passed: dict[str, pa.Table]
    quarantine: pa.Table
    counts: dict = field(default_factory=dict)
    expectations: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)  # row rules and Great Expectations, for the manifest
    folder: Path | None = None  # where the passed and quarantined rows were written, if streamed (not in passed)

    @property
    def ok(self) -> bool:
        return not self.failures


def _duplicates(keys: pa.Array) -> pa.Array:
    """True for the second and later occurrence of each non-null key (the first is kept)."""
    n = len(keys)
    if n == 0:
        return pa.array([], pa.bool_())
    positions = pa.array(np.arange(n, dtype=np.int64))
    idx = pa.table({"k": keys, "i": positions})
    firsts = idx.group_by("k", use_threads=False).aggregate([("i", "min")])["i_min"]
    first = pc.is_in(positions, value_set=firsts)
    return pc.and_(pc.invert(first), pc.is_valid(keys))


def _measurement_rules(table: pa.Table) -> list[tuple[pa.Array, str]]:
    ms = suites.measurements()
    codes = [c for m in ms for c in m.codes]
    if not codes:
        return []
    mins = pa.array([m.min for m in ms for _ in m.codes], pa.float64())
    maxs = pa.array([m.max for m in ms for _ in m.codes], pa.float64())
    allowed = pa.array(sorted({f"{c}|{u}" for m in ms for c in m.codes for u in m.units}), pa.string())
    idx = pc.index_in(table["code"], value_set=pa.array(codes, pa.string()))
    is_measure = pc.is_valid(idx)
    value = table["value"]
    with_value = pc.and_(is_measure, pc.is_valid(value))
    unit_ok = pc.is_in(pc.binary_join_element_wise(table["code"], pc.fill_null(table["unit"], ""), "|"),
                       value_set=allowed)
    out_of_range = pc.or_(pc.less(value, pc.take(mins, idx)), pc.greater(value, pc.take(maxs, idx)))
    return [(pc.and_(with_value, pc.invert(unit_ok)), "unexpected_unit"),
            (pc.and_(with_value, out_of_range), "implausible_value")]


def _patient_date_rules(table: pa.Table) -> list[tuple[pa.Array, str]]:
    """Impossible patient dates. Birth and death are kept to the month, and a source that gives only the year of
    birth has the first of July (gpdata.ingest.sources.convert): a registration or a death is before birth when
    it is more than BIRTH_TOLERANCE_DAYS before the birth month, so no baby registered in its first weeks is
    refused for it; a death is before registration when its month is before the registration's."""
    birth, death = table["birth_month"], table["death_month"]
    earliest = pc.subtract(birth.cast(pa.int32()), pa.scalar(suites.BIRTH_TOLERANCE_DAYS, pa.int32())).cast(
        pa.date32())
    start = table["registration_date"]
    end = table["registration_end_date"] if "registration_end_date" in table.column_names else None
    rules = [(pc.less(start, earliest), "registration_before_birth"),
             (pc.less(death, earliest), "death_before_birth"),
             (pc.less(death, pc.floor_temporal(start, unit="month")), "death_before_registration")]
    if end is not None:
        rules.append((pc.less(end, start), "registration_end_before_start"))
    return rules


def _after_death(table: pa.Table, death_month: tuple[pa.Array, pa.Array]) -> pa.Array:
    """Events dated after the patient's death beyond the grace period. Death is kept to the month, so the
    grace runs from the month's 31st day."""
    pids, months = death_month
    died = pc.take(months, pc.index_in(table["patient_pid"], value_set=pids))
    limit = pc.add(died.cast(pa.int32()), pa.scalar(31 + suites.death_grace_days(), pa.int32())).cast(pa.date32())
    return pc.greater(table["event_date"], limit)


def row_reasons(table_name: str, table: pa.Table, today: dt.date,
                birth_month: tuple[pa.Array, pa.Array] | None = None,
                known_patients: pa.Array | None = None,
                death_month: tuple[pa.Array, pa.Array] | None = None,
                duplicates: pa.Array | None = None) -> pa.Array:
    """The first rule each row breaks (a reason code), or null where the row is clean. A reason found
    before pseudonymisation (``_issue``) comes first. ``duplicates``: the duplicate flags of these rows when they
    are a record batch of a larger table (from ``stream.duplicate_positions`` of its key column); else found
    here."""
    rules: list[tuple[pa.Array, str]] = []
    if duplicates is None:
        duplicates = _duplicates(table[suites.UNIQUE_KEY.get(table_name, "record_id")].combine_chunks())
    if table_name == "patients":
        rules += [(pc.is_null(table["patient_pid"]), "missing_key"),
                  (pc.greater(table["birth_month"], pa.scalar(today)), "future_date"),
                  (pc.less(table["birth_month"], pa.scalar(suites.EARLIEST)), "date_before_1900"),
                  *_patient_date_rules(table),
                  (duplicates, "duplicate_record")]
    elif table_name == "practitioners":
        rules += [(duplicates, "duplicate_record")]
    else:
        date = table["event_date"]
        rules += [(pc.or_(pc.is_null(table["record_id"]), pc.is_null(table["patient_pid"])), "missing_key"),
                  (pc.is_null(date), "missing_date"),
                  (pc.greater(date, pa.scalar(suites.latest_allowed(table_name, today))), "future_date"),
                  (pc.less(date, pa.scalar(suites.EARLIEST)), "date_before_1900")]
        if birth_month is not None:
            pids, months = birth_month
            born = pc.take(months, pc.index_in(table["patient_pid"], value_set=pids))
            rules.append((pc.less(date, born), "before_birth"))
        if death_month is not None and table_name not in suites.AFTER_DEATH_ALLOWED:
            rules.append((_after_death(table, death_month), "after_death"))
        if table_name in _CODED:
            rules.append((pc.invert(codes_valid(table["code_system"].combine_chunks(),
                                                table["code"].combine_chunks())), "invalid_code"))
        if table_name == "observations":
            rules += _measurement_rules(table)
        rules.append((duplicates, "duplicate_record"))
        if known_patients is not None:
            rules.append((pc.invert(pc.is_in(table["patient_pid"], value_set=known_patients)), "unknown_patient"))
    return pc.coalesce(table[ISSUE].combine_chunks(), first_reason(table.num_rows, rules))


def _gx_context(root: Path | None, docs: Path | None):
    """An in-memory context, or a file context under ``root`` whose Data Docs site is ``docs``."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    if root is None:
        config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(),
                                   progress_bars=ProgressBarsConfig(globally=False))
        return gx.get_context(mode="ephemeral", project_config=config)
    ctx = gx.get_context(mode="file", project_root_dir=str(root))
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    if docs is not None:
        site = {"class_name": "SiteBuilder", "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs)}}
        sites = ctx.variables.data_docs_sites or {}
        if sites.get("gpdata") != site:
            ctx.variables.data_docs_sites = {"gpdata": site}
    ctx.variables.save()
    return ctx


def _batches(tables: dict[str, pa.Table], practice: str | None, today: dt.date):
    """(asset, table, rows, expectations) to validate. The measurement expectations of observations (each
    with a row condition on the code) run on the measurement rows only, where they cost least."""
    for name, table in tables.items():
        empty = frozenset(c for c in table.column_names if table[c].null_count == table.num_rows)
        apart = name == "observations" and set(suites.MEASURED_COLUMNS) <= set(table.column_names)
        yield name, name, table, suites.suite(name, practice, today, empty, with_measurements=not apart)
        if apart and suites.measurements():
            yield f"{name}_measurements", name, measurement_rows(table), suites.measurement_suite()


def measurement_rows(table: pa.Table) -> pa.Table:
    """The measured columns of the observations whose code is a measurement's."""
    codes = pa.array(suites.measurement_codes(), pa.string())
    return table.select(list(suites.MEASURED_COLUMNS)).filter(isin(table["code"], codes))


def run_suites(tables: dict[str, pa.Table], practice: str, today: dt.date, *, gx_root: Path | None = None,
               docs_dir: Path | None = None) -> list[dict]:
    """Validate each table with its suite. With ``gx_root``, a file context keeps the suites and results
    and builds Data Docs into ``docs_dir`` (only this run's pages and the index: the cost does not grow with
    the practice's history). What is returned keeps counts only: no row values, ever."""
    return [_public(r) for r in _validate(_batches(tables, practice, today), gx_root, docs_dir)]


def _public(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "asset"}


def run_suites_together(tables: dict[str, dict[str, pa.Table]], today: dt.date, *, work: Path | None = None,
                        docs_of: Callable[[str], Path] | None = None) -> dict[str, list[dict] | None]:
    """Several practices' tables (practice -> table name -> rows that passed the row rules) validated as one
    batch per table, so Great Expectations' fixed cost per validation is paid once for many practices.

    Every expectation of the suites holds on a set of rows only if it holds on each practice's part of it (value
    checks row by row; bounds on minimum and maximum; the exact column set, as every part has the curated schema),
    and the two that would not are asked per practice: the practice code is checked row by row against the
    practice each row was staged for (``suites.CHUNK_COLUMN``), and keys are unique together with it. So when
    every expectation passes on a group, each practice's own suite passes too: its results are returned (the
    evaluated expectations, with the practice's own element counts). When one fails, the group is halved and each
    half validated again, down to single practices, for which None is returned: the caller validates those alone
    (``run_suites``), with exactly the verdicts, counts and Data Docs of a practice validated alone. One bad
    practice among n costs about 2 log2(n) validations, not n.

    With ``work``, each group's file context and Data Docs are made under it (and removed), and ``docs_of(p)``
    names the folder each practice's copy of its group's Data Docs goes to."""
    import itertools
    import shutil

    out: dict[str, list[dict] | None] = {}
    measured = pa.array(suites.measurement_codes(), pa.string())
    groups = itertools.count(1)

    def rows(practice: str) -> dict[str, int]:
        """The practice's rows in each validated asset (its measurement rows of observations apart)."""
        counts = {name: t.num_rows for name, t in tables[practice].items()}
        if "observations" in counts:
            codes = tables[practice]["observations"]["code"]
            counts["observations_measurements"] = pc.sum(isin(codes, measured)).as_py() or 0
        return counts

    def attempt(group: list[str]) -> None:
        if len(group) == 1:
            out[group[0]] = None
            return
        combined = {name: pa.concat_tables([tables[p][name].append_column(
            suites.CHUNK_COLUMN, const(p, tables[p][name].num_rows)) for p in group]) for name in tables[group[0]]}
        base = None if work is None else work / f"group-{next(groups)}"
        try:
            results = _validate(_batches(combined, None, today), base and base / "gx", base and base / "docs")
            if all(r["success"] for r in results):
                for p in group:
                    own = rows(p)
                    out[p] = [_public({**r, "element_count": None if r["element_count"] is None
                                       else own[r["asset"]]}) for r in results]
                    if base is not None and docs_of is not None:
                        copy_data_docs(base / "docs", docs_of(p))
                return
            log.info("%d practices validated together: %s; validating each half again", len(group),
                     ", ".join(sorted({f"{r['asset']} {r['expectation']} {r['column'] or ''}".strip()
                                       for r in results if not r["success"]})))
        finally:
            if base is not None:
                shutil.rmtree(base, ignore_errors=True)
        attempt(group[: len(group) // 2])
        attempt(group[len(group) // 2:])

    if tables:
        attempt(list(tables))
    return out


def copy_data_docs(site: Path, target: Path) -> None:
    """A Data Docs site's pages into ``target``. Its static assets (GX's fonts, images and stylesheets, 4 MB in 20
    files, the same for every site) only when ``target`` has none yet: copying them for every practice of a
    chunk was most of a chunk's file writes."""
    import shutil

    have_static = (target / "static").is_dir()
    shutil.copytree(site, target, dirs_exist_ok=True,
                    ignore=lambda folder, names: {"static"} if have_static and Path(folder) == site else set())


def _validate(batches, gx_root: Path | None, docs_dir: Path | None) -> list[dict]:
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    ctx = _gx_context(gx_root, docs_dir)
    try:
        source = ctx.data_sources.get("gpdata")
    except (KeyError, ValueError):
        source = ctx.data_sources.add_pandas("gpdata")
    result_format = {"result_format": "SUMMARY", "partial_unexpected_count": 0}
    run_id = RunIdentifier(run_time=dt.datetime.now(dt.UTC))
    results, built = [], []
    for asset_name, name, table, expectations in batches:
        try:
            asset = source.get_asset(asset_name)
        except LookupError:
            asset = source.add_dataframe_asset(name=asset_name)
        try:
            batch = asset.get_batch_definition("batch")
        except KeyError:
            batch = asset.add_batch_definition_whole_dataframe("batch")
        suite = ctx.suites.add_or_update(gx.ExpectationSuite(name=f"gpdata_{asset_name}", expectations=expectations))
        vd = ctx.validation_definitions.add_or_update(gx.ValidationDefinition(name=f"gpdata_{asset_name}",
                                                                              data=batch, suite=suite))
        # The validation definition stores its result in the context's results store (a file context's
        # uncommitted/validations/), which the Data Docs are built from: no checkpoint is needed for that.
        # Rows in parts (gpdata.quality.stream) are validated part by part and the merged result is stored.
        parts = not isinstance(table, pa.Table)
        outcome = _run_parts(vd, table, result_format, run_id) if parts else vd.run(
            batch_parameters={"dataframe": table.to_pandas(date_as_object=False)}, result_format=result_format,
            run_id=run_id)
        suite_id = ExpectationSuiteIdentifier(name=suite.name)
        result_id = ValidationResultIdentifier(expectation_suite_identifier=suite_id, run_id=run_id,
                                               batch_identifier=outcome.batch_id)
        if gx_root is not None and (scrub_observed_values(outcome) or parts):
            ctx.validation_results_store.set(result_id, outcome)  # the stored result, and Data Docs, lose them
        built += [suite_id, result_id]
        for er in outcome.results:
            results.append({
                "table": name,
                "asset": asset_name,  # for run_suites_together; never returned
                "expectation": er.expectation_config.type,
                "column": er.expectation_config.kwargs.get("column"),
                "success": bool(er.success),
                "unexpected_count": (er.result or {}).get("unexpected_count"),
                "element_count": (er.result or {}).get("element_count"),
            })
    if gx_root is not None and docs_dir is not None:
        ctx.build_data_docs(site_names=["gpdata"], resource_identifiers=built)
    return results


def _run_parts(vd, parts, result_format: dict, run_id):
    """Validate rows given in parts, each ``(table, expectations)`` with the expectations of ``vd``'s suite
    that apply to it, and merge the results into the one ``vd.run`` gives on all the rows together
    (gpdata.quality.stream says why the verdicts and counts are the same). Nothing is stored."""
    from great_expectations.constants import DATAFRAME_REPLACEMENT_STR

    found, outcome = _validate_parts(vd, parts, result_format)
    merged = []
    for expectation in vd.suite.expectations:
        er = _merge_results(found[_config_key(expectation.configuration)])
        er.expectation_config = expectation.configuration
        merged.append(er)
    outcome.results = merged
    outcome.success = all(er.success for er in merged)
    passed = sum(1 for er in merged if er.success)
    outcome.statistics = {"evaluated_expectations": len(merged), "successful_expectations": passed,
                          "unsuccessful_expectations": len(merged) - passed,
                          "success_percent": 100 * passed / len(merged) if merged else None}
    outcome.meta.update(validation_id=vd.id, checkpoint_id=None, run_id=run_id, validation_time=run_id.run_time,
                        batch_parameters={"dataframe": DATAFRAME_REPLACEMENT_STR})
    return outcome


def _validate_parts(vd, parts, result_format: dict) -> tuple[dict[str, list], object]:
    """Each part's results, by expectation (``_config_key``), and the last part's whole result."""
    from great_expectations.execution_engine import pandas_execution_engine as engine
    from great_expectations.validator.v1_validator import Validator

    from gpdata.quality.stream import part_suite

    found: dict[str, list] = {}
    suites_of: dict[tuple, object] = {}  # parts mostly ask the same expectations: one suite each
    # GX fingerprints a pandas batch (a hash of every value, about 1 s per million rows) for a batch marker of its
    # result; a part's fingerprint is not the table's, so parts go without.
    threshold, engine.HASH_THRESHOLD = engine.HASH_THRESHOLD, 0
    try:
        for table, expectations in parts:
            asked = tuple(map(id, expectations))
            if asked not in suites_of:
                suites_of[asked] = part_suite(vd.suite.name, expectations)
            outcome = Validator(batch_definition=vd.batch_definition,
                                batch_parameters={"dataframe": table.to_pandas(date_as_object=False)},
                                result_format=result_format).validate_expectation_suite(suites_of[asked])
            for er in outcome.results:
                found.setdefault(_config_key(er.expectation_config), []).append(er)
    finally:
        engine.HASH_THRESHOLD = threshold
    return found, outcome


def _config_key(config) -> str:
    import json

    kwargs = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
    return json.dumps([config.type, kwargs], sort_keys=True, default=str)


def _merge_results(parts: list):
    """One expectation's results on the parts of a table, as one result on the table: it passes iff it passes on
    every part; row counts are summed (and GX's percentages recomputed from them); a minimum's or maximum's
    observed value is the least or greatest of the parts'."""
    out = parts[-1]
    out.success = all(er.success for er in parts)
    result = out.result
    if result.get("element_count") is not None:
        for k in ("element_count", "unexpected_count", "missing_count"):
            if result.get(k) is not None:
                result[k] = sum(er.result[k] for er in parts)
        result.update(_percentages(result))
    elif out.expectation_config.type in SINGLE_RECORD_OBSERVATIONS:
        seen = [er.result.get("observed_value") for er in parts if er.result.get("observed_value") is not None]
        if seen:
            pick = min if out.expectation_config.type == "expect_column_min_to_be_between" else max
            result["observed_value"] = pick(seen)
    return out


def _percentages(result: dict) -> dict:
    """GX's percentages of a row-by-row result from its counts (great_expectations.expectations.expectation.
    _format_map_output)."""
    n, bad, missing = result["element_count"], result["unexpected_count"], result.get("missing_count")
    if bad is None or n == 0:
        return {k: None for k in ("unexpected_percent", "missing_percent", "unexpected_percent_total",
                                  "unexpected_percent_nonmissing") if k in result}
    total = bad / n * 100
    if missing is None:
        return {"unexpected_percent": total}
    nonmissing = bad / (n - missing) * 100 if n - missing > 0 else None
    return {"unexpected_percent": nonmissing, "missing_percent": missing / n * 100,
            "unexpected_percent_total": total, "unexpected_percent_nonmissing": nonmissing}


# Expectations whose observed value is one record's value (the oldest patient's birth month, the earliest
# registration date): kept out of the persisted results and Data Docs. Row, element and unexpected counts stay.
SINGLE_RECORD_OBSERVATIONS = frozenset({"expect_column_min_to_be_between", "expect_column_max_to_be_between"})


def scrub_observed_values(outcome) -> int:
    """Blank the observed value of every single-record expectation in a validation result (in place);
    returns how many were blanked."""
    blanked = 0
    for er in outcome.results:
        if er.expectation_config.type in SINGLE_RECORD_OBSERVATIONS and er.result is not None:
            if er.result.get("observed_value") is not None:
                er.result["observed_value"] = None
                blanked += 1
            er.result.pop("details", None)
    return blanked


def volume_failures(records: dict[str, int], previous: dict[str, int] | None, tolerance: float,
                    min_rows: int = 100) -> list[str]:
    """Tables whose delivered rows moved more than ``tolerance`` (a fraction) from the previous committed
    run. Tables with fewer than ``min_rows`` before are not judged."""
    failures = []
    for name, before in (previous or {}).items():
        now = records.get(name, 0)
        if before >= min_rows and abs(now - before) > tolerance * before:
            failures.append(f"{name}: volume {now} rows against {before} in the previous run "
                            f"({(now - before) / before:+.0%}, tolerance ±{tolerance:.0%})")
    return failures


def gate(staged: dict[str, pa.Table], practice: str, run_id: str, *, today: dt.date,
         max_quarantine_fraction: float = 0.05, quarantine_allowance: int = 10,
         gx_root: Path | None = None, docs_dir: Path | None = None,
         known_patients: tuple[pa.Array, pa.Array] | None = None) -> GateResult:
    """Quarantine failing rows, validate the rest with Great Expectations, decide the batch.

    ``known_patients`` (incremental batches): (patient_pid, birth_month) of the patients committed earlier,
    which this batch's events may refer to.

    A table fails the batch when its quarantined rows exceed both ``max_quarantine_fraction`` of its rows
    and ``quarantine_allowance`` rows."""
    result = gate_rows(staged, practice, run_id, today=today, max_quarantine_fraction=max_quarantine_fraction,
                       quarantine_allowance=quarantine_allowance, known_patients=known_patients)
    started = time.monotonic()
    expectations = run_suites(result.passed, practice, today, gx_root=gx_root, docs_dir=docs_dir)
    return add_expectations(result, expectations, time.monotonic() - started)


def gate_rows(staged: dict[str, pa.Table], practice: str, run_id: str, *, today: dt.date,
              max_quarantine_fraction: float = 0.05, quarantine_allowance: int = 10,
              known_patients: tuple[pa.Array, pa.Array] | None = None) -> GateResult:
    """The row-rule half of ``gate``: quarantine and thresholds, no expectations yet (``add_expectations``)."""
    tally = Tally(max_quarantine_fraction, quarantine_allowance)
    passed: dict[str, pa.Table] = {}
    quarantined: list[pa.Table] = []
    events = None
    started = time.monotonic()
    for name in TABLES:  # patients first: events are checked against the patients that passed
        step = table_step(name, staged[name], today, events, practice, run_id)
        passed[name] = step.clean
        quarantined.append(step.quarantine)
        tally.add(name, step)
        tally.close(name)
        if name == "patients":
            events = patient_context(step.clean, known_patients)
    return GateResult(passed=passed, quarantine=pa.concat_tables(quarantined), counts=tally.counts,
                      failures=tally.failures, seconds={"quality_rules": round(time.monotonic() - started, 3)})


@dataclass
class Step:
    """One table (or one record batch of it) through the row rules."""

    rows: int
    clean: pa.Table  # the curated columns of the rows that passed
    quarantine: pa.Table  # QUARANTINE_SCHEMA
    by_reason: dict[str, int]
    units_converted: int = 0


@dataclass
class EventContext:
    """What events are checked against: the patients that passed (and, for an incremental batch, those committed
    earlier) with their birth months, and the death months of those that died."""

    birth: tuple[pa.Array, pa.Array]
    death: tuple[pa.Array, pa.Array]

    @property
    def patient_pids(self) -> pa.Array:
        return self.birth[0]


def patient_context(clean: pa.Table, known_patients: tuple[pa.Array, pa.Array] | None) -> EventContext:
    """The ``EventContext`` of the patients that passed (``patient_pid``, ``birth_month``, ``death_month``)."""
    patient_pids = clean["patient_pid"].combine_chunks()
    months = clean["birth_month"].combine_chunks()
    if known_patients is not None:
        older = pc.invert(pc.is_in(known_patients[0], value_set=patient_pids))
        patient_pids = pa.concat_arrays([patient_pids, known_patients[0].filter(older)])
        months = pa.concat_arrays([months, known_patients[1].filter(older)])
    dead = pc.is_valid(clean["death_month"])
    return EventContext(birth=(patient_pids, months),
                        death=(clean["patient_pid"].filter(dead).combine_chunks(),
                               clean["death_month"].filter(dead).combine_chunks()))


def table_step(name: str, table: pa.Table, today: dt.date, events: EventContext | None, practice: str,
               run_id: str, duplicates: pa.Array | None = None) -> Step:
    """The row rules on a table or a record batch of it (``duplicates``: the batch's flags from its whole table's
    key column, ``stream.duplicate_positions``); events are checked against ``events``."""
    converted = 0
    if name == "observations":  # measurement values in another UCUM unit: to the configured one
        table, converted = units.to_configured(table)
    reasons = row_reasons(name, table, today, birth_month=events and events.birth,
                          known_patients=events and events.patient_pids, death_month=events and events.death,
                          duplicates=duplicates)
    bad = pc.is_valid(reasons)
    clean = table.filter(pc.invert(bad)).select(CURATED[name].names).cast(CURATED[name])
    rejected, rej_reasons = table.filter(bad), reasons.filter(bad)
    n_bad = rejected.num_rows
    by_reason = {v["values"]: v["counts"] for v in pc.value_counts(rej_reasons).to_pylist()} if n_bad else {}
    quarantine = pa.Table.from_arrays(
        [const(practice, n_bad), const(name, n_bad), rejected[POSITION[0]], rejected[POSITION[1]], rej_reasons,
         const(run_id, n_bad)], schema=QUARANTINE_SCHEMA)
    return Step(table.num_rows, clean, quarantine, by_reason, converted)


@dataclass
class Tally:
    """Counts of the row rules per table, summed over a table's steps, and the tables over the threshold."""

    max_quarantine_fraction: float
    quarantine_allowance: int
    counts: dict = field(default_factory=lambda: {"rows_in": {}, "rows_passed": {}, "quarantined": {}})
    failures: list[str] = field(default_factory=list)

    def add(self, name: str, step: Step) -> None:
        c = self.counts
        c["rows_in"][name] = c["rows_in"].get(name, 0) + step.rows
        c["rows_passed"][name] = c["rows_passed"].get(name, 0) + step.clean.num_rows
        reasons = c["quarantined"].setdefault(name, {})
        for reason, n in step.by_reason.items():
            reasons[reason] = reasons.get(reason, 0) + n
        if name == "observations":
            c["units_converted"] = c.get("units_converted", 0) + step.units_converted

    def close(self, name: str) -> None:
        """A table's steps are all added: sort its reasons and judge its quarantined share."""
        c = self.counts
        c["rows_in"].setdefault(name, 0)
        c["rows_passed"].setdefault(name, 0)
        by_reason = c["quarantined"][name] = dict(sorted(c["quarantined"].get(name, {}).items()))
        n_bad, n = sum(by_reason.values()), c["rows_in"][name]
        if n_bad > self.quarantine_allowance and n_bad / n > self.max_quarantine_fraction:
            self.failures.append(f"{name}: {n_bad} of {n} rows quarantined "
                                 f"({n_bad / n:.1%} > threshold {self.max_quarantine_fraction:.1%}): "
                                 + ", ".join(f"{k} {v}" for k, v in by_reason.items()))


def add_expectations(result: GateResult, expectations: list[dict], seconds: float) -> GateResult:
    """Complete a ``gate_rows`` result with the Great Expectations results: a failed expectation fails the batch."""
    result.expectations = expectations
    result.seconds["quality_expectations"] = round(seconds, 3)
    for r in expectations:
        if not r["success"]:
            result.failures.append(
                f"{r['table']}: expectation {r['expectation']}{' on ' + r['column'] if r['column'] else ''} failed"
                f"{'' if r['unexpected_count'] is None else ' (' + str(r['unexpected_count']) + ' rows)'}")
    result.counts["expectations"] = {"evaluated": len(expectations),
                                     "failed": sum(1 for r in expectations if not r["success"])}
    return result
