"""The quality gate for one practice's staged batch.

Two layers:

1. **Row rules** (pyarrow, vectorised): each row that breaks a rule goes to quarantine with a reason
   code and its position (file, entry), never its values. Reasons: ``_issue`` flags set before
   pseudonymisation (invalid NHS number, unknown patient...), missing keys or dates, future dates, dates
   before 1900 or before the patient's birth month, malformed codes, duplicate records and events whose
   patient is not in the batch.
2. **Great Expectations suites** per curated table, run on the rows that passed: required columns, non-null
   keys, pseudonym format, unique ids, date bounds and value sets. A failed expectation fails the batch.

The batch fails as a whole (nothing is committed for the practice) when an expectation fails or when the
share of quarantined rows of any table exceeds the feed's threshold.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from gpdata.codes import codes_valid
from gpdata.model import CURATED, EVENT_TABLES, ISSUE, PARTITION, POSITION, TABLES

PSEUDONYM_REGEX = r"^[0-9a-f]{64}$"
EARLIEST = dt.date(1900, 1, 1)
# Columns whose (system, code) must be well formed, per table. Appointments carry no code.
_CODED = {t for t in EVENT_TABLES if t != "appointments"}
# Appointments may be booked ahead; everything else must have happened by the day of the check.
FUTURE_ALLOWANCE_DAYS = {"appointments": 366}
_VALUE_SETS = {
    "sex": ["male", "female", "other", "unknown"],
    "medication_type": ["authorisation", "issue"],
    "category": ["condition", "observation"],
}

QUARANTINE_SCHEMA = pa.schema([
    pa.field(PARTITION, pa.string(), nullable=False),
    pa.field("table_name", pa.string(), nullable=False),
    pa.field("source_file", pa.string()),
    pa.field("source_entry", pa.int32()),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
])


@dataclass
class GateResult:
    passed: dict[str, pa.Table]
    quarantine: pa.Table
    counts: dict = field(default_factory=dict)
    expectations: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def _const(value: str, n: int) -> pa.Array:
    return pa.array([value] * n, pa.string())


def _first(n: int, rules: list[tuple[pa.Array, str]]) -> pa.Array:
    out = pa.nulls(n, pa.string())
    for cond, reason in reversed(rules):
        out = pc.if_else(pc.fill_null(cond, False), _const(reason, n), out)
    return out


def _duplicates(keys: pa.Array) -> pa.Array:
    """True for the second and later occurrence of each non-null key (the first is kept)."""
    n = len(keys)
    if n == 0:
        return pa.array([], pa.bool_())
    idx = pa.table({"k": keys, "i": pa.array(range(n), pa.int64())})
    firsts = idx.group_by("k", use_threads=False).aggregate([("i", "min")])["i_min"]
    first = pc.is_in(pa.array(range(n), pa.int64()), value_set=firsts)
    return pc.and_(pc.invert(first), pc.is_valid(keys))


def row_reasons(table_name: str, table: pa.Table, today: dt.date,
                birth_month: tuple[pa.Array, pa.Array] | None = None,
                known_patients: pa.Array | None = None) -> pa.Array:
    """The first rule each row breaks (a reason code), or null where the row is clean."""
    n = table.num_rows
    rules: list[tuple[pa.Array, str]] = []  # a reason found before pseudonymisation (_issue) comes first
    if table_name == "patients":
        rules += [(pc.is_null(table["patient_pid"]), "missing_key"),
                  (pc.greater(table["birth_month"], pa.scalar(today)), "future_date"),
                  (pc.less(table["birth_month"], pa.scalar(EARLIEST)), "date_before_1900"),
                  (_duplicates(table["patient_pid"].combine_chunks()), "duplicate_record")]
    elif table_name == "practitioners":
        rules += [(_duplicates(table["practitioner_pid"].combine_chunks()), "duplicate_record")]
    else:
        date = table["event_date"]
        latest = today + dt.timedelta(days=FUTURE_ALLOWANCE_DAYS.get(table_name, 0))
        rules += [(pc.or_(pc.is_null(table["record_id"]), pc.is_null(table["patient_pid"])), "missing_key"),
                  (pc.is_null(date), "missing_date"),
                  (pc.greater(date, pa.scalar(latest)), "future_date"),
                  (pc.less(date, pa.scalar(EARLIEST)), "date_before_1900")]
        if birth_month is not None:
            pids, months = birth_month
            born = pc.take(months, pc.index_in(table["patient_pid"], value_set=pids))
            rules.append((pc.less(date, born), "before_birth"))
        if table_name in _CODED:
            rules.append((pc.invert(codes_valid(table["code_system"].combine_chunks(),
                                                table["code"].combine_chunks())), "invalid_code"))
        rules.append((_duplicates(table["record_id"].combine_chunks()), "duplicate_record"))
        if known_patients is not None:
            rules.append((pc.invert(pc.is_in(table["patient_pid"], value_set=known_patients)), "unknown_patient"))
    return pc.coalesce(table[ISSUE].combine_chunks(), _first(n, rules))


def _suite(table_name: str, practice: str, today: dt.date, empty: set[str] = frozenset()) -> list:
    """The expectations for one table. Min/max bounds apply to columns with at least one value
    (``empty`` names the all-null ones: GX cannot take the minimum of nothing)."""
    import great_expectations as gx

    e = gx.expectations
    schema = CURATED[table_name]
    exps = [e.ExpectTableColumnsToMatchSet(column_set=schema.names, exact_match=True),
            e.ExpectColumnValuesToBeInSet(column=PARTITION, value_set=[practice])]
    for f in schema:
        if not f.nullable:
            exps.append(e.ExpectColumnValuesToNotBeNull(column=f.name))
        if f.name.endswith("_pid") or f.name in ("record_id", "authorisation_id"):
            exps.append(e.ExpectColumnValuesToMatchRegex(column=f.name, regex=PSEUDONYM_REGEX))
        if pa.types.is_date32(f.type) and f.name not in empty:
            exps.append(e.ExpectColumnMinToBeBetween(column=f.name, min_value=dt.datetime(1900, 1, 1)))
            if f.name != "due_date":
                latest = today + dt.timedelta(days=FUTURE_ALLOWANCE_DAYS.get(table_name, 0))
                exps.append(e.ExpectColumnMaxToBeBetween(
                    column=f.name, max_value=dt.datetime.combine(latest, dt.time())))
        if f.name in _VALUE_SETS:
            exps.append(e.ExpectColumnValuesToBeInSet(column=f.name, value_set=_VALUE_SETS[f.name]))
    key = {"patients": "patient_pid", "practitioners": "practitioner_pid"}.get(table_name, "record_id")
    exps.append(e.ExpectColumnValuesToBeUnique(column=key))
    return exps


def _gx_context():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(),
                               progress_bars=ProgressBarsConfig(globally=False))
    return gx.get_context(mode="ephemeral", project_config=config)


def run_suites(tables: dict[str, pa.Table], practice: str, today: dt.date) -> list[dict]:
    """Validate each table with its suite. Results keep counts only: no row values, ever."""
    import great_expectations as gx

    ctx = _gx_context()
    source = ctx.data_sources.add_pandas("gpdata")
    results = []
    for name, table in tables.items():
        batch = source.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe("batch")
        empty = {c for c in table.column_names if table[c].null_count == table.num_rows}
        suite = ctx.suites.add(gx.ExpectationSuite(name=f"gpdata_{name}",
                                                   expectations=_suite(name, practice, today, empty)))
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=f"gpdata_{name}", data=batch, suite=suite))
        outcome = vd.run(batch_parameters={"dataframe": table.to_pandas(date_as_object=False)},
                         result_format={"result_format": "SUMMARY", "partial_unexpected_count": 0})
        for er in outcome.results:
            results.append({
                "table": name,
                "expectation": er.expectation_config.type,
                "column": er.expectation_config.kwargs.get("column"),
                "success": bool(er.success),
                "unexpected_count": (er.result or {}).get("unexpected_count"),
                "element_count": (er.result or {}).get("element_count"),
            })
    return results


def gate(staged: dict[str, pa.Table], practice: str, run_id: str, *, today: dt.date,
         max_quarantine_fraction: float = 0.05, quarantine_allowance: int = 10) -> GateResult:
    """Quarantine failing rows, validate the rest with Great Expectations, decide the batch.

    A table fails the batch when its quarantined rows exceed both ``max_quarantine_fraction`` of its rows
    and ``quarantine_allowance`` rows."""
    quarantined: list[pa.Table] = []
    passed: dict[str, pa.Table] = {}
    counts: dict = {"rows_in": {}, "rows_passed": {}, "quarantined": {}}
    failures: list[str] = []
    patient_pids = birth = None
    for name in TABLES:  # patients first: events are checked against the patients that passed
        table = staged[name]
        reasons = row_reasons(name, table, today,
                              birth_month=birth, known_patients=patient_pids)
        bad = pc.is_valid(reasons)
        clean = table.filter(pc.invert(bad))
        passed[name] = clean.select(CURATED[name].names).cast(CURATED[name])
        if name == "patients":
            patient_pids = clean["patient_pid"].combine_chunks()
            birth = (patient_pids, clean["birth_month"].combine_chunks())
        rejected = table.filter(bad)
        rej_reasons = reasons.filter(bad)
        n_bad = rejected.num_rows
        counts["rows_in"][name] = table.num_rows
        counts["rows_passed"][name] = clean.num_rows
        by_reason = {}
        if n_bad:
            vc = pc.value_counts(rej_reasons)
            by_reason = {v["values"]: v["counts"] for v in vc.to_pylist()}
            quarantined.append(pa.Table.from_arrays(
                [_const(practice, n_bad), _const(name, n_bad), rejected[POSITION[0]], rejected[POSITION[1]],
                 rej_reasons, _const(run_id, n_bad)], schema=QUARANTINE_SCHEMA))
        counts["quarantined"][name] = dict(sorted(by_reason.items()))
        if n_bad > quarantine_allowance and n_bad / table.num_rows > max_quarantine_fraction:
            failures.append(f"{name}: {n_bad} of {table.num_rows} rows quarantined "
                            f"({n_bad / table.num_rows:.1%} > threshold {max_quarantine_fraction:.1%}): "
                            + ", ".join(f"{k} {v}" for k, v in sorted(by_reason.items())))
    expectations = run_suites(passed, practice, today)
    for r in expectations:
        if not r["success"]:
            failures.append(f"{r['table']}: expectation {r['expectation']}"
                            f"{' on ' + r['column'] if r['column'] else ''} failed"
                            f"{'' if r['unexpected_count'] is None else ' (' + str(r['unexpected_count']) + ' rows)'}")
    counts["expectations"] = {"evaluated": len(expectations),
                              "failed": sum(1 for r in expectations if not r["success"])}
    quarantine = pa.concat_tables(quarantined) if quarantined else QUARANTINE_SCHEMA.empty_table()
    return GateResult(passed=passed, quarantine=quarantine, counts=counts, expectations=expectations,
                      failures=failures)
