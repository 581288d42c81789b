"""Re-identification risk of an extract: what a motivated intruder could learn from it.

Measured on the extract's patients (one record each) over its quasi-identifiers, the patient attributes a
neighbour could know (birth, sex, ethnicity, area, registration and death dates):

* k-anonymity: the size of the smallest equivalence class (patients sharing every quasi-identifier), the
  median class size of a record, and the share of records in classes below 5 and below 10 (and unique, k=1);
* l-diversity of one declared sensitive attribute: the fewest distinct values (a patient with none counts as
  one value, "none") among the records of a class;
* the count of rare codes (held by fewer than the project's ``rare_codes.min_patients`` patients);
* a simulated linkage: an auxiliary table a neighbour could know (birth year, sex, area), generalised to what
  the extract shows, matched against the extract. ``unique_match_share`` is the share of extract patients whose
  auxiliary key matches exactly one extract record; ``certain_match_share`` those whose key is also unique in
  the whole population of the release (the intruder cannot be wrong).

Counts here are exact: the report is access-controlled like the manifest (docs/disclosure.md); the register
carries only the suppressed summary.
"""

from __future__ import annotations

import statistics

import pyarrow as pa
import pyarrow.compute as pc

QUASI_IDENTIFIERS = ("birth_month", "birth_year", "birth_band", "sex", "ethnic_category", "ethnic_group",
                     "lsoa_code", "msoa_code",
                     "lad_code", "postcode_district", "registration_date", "death_month")
AREA_COLUMNS = ("lsoa_code", "msoa_code", "lad_code", "postcode_district")
BIRTH_COLUMNS = ("birth_month", "birth_year", "birth_band")


def quasi_identifiers(patients: pa.Table | None) -> list[str]:
    return [c for c in QUASI_IDENTIFIERS if patients is not None and c in patients.column_names]


def class_sizes(patients: pa.Table, qis: list[str]) -> pa.Array:
    """Per record (row of ``patients``), the size of its equivalence class over ``qis`` (nulls are a value)."""
    if not qis:
        return pa.array([patients.num_rows] * patients.num_rows, pa.int64())
    keyed = _class_ids(patients, qis)
    sizes = pc.value_counts(keyed)
    return pc.take(sizes.field("counts"), pc.index_in(keyed, value_set=sizes.field("values")))


def _class_ids(patients: pa.Table, qis: list[str]) -> pa.Array:
    parts = [pc.fill_null(patients[c].combine_chunks().cast(pa.string()), "\x00") for c in qis]
    return pc.binary_join_element_wise(*parts, "\x1f") if len(parts) > 1 else parts[0]


def k_anonymity(patients: pa.Table, qis: list[str]) -> dict:
    n = patients.num_rows
    if not n:
        return {"records": 0, "classes": 0, "k": None, "median_k": None, "unique_share": 0.0,
                "share_below_5": 0.0, "share_below_10": 0.0}
    sizes = class_sizes(patients, qis).to_pylist()
    return {"records": n, "classes": len(set(_class_ids(patients, qis).to_pylist())) if qis else 1,
            "k": min(sizes), "median_k": statistics.median(sizes),
            "unique_share": _share(sum(s == 1 for s in sizes), n),
            "share_below_5": _share(sum(s < 5 for s in sizes), n),
            "share_below_10": _share(sum(s < 10 for s in sizes), n)}


def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def l_diversity(patients: pa.Table, qis: list[str], values: pa.Table, column: str) -> dict:
    """The fewest distinct values of ``column`` (rows of ``values``, by ``patient_pid``) in any class."""
    if not patients.num_rows:
        return {"attribute": column, "l": None, "classes_below_2": 0}
    ids = _class_ids(patients, qis) if qis else pa.array(["all"] * patients.num_rows)
    pids = patients["patient_pid"].combine_chunks()
    at = pc.index_in(values["patient_pid"], value_set=pids)
    mine = values.filter(pc.is_valid(at))
    rows = pa.table({"cls": pc.take(ids, pc.index_in(mine["patient_pid"], value_set=pids)),
                     "value": mine[column].combine_chunks().cast(pa.string())})
    without = pc.invert(pc.is_in(pids, value_set=mine["patient_pid"].combine_chunks()))
    rows = pa.concat_tables([rows, pa.table({"cls": ids.filter(without),
                                             "value": pa.nulls(pc.sum(without).as_py() or 0, pa.string())})])
    per = rows.group_by("cls").aggregate([("value", "count_distinct", pc.CountOptions(mode="all"))])
    counts = per["value_count_distinct"].to_pylist()
    return {"attribute": column, "l": min(counts), "classes_below_2": sum(c < 2 for c in counts)}


