"""The naive baseline: what the obvious implementation of the same job looks like, written here for comparison.

pandas reads each file of a flat-file delivery, drops type 1 opt-outs, computes every pseudonym with a
row-wise ``DataFrame.apply`` (one HMAC per row and field, no reuse), validates each whole frame with the same
Great Expectations suites as gpdata (gpdata.quality.suites), and writes it with ``to_parquet`` (zstd). No quarantine
of single rows, no commit to Delta: it does less than the pipeline.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import time
from pathlib import Path


def _nhs_ok(value) -> str | None:
    if not isinstance(value, str):
        return None
    digits = value.replace(" ", "").replace("-", "")
    if len(digits) != 10 or not digits.isdigit():
        return None
    check = 11 - sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1), strict=True)) % 11
    check = 0 if check == 11 else check
    return digits if check != 10 and check == int(digits[9]) else None


def run_naive(folder: Path, ods: str, fmt: str, work: Path) -> dict:
    import pandas as pd

    from gpdata import codes
    from gpdata.ingest.dialects import load_dialect
    from gpdata.model import CURATED, EVENT_TABLES, PARTITION, TABLES
    from gpdata.privacy.keys import load_master_key
    from gpdata.quality import rules, suites
    from gpdata.synth.exports import FIRST_STAMP

    dialect = load_dialect(fmt)
    master = load_master_key()
    keys = {f: master.derive(f) for f in ("nhs_number", "date_of_birth", "postcode", "practitioner", "record_id")}

    def h(field: str, value) -> str | None:
        if value is None or value != value:
            return None
        return hmac.new(keys[field], str(value).encode(), hashlib.sha256).hexdigest()

    today = dt.date.today()
    lookup = pd.read_csv(work / "reference" / "postcode_lsoa.csv", dtype=str)
    lsoa_of = dict(zip(lookup["postcode"].str.replace(" ", "").str.upper(), lookup["lsoa_code"], strict=True))
    optout = codes.optout_codes()
    out = work / "naive"
    out.mkdir(parents=True, exist_ok=True)
    import great_expectations as gx

    t0 = time.perf_counter()
    ctx = rules._gx_context(None, None)
    source = ctx.data_sources.add_pandas("naive")
    frames, rows = {}, 0
    for name in TABLES:
        path = folder / dialect.file_name.format(practice=ods, source=dialect.tables[name].source, stamp=FIRST_STAMP)
        df = pd.read_csv(path, sep=dialect.delimiter, dtype=str, keep_default_na=False, na_values=[""])
        rows += len(df)
        df = df[df[dialect.deleted.column] != dialect.deleted.when_deleted]
        df = df.rename(columns={src: canon for canon, src in dialect.tables[name].columns.items()})
        for col in df.columns:
            if col in ("event_date", "birth_date", "registration_date", "deceased_date", "due_date"):
                df[col] = pd.to_datetime(df[col], format=dialect.date_format, errors="coerce")
            elif col == "start_time":
                df[col] = pd.to_datetime(df[col], format=dialect.datetime_format, errors="coerce").dt.tz_localize("UTC")
            elif col in ("value", "quantity", "duration_minutes"):
                df[col] = pd.to_numeric(df[col], errors="coerce")
            elif col == "code_system":
                df[col] = df[col].map(lambda v: dialect.code_systems.get(v, v))
        frames[name] = df
    # type 1: the latest dissent or withdrawal code of each patient decides
    obs = frames["observations"]
    key = obs["code_system"].fillna("") + "|" + obs["code"].fillna("")
    marks = obs[key.isin(optout.dissent | optout.withdrawn)].assign(dissent=key.isin(optout.dissent))
    latest = marks.sort_values(["event_date", "dissent"]).groupby("patient_ref").tail(1)
    dissenters = set(latest.loc[latest["dissent"], "patient_ref"])
    frames["patients"] = frames["patients"][~frames["patients"]["source_id"].isin(dissenters)]
    for name in EVENT_TABLES:
        frames[name] = frames[name][~frames[name]["patient_ref"].isin(dissenters)]
    nhs_of = {r: _nhs_ok(n) for r, n in zip(frames["patients"]["source_id"], frames["patients"]["nhs_number"],
                                             strict=True)}
    pr = frames["practitioners"]
    prac_of = {r: (s if isinstance(s, str) else r) for r, s in zip(pr["source_id"], pr["sds_user_id"], strict=True)}
    role_of = dict(zip(pr["source_id"], pr["role_code"], strict=True))

    def patient_row(r):
        postcode = r["postcode"].replace(" ", "").upper() if isinstance(r["postcode"], str) else None
        dob = r["birth_date"]
        return (h("nhs_number", _nhs_ok(r["nhs_number"])),
                h("date_of_birth", None if pd.isna(dob) else dob.strftime("%Y-%m-%d")),
                h("postcode", postcode), lsoa_of.get(postcode), postcode[:-3] if postcode else None)

    def event_row(r):
        return (h("record_id", r["source_id"]), h("nhs_number", nhs_of.get(r["patient_ref"])),
                h("practitioner", prac_of.get(r["practitioner_ref"])))

    curated = {}
    for name in TABLES:
        df = frames[name].copy()
        if name == "patients":
            df[["patient_pid", "dob_pid", "postcode_pid", "lsoa_code", "postcode_district"]] = \
                df.apply(patient_row, axis=1, result_type="expand") if len(df) else None
            df["birth_month"] = df["birth_date"].dt.to_period("M").dt.to_timestamp()
            df["death_month"] = df["deceased_date"].dt.to_period("M").dt.to_timestamp()
            df["sex"] = df["gender"]
        elif name == "practitioners":
            df["practitioner_pid"] = df.apply(lambda r: h("practitioner", prac_of.get(r["source_id"])), axis=1)
        else:
            if len(df):
                df[["record_id", "patient_pid", "practitioner_pid"]] = df.apply(event_row, axis=1,
                                                                               result_type="expand")
            else:
                df = df.assign(record_id=None, patient_pid=None, practitioner_pid=None)
            if name == "medications":
                df["authorisation_id"] = df.apply(lambda r: h("record_id", r["authorisation_ref"]), axis=1) \
                    if len(df) else None
            if name == "appointments":
                df["staff_role"] = df["practitioner_ref"].map(role_of)
        df[PARTITION] = ods
        df["key_version"] = master.version
        for col in CURATED[name].names:
            if col not in df.columns:
                df[col] = None
        curated[name] = df[CURATED[name].names]
    expectations = failed = 0
    for name, frame in curated.items():
        asset = source.add_dataframe_asset(name=name)
        batch = asset.add_batch_definition_whole_dataframe("batch")
        empty = frozenset(c for c in frame.columns if frame[c].isna().all())
        suite = ctx.suites.add(gx.ExpectationSuite(name=f"naive_{name}",
                                                   expectations=suites.suite(name, ods, today, empty)))
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=f"naive_{name}", data=batch, suite=suite))
        outcome = vd.run(batch_parameters={"dataframe": frame},
                         result_format={"result_format": "SUMMARY", "partial_unexpected_count": 0})
        expectations += len(outcome.results)
        failed += sum(1 for r in outcome.results if not r.success)
        frame.to_parquet(out / f"{name}.parquet", compression="zstd", index=False)
    seconds = time.perf_counter() - t0
    return {"rows": rows, "seconds": seconds, "expectations": {"evaluated": expectations, "failed": failed}}
