"""Ground truth: NHS numbers, opt-outs, dirty records, NDOP list and record volumes."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from gpdata.synth import DEFAULT_TODAY as TODAY
from gpdata.synth import DIRTY_KEYS, generate_practice
from gpdata.synth import codes as C
from gpdata.synth.checks import nhs_number_in_test_range, nhs_number_valid, verhoeff_valid
from gpdata.synth.readback import PRACTICE_TYPES, Practice, event_dates, optout_state, patient_id_of, recount


def _nhs_values(p: Practice) -> list[str]:
    return [r["identifier"][0]["value"] for r in p.patients().values()]


def test_nhs_numbers_valid_except_counted(dirty_run: Any) -> None:
    total_invalid = 0
    for p, truth in zip(dirty_run.practices, dirty_run.truths, strict=True):
        values = _nhs_values(p)
        assert len(values) == truth.n_patients == 250
        bad = [v for v in values if not (nhs_number_valid(v) and nhs_number_in_test_range(v))]
        assert len(bad) == truth.n_invalid_nhs_number == truth.dirty["invalid_nhs_number"]
        total_invalid += len(bad)
        for v in values:
            digits = v.replace(" ", "")
            assert v == digits or v == f"{digits[:3]} {digits[3:6]} {digits[6:]}"
    assert total_invalid > 0


def test_nhs_number_formats(default_practice: Any) -> None:
    values = _nhs_values(default_practice.practice)
    spaced = [v for v in values if " " in v]
    assert 0.04 < len(spaced) / len(values) < 0.2
    assert all(len(v) == 12 for v in spaced)


def test_nhs_numbers_unique_across_practices(dirty_run: Any) -> None:
    numbers = [v.replace(" ", "") for p in dirty_run.practices for v in _nhs_values(p)]
    valid = [v for v in numbers if nhs_number_valid(v)]
    assert len(valid) == len(set(valid))
    assert len(numbers) == len(set(numbers))


def test_clean_practice_has_no_dirt(clean_practice: Any) -> None:
    p, truth = clean_practice.practice, clean_practice.truth
    assert truth.dirty == dict.fromkeys(DIRTY_KEYS, 0)
    assert truth.n_invalid_nhs_number == 0
    assert all(nhs_number_valid(v) and nhs_number_in_test_range(v) for v in _nhs_values(p))
    ids = [r["id"] for _, _, r in p.entries()]
    assert len(ids) == len(set(ids))
    lib_codes = C.CodeLibrary().valid_codes()
    patients = p.patients()
    today = TODAY.isoformat()
    for r in p.clinical():
        pat = patients[patient_id_of(r)]
        last = pat.get("deceasedDateTime", "9999")[:10]
        for d, future_ok in event_dates(r):
            assert d >= pat["birthDate"], r
            if not future_ok:
                assert d < today and d <= last, r
        if r["resourceType"] == "Appointment" and r["status"] != "booked":
            assert r["start"][:10] < today and r["start"][:10] <= last
        for key in ("code", "vaccineCode", "medicationCodeableConcept"):
            for c in r.get(key, {}).get("coding", []):
                assert (c["system"], c["code"]) in lib_codes, c
                if c["system"] in (C.SNOMED, C.DMD):
                    assert verhoeff_valid(c["code"])
    rc = recount(p, TODAY)
    assert rc.dirty == truth.dirty


def test_deceased_patients_have_no_future_bookings(default_practice: Any) -> None:
    p = default_practice.practice
    patients = p.patients()
    dead = {k for k, r in patients.items() if "deceasedDateTime" in r}
    assert dead
    for r in p.clinical():
        if r["resourceType"] == "Appointment" and patient_id_of(r) in dead:
            assert r["status"] != "booked"


def test_truth_matches_files(dirty_run: Any) -> None:
    for p, truth in zip(dirty_run.practices, dirty_run.truths, strict=True):
        rc = recount(p, TODAY)
        assert rc.n_patients == truth.n_patients
        assert rc.resources == truth.resources
        assert rc.dirty == truth.dirty
        assert rc.n_optout_active == truth.n_optout_active
        assert rc.n_optout_withdrawn == truth.n_optout_withdrawn
        for kind in DIRTY_KEYS:
            assert truth.dirty[kind] > 0, kind
        assert set(truth.dirty) == set(DIRTY_KEYS)


def test_dirty_volume_near_fraction(default_practice: Any) -> None:
    truth = default_practice.truth
    records = sum(v for k, v in truth.resources.items() if k not in PRACTICE_TYPES)
    dirty = sum(truth.dirty.values())
    assert 0.005 < dirty / records < 0.02


def test_duplicates_are_exact_copies(dirty_run: Any) -> None:
    for p in dirty_run.practices:
        first: dict[str, dict] = {}
        dups = 0
        for _, e, r in p.entries():
            if r["id"] in first:
                assert r == first[r["id"]]
                assert e["fullUrl"] == f"urn:uuid:{r['id']}"
                dups += 1
            else:
                first[r["id"]] = r
        assert dups > 0


def test_duplicates_may_cross_bundles(tmp_path: Path) -> None:
    folder = tmp_path / "x"
    truth, _ = generate_practice(folder, "F81000", n_patients=120, seed=2, events_per_patient=30.0,
                                 dirty_fraction=0.05, bundle_size=20)
    p = Practice(folder)
    where: dict[str, set[int]] = {}
    for b, _, r in p.entries():
        where.setdefault(r["id"], set()).add(b)
    assert any(len(v) > 1 for v in where.values())
    assert recount(p, TODAY).dirty == truth.dirty
    # patient resources (duplicates aside) still sit with their patient
    patients_in = {b: {r["id"] for r in (e["resource"] for e in bundle["entry"])
                       if r["resourceType"] == "Patient"} for b, bundle in enumerate(p.bundles)}
    for b, _, r in p.entries():
        if r["resourceType"] not in PRACTICE_TYPES and r["resourceType"] != "Patient":
            assert patient_id_of(r) in patients_in[b] or len(where[r["id"]]) > 1


def test_optout_truth(dirty_run: Any) -> None:
    systems = Counter()
    for p, truth in zip(dirty_run.practices, dirty_run.truths, strict=True):
        assert truth.n_optout_active > 0 and truth.n_optout_withdrawn > 0
        ratio = (truth.n_optout_active + truth.n_optout_withdrawn) / truth.n_patients
        assert 0.04 < ratio < 0.2  # optout_fraction=0.1
        for r in p.clinical():
            if r["resourceType"] == "Observation":
                c = r["code"]["coding"][0]
                if c["code"] in C.OPTOUT_DISSENT_CODES | C.OPTOUT_WITHDRAWN_CODES:
                    systems[c["system"]] += 1
                    assert r["effectiveDateTime"][:10] >= "2013-06-01"
    assert systems[C.SNOMED] > systems[C.READ_V2] > 0 and systems[C.CTV3] > 0


def test_optout_default_fraction(default_practice: Any) -> None:
    t = default_practice.truth
    assert 0.01 <= (t.n_optout_active + t.n_optout_withdrawn) / t.n_patients <= 0.06
    rc = recount(default_practice.practice, TODAY)
    assert (rc.n_optout_active, rc.n_optout_withdrawn) == (t.n_optout_active, t.n_optout_withdrawn)


def test_ndop_subset_of_valid_numbers(dirty_run: Any) -> None:
    lines = (dirty_run.root / "reference" / "ndop.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "nhs_number"
    ndop = lines[1:]
    assert ndop == sorted(set(ndop))
    valid = {v.replace(" ", "") for p in dirty_run.practices for v in _nhs_values(p)
             if nhs_number_valid(v)}
    assert set(ndop) <= valid
    assert all(len(v) == 10 and v.isdigit() for v in ndop)
    assert abs(len(ndop) - 0.2 * len(valid)) <= 1
    # drawn from both practices
    per = [{v.replace(" ", "") for v in _nhs_values(p)} for p in dirty_run.practices]
    assert all(set(ndop) & s for s in per)


def _records_per_patient(p: Practice) -> np.ndarray:
    counts = Counter(patient_id_of(r) for r in p.clinical())
    return np.array([counts[k] for k in p.patients()])


def test_mean_events_near_target(default_practice: Any) -> None:
    per = _records_per_patient(default_practice.practice)
    assert 90 <= per.mean() <= 110
    assert np.median(per) < per.mean()  # skewed: a minority of heavy users


def test_mean_events_other_target(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    generate_practice(folder, "G81000", n_patients=300, seed=4, events_per_patient=30.0)
    per = _records_per_patient(Practice(folder))
    assert 27 <= per.mean() <= 33


def test_older_and_multimorbid_patients_have_more_records(default_practice: Any) -> None:
    p = default_practice.practice
    counts = Counter(patient_id_of(r) for r in p.clinical())
    n_cond = Counter(patient_id_of(r) for r in p.clinical() if r["resourceType"] == "Condition")
    young, old, multi, none = [], [], [], []
    for pid, r in p.patients().items():
        age = (TODAY - dt.date.fromisoformat(r["birthDate"])).days / 365.25
        (old if age >= 65 else young if 18 <= age < 40 else []).append(counts[pid])
        (multi if n_cond[pid] >= 2 else none if n_cond[pid] == 0 else []).append(counts[pid])
    assert np.mean(old) > 1.5 * np.mean(young)
    assert np.mean(multi) > 1.5 * np.mean(none)


def test_demographics_are_plausible(default_practice: Any) -> None:
    patients = list(default_practice.practice.patients().values())
    ages = np.array([(TODAY - dt.date.fromisoformat(r["birthDate"])).days / 365.25 for r in patients])
    assert ages.min() >= 0 and ages.max() < 101.5
    assert 30 < np.median(ages) < 50
    genders = Counter(r["gender"] for r in patients)
    assert genders["male"] > 100 and genders["female"] > 100
    eth = [x for r in patients for x in r["extension"] if x["url"] == C.ETHNIC_EXT_URL]
    assert 0.8 < len(eth) / len(patients) < 0.97
    dead = sum("deceasedDateTime" in r for r in patients)
    assert 0 < dead < 15


def test_no_date_reveals_the_date_of_birth(default_practice: Any) -> None:
    """The pipeline keeps event and registration dates at day precision and scans them for dates of birth."""
    p = default_practice.practice
    patients = p.patients()
    for r in patients.values():  # (impossible dates, before birth on purpose, are at least 200 days before it)
        for x in r["extension"]:
            if x["url"] == C.REGISTRATION_EXT_URL:
                assert r["birthDate"] not in x["extension"][0]["valuePeriod"].values()
        if "deceasedDateTime" in r:
            assert r["deceasedDateTime"][:10] != r["birthDate"]
    for r in p.clinical():
        birth = patients[patient_id_of(r)]["birthDate"]
        assert all(d != birth for d, _ in event_dates(r)), r


def test_dirty_dates_are_unambiguous(dirty_run: Any) -> None:
    """Dirty 'before birth' dates precede the birth month; dirty future dates are years ahead."""
    far = (TODAY + dt.timedelta(days=3 * 365)).isoformat()
    n_before = n_future = 0
    for p in dirty_run.practices:
        patients = p.patients()
        for r in p.clinical():
            birth = patients[patient_id_of(r)]["birthDate"]
            for d, future_ok in event_dates(r):
                if d < birth:
                    assert d < birth[:8] + "01" and d > "1900-12-31"
                    n_before += 1
                if d > TODAY.isoformat() and not future_ok:
                    assert d >= far
                    n_future += 1
    assert n_before and n_future


def test_dirt_is_kept_apart_from_optouts_and_invalid_numbers(dirty_run: Any) -> None:
    """So a pipeline's row-level quarantine counts can equal truth.dirty: each dirty record is on a patient
    whose records are checked row by row (valid NHS number, not opted out)."""
    for p in dirty_run.practices:
        patients = p.patients()
        obs: dict[str, list[dict]] = {}
        for r in p.clinical():
            if r["resourceType"] == "Observation":
                obs.setdefault(patient_id_of(r), []).append(r)
        state = {k: optout_state(obs.get(k, [])) for k in patients}
        invalid = {k for k, r in patients.items() if not nhs_number_valid(r["identifier"][0]["value"])}
        assert invalid and any(v == "active" for v in state.values())
        assert all(state[k] is None for k in invalid)
        seen: set[str] = set()
        for _, _, r in p.entries():
            if r["resourceType"] in PRACTICE_TYPES:
                continue
            pid = r["id"] if r["resourceType"] == "Patient" else patient_id_of(r)
            birth = patients[pid]["birthDate"]
            dirty = r["id"] in seen or any(d < birth or (d > TODAY.isoformat() and not ok)
                                           for d, ok in event_dates(r))
            for key in ("code", "vaccineCode", "medicationCodeableConcept"):
                for c in r.get(key, {}).get("coding", []):
                    dirty |= c["system"] in (C.SNOMED, C.DMD) and not verhoeff_valid(c["code"])
            seen.add(r["id"])
            if dirty:
                assert pid not in invalid and state[pid] != "active"