def _aux_key(table: pa.Table) -> tuple[list[str], pa.Table]:
    """The neighbour's key (birth year, sex, area) as the extract shows it: birth at the extract's precision
    when coarser than a year, else the year."""
    cols, out = [], {}
    birth = next((c for c in BIRTH_COLUMNS if c in table.column_names), None)
    if birth == "birth_month":
        out["birth"] = pc.year(table[birth]).cast(pa.string())
    elif birth:
        out["birth"] = table[birth].cast(pa.string())
    if "sex" in table.column_names:
        out["sex"] = table["sex"]
    area = next((c for c in AREA_COLUMNS if c in table.column_names), None)
    if area:
        out["area"] = table[area]
    cols = list(out)
    return cols, pa.table(out) if out else pa.table({"none": pa.nulls(table.num_rows, pa.string())})


def linkage(patients: pa.Table, population: pa.Table | None) -> dict:
    """Match the auxiliary key of every extract patient against the extract (and the population)."""
    n = patients.num_rows
    cols, aux = _aux_key(patients)
    if not n or not cols:
        return {"auxiliary": cols, "unique_match_share": 0.0, "certain_match_share": 0.0}
    in_extract = class_sizes(aux, cols)
    unique = pc.equal(in_extract, 1)
    result = {"auxiliary": cols, "unique_match_share": _share(pc.sum(unique).as_py() or 0, n)}
    if population is not None and population.num_rows:
        pcols, paux = _aux_key(population)
        if pcols == cols:
            keys, pkeys = _class_ids(aux, cols), _class_ids(paux, cols)
            counts = pc.value_counts(pkeys)
            in_pop = pc.take(counts.field("counts"), pc.index_in(keys, value_set=counts.field("values")))
            certain = pc.and_(unique, pc.fill_null(pc.equal(in_pop, 1), False))
            result["certain_match_share"] = _share(pc.sum(certain).as_py() or 0, n)
    return result


def suppress_small_classes(patients: pa.Table, qis: list[str], k: int) -> tuple[pa.Table, int]:
    """Local suppression: blank every quasi-identifier of the records in classes below ``k``, adding the next
    smallest classes while the blanked records are themselves fewer than ``k``. Returns (table, records blanked)."""
    if not qis or not patients.num_rows:
        return patients, 0
    ids = _class_ids(patients, qis)
    counts = pc.value_counts(ids).to_pylist()
    counts.sort(key=lambda c: (c["counts"], c["values"]))
    chosen, blanked = [], 0
    for c in counts:
        if c["counts"] < k or (0 < blanked < k):
            chosen.append(c["values"])
            blanked += c["counts"]
    if not chosen:
        return patients, 0
    hit = pc.is_in(ids, value_set=pa.array(chosen, pa.string()))
    for c in qis:
        i = patients.schema.get_field_index(c)
        patients = patients.set_column(i, c, pc.if_else(hit, pa.scalar(None, patients.schema.field(i).type),
                                                        patients[c]))
    return patients, blanked


def report(patients: pa.Table | None, tables: dict[str, pa.Table], *, population: pa.Table | None,
           sensitive: tuple[str, str] | None, rare: dict, minimum_k: int) -> dict:
    """The risk report of one extract (curated pseudonyms or project ones: only equality is used)."""
    qis = quasi_identifiers(patients)
    if patients is None:
        pids = pa.concat_arrays([t["patient_pid"].combine_chunks().cast(pa.string()) for t in tables.values()
                                 if "patient_pid" in t.column_names] or [pa.array([], pa.string())])
        patients = pa.table({"patient_pid": pc.unique(pids)})
    k = k_anonymity(patients, qis)
    out = {"quasi_identifiers": qis, "minimum_k": minimum_k, **k,
           "meets_minimum_k": k["k"] is None or k["k"] >= minimum_k,
           "rare_codes": rare, "linkage": linkage(patients, population)}
    remaining = 0
    for t in tables.values():
        if "code" in t.column_names and "patient_pid" in t.column_names and t.num_rows:
            held = t.group_by("code").aggregate([("patient_pid", "count_distinct")])
            remaining += pc.sum(pc.less(held["patient_pid_count_distinct"], rare.get("min_patients", 8))).as_py() or 0
    out["rare_codes"] = {**rare, "remaining": remaining}
    if sensitive:
        table, column = sensitive
        values = patients if table == "patients" else tables.get(table)
        if values is not None:
            out["l_diversity"] = l_diversity(patients, qis, values, column)
    return out
