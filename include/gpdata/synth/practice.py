"""Synthetic GP practices written as FHIR R4 collection bundles (see the package docstring)."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import codes as C
from .identifiers import TAG_NDOP, TAG_SLOTS, IdStream, invalid_nhs_number, nhs_number_pool, spaced
from .identifiers import ods_codes as default_ods_codes
from .people import (
    CONDITION_ORDER,
    FAMILY_NAMES,
    FEMALE_NAMES,
    MALE_NAMES,
    N_SLOTS,
    ONSET,
    STREET_NAMES,
    STREET_TYPES,
    SURGERY_NAMES,
    build_area,
    prevalence,
    sample_ages,
)
from .records import BASE_ORD, FUTURE_MAX_DAYS, OPTOUT_START, TIMES, DateStrings, Person, RecordBuilder

DEFAULT_TODAY = dt.date(2026, 1, 1)
# Impossible patient dates (quarantined by the patient-level date rules), a few of each on otherwise clean patients.
PATIENT_DATE_KEYS = ("registration_before_birth", "death_before_birth", "death_before_registration",
                     "registration_end_before_start", "after_death")
DIRTY_KEYS = ("invalid_nhs_number", "future_date", "before_birth", "unknown_code", "duplicate", *PATIENT_DATE_KEYS)
AFTER_DEATH_DAYS = 120  # an event this long after death: beyond any month of death plus a grace period
GENERATE_BUNDLE_SIZE = 500  # bundle size used by generate()
EARLIEST_TODAY = dt.date(2011, 1, 1)  # births reach back 101 years, dirty dates 10 more; all after 1900
_DAYS_PER_YEAR = 365.25


@dataclass(frozen=True)
class PracticeTruth:
    """Ground truth about one generated practice, for tests.  Holds no identifiers."""

    ods_code: str
    n_patients: int  # Patient resources written, excluding duplicated copies
    n_optout_active: int  # patients whose latest dated type 1 code is a dissent code
    n_optout_withdrawn: int  # patients who had dissent and whose latest code is a withdrawal
    n_invalid_nhs_number: int  # patients written with an invalid NHS number
    resources: dict[str, int]  # resourceType -> count written (duplicates included)
    dirty: dict[str, int]  # kind -> count (see DIRTY_KEYS)


def _check_args(n_patients: int, events_per_patient: float, dirty_fraction: float, optout_fraction: float,
                bundle_size: int) -> None:
    if n_patients < 0:
        raise ValueError("n_patients must be >= 0")
    if bundle_size < 1:
        raise ValueError("bundle_size must be >= 1")
    if events_per_patient < 0:
        raise ValueError("events_per_patient must be >= 0")
    for name, v in (("dirty_fraction", dirty_fraction), ("optout_fraction", optout_fraction)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1")


def _today(today: dt.date | None) -> dt.date:
    if today is None:
        return DEFAULT_TODAY
    if isinstance(today, dt.datetime):
        return today.date()
    return today


def _slot(seed: int, index: int) -> int:
    perm = np.random.default_rng([seed, TAG_SLOTS]).permutation(N_SLOTS)
    return int(perm[index % N_SLOTS])


def generate_practice(out_dir: Path, ods_code: str, *, n_patients: int = 10_000, seed: int = 0,
                      events_per_patient: float = 100.0, dirty_fraction: float = 0.01,
                      optout_fraction: float = 0.03, bundle_size: int = 500, today: dt.date | None = None,
                      codelist_dir: Path | None = None) -> tuple[PracticeTruth, list[tuple[str, str]]]:
    """Write one practice's FHIR bundles into out_dir (created). Returns truth and the practice's
    (postcode, lsoa_code) pairs for the lookup.

    With bundle_size=500 the files are the ones `generate(root, seed=seed, ods_codes=[ods_code, ...])` writes
    for its first practice.  Any existing bundle-*.json in out_dir is removed first."""
    truth, pairs, _ = _generate_practice(
        Path(out_dir), ods_code, index=0, nhs_offset=0, n_patients=n_patients, seed=seed,
        events_per_patient=events_per_patient, dirty_fraction=dirty_fraction, optout_fraction=optout_fraction,
        bundle_size=bundle_size, today=_today(today), lib=C.CodeLibrary(codelist_dir))
    return truth, pairs


def area_lookup(lsoas: list[str]) -> str:
    """The LSOA -> MSOA -> local authority lookup of the synthetic LSOAs (``E01`` + 1000 + area*100 + j): five
    LSOAs to an MSOA, one local authority per area. CSV text: lsoa_code,msoa_code,lad_code."""
    lines = ["lsoa_code,msoa_code,lad_code"]
    for lsoa in lsoas:
        n = int(lsoa[3:]) - 1000
        area, j = divmod(n, 100)
        lines.append(f"{lsoa},E02{area * 100 + j // 5:06d},E08{area:06d}")
    return "\n".join(lines) + "\n"


def generate(root: Path, *, n_practices: int = 3, n_patients: int = 10_000, seed: int = 42,
             ods_codes: list[str] | None = None, events_per_patient: float = 100.0,
             dirty_fraction: float = 0.01, optout_fraction: float = 0.03, ndop_fraction: float = 0.05,
             today: dt.date | None = None, progress: Callable[[str], None] | None = None,
             codelist_dir: Path | None = None) -> list[PracticeTruth]:
    """Writes root/sources/<ODS>/bundle-NNNN.json for each practice, root/reference/postcode_lsoa.csv,
    root/reference/lsoa_areas.csv and root/reference/ndop.csv. Default ODS codes: deterministic from seed,
    format one letter + 5 digits (e.g. 'A81001'); all distinct. progress(msg) is called once per practice with
    a one-line message.

    When `ods_codes` is given it decides the number of practices (n_practices is then ignored)."""
    root = Path(root)
    if not 0.0 <= ndop_fraction <= 1.0:
        raise ValueError("ndop_fraction must be between 0 and 1")
    if ods_codes is None:
        if n_practices < 0:
            raise ValueError("n_practices must be >= 0")
        codes_ = default_ods_codes(seed, n_practices)
    else:
        codes_ = list(ods_codes)
        if len(set(codes_)) != len(codes_):
            raise ValueError("ods_codes must be distinct")
        for c in codes_:
            if not c or "/" in c or "\\" in c or c in (".", ".."):
                raise ValueError(f"unusable ODS code: {c!r}")
    _check_args(n_patients, events_per_patient, dirty_fraction, optout_fraction, GENERATE_BUNDLE_SIZE)
    if len(codes_) * n_patients > nhs_number_pool(seed).size:
        raise ValueError("more patients than valid NHS numbers in the test range (about 909,000)")
    today_ = _today(today)
    lib = C.CodeLibrary(codelist_dir)
    truths: list[PracticeTruth] = []
    lookup: set[tuple[str, str]] = set()
    valid_numbers: list[str] = []
    for i, ods in enumerate(codes_):
        t0 = time.perf_counter()
        truth, pairs, valid = _generate_practice(
            root / "sources" / ods, ods, index=i, nhs_offset=i * n_patients, n_patients=n_patients, seed=seed,
            events_per_patient=events_per_patient, dirty_fraction=dirty_fraction,
            optout_fraction=optout_fraction, bundle_size=GENERATE_BUNDLE_SIZE, today=today_, lib=lib)
        truths.append(truth)
        lookup.update(pairs)
        valid_numbers.extend(valid)
        if progress is not None:
            n_res = sum(truth.resources.values())
            progress(f"{ods}: {truth.n_patients} patients, {n_res} resources "
                     f"({i + 1}/{len(codes_)}, {time.perf_counter() - t0:.1f}s)")
    ref = root / "reference"
    ref.mkdir(parents=True, exist_ok=True)
    lines = ["postcode,lsoa_code"] + [f"{pc},{ls}" for pc, ls in sorted(lookup)]
    (ref / "postcode_lsoa.csv").write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
    (ref / "lsoa_areas.csv").write_bytes(area_lookup(sorted({ls for _, ls in lookup})).encode("utf-8"))
    valid_numbers.sort()
    rng = np.random.default_rng([seed, TAG_NDOP])
    k = round(ndop_fraction * len(valid_numbers))
    chosen = sorted(valid_numbers[i] for i in rng.choice(len(valid_numbers), size=k, replace=False).tolist())
    (ref / "ndop.csv").write_bytes(("\n".join(["nhs_number", *chosen]) + "\n").encode("utf-8"))
    return truths


# ----------------------------------------------------------------------------------------------------------
def _practitioners(rng: np.random.Generator, ids: IdStream,
                   ods: str) -> tuple[list[dict], list[tuple[str, str]]]:
    """8-15 Practitioners (and their PractitionerRoles) and (practitioner id, role kind) pairs."""
    counts = (("gp_partner", 2, 5), ("gp_salaried", 1, 4), ("gp_registrar", 0, 2), ("practice_nurse", 2, 4),
              ("nurse_practitioner", 0, 2), ("hca", 1, 3), ("pharmacist", 1, 2), ("paramedic", 0, 2))
    roles: list[str] = []
    for role, lo, hi in counts:
        roles += [role] * int(rng.integers(lo, hi))
    while len(roles) < 8:
        roles.append("gp_salaried")
    roles = roles[:15]
    resources: list[dict] = []
    roles_out: list[tuple[str, str]] = []
    role_resources: list[dict] = []
    for role in roles:
        code, display, kind = C.JOB_ROLES[role]
        female = rng.random() < 0.55
        given = (FEMALE_NAMES if female else MALE_NAMES)[int(rng.integers(100))]
        family = FAMILY_NAMES[int(rng.integers(len(FAMILY_NAMES)))]
        prefix = "Dr" if kind == "gp" or (kind == "pharmacist" and rng.random() < 0.3) else (
            "Ms" if female else "Mr")
        pid = ids.next()
        resources.append({"resourceType": "Practitioner", "id": pid,
                          "identifier": [{"system": C.SDS_USER_SYSTEM,
                                          "value": str(int(rng.integers(10**11, 10**12)))}],
                          "name": [{"family": family, "given": [given], "prefix": [prefix]}]})
        role_resources.append({"resourceType": "PractitionerRole", "id": ids.next(),
                               "practitioner": {"reference": f"Practitioner/{pid}"},
                               "organization": {"identifier": {"system": C.ODS_SYSTEM, "value": ods}},
                               "code": [{"coding": [{"system": C.SDS_JOB_ROLE_SYSTEM, "code": code,
                                                     "display": display}]}]})
        roles_out.append((pid, kind))
    return resources + role_resources, roles_out


def _generate_practice(out_dir: Path, ods: str, *, index: int, nhs_offset: int, n_patients: int, seed: int,
                       events_per_patient: float, dirty_fraction: float, optout_fraction: float,
                       bundle_size: int, today: dt.date, lib: C.CodeLibrary,
                       ) -> tuple[PracticeTruth, list[tuple[str, str]], list[str]]:
    _check_args(n_patients, events_per_patient, dirty_fraction, optout_fraction, bundle_size)
    if not ods or "/" in ods or "\\" in ods or ods in (".", ".."):
        raise ValueError(f"unusable ODS code: {ods!r}")
    pool = nhs_number_pool(seed)
    if nhs_offset + n_patients > pool.size:
        raise ValueError("more patients than valid NHS numbers in the test range (about 909,000)")
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("bundle-*.json"):
        old.unlink()

    today_ord = today.toordinal()
    if today < EARLIEST_TODAY:
        raise ValueError(f"today must be {EARLIEST_TODAY.isoformat()} or later")
    dates = DateStrings(today_ord + FUTURE_MAX_DAYS + 400)
    ss = np.random.SeedSequence([seed, index])
    s_main, s_ids, s_dirty = ss.spawn(3)
    rng = np.random.default_rng(s_main)
    drng = np.random.default_rng(s_dirty)
    ids = IdStream(np.random.default_rng(s_ids))
    area = build_area(_slot(seed, index))
    n = n_patients

    # ---------------------------------------------------------------- practice resources
    org = {"resourceType": "Organization", "id": ids.next(),
           "identifier": [{"system": C.ODS_SYSTEM, "value": ods}],
           "name": f"{SURGERY_NAMES[int(rng.integers(len(SURGERY_NAMES)))]} Surgery"}
    prac_resources, clinicians = _practitioners(rng, ids, ods)
    gp_refs = [{"reference": f"Practitioner/{pid}"} for pid, kind in clinicians if kind == "gp"]

    # ---------------------------------------------------------------- people (vectorised)
    end_default = today_ord - 1
    age = sample_ages(rng, n)
    birth = (end_default - np.maximum(np.floor(age * _DAYS_PER_YEAR), 1)).astype(np.int64)
    age = (today_ord - birth) / _DAYS_PER_YEAR
    gu = rng.random(n)
    gender = np.where(gu < 0.493, 0, np.where(gu < 0.993, 1, np.where(gu < 0.996, 2, 3)))  # m f other unknown
    male = np.where(gender >= 2, rng.random(n) < 0.5, gender == 0)
    raw = np.exp((age - 80.0) / 10.0)
    p_dead = np.clip(0.01 * raw / raw.mean(), 0, 0.6) if n else raw
    dead = rng.random(n) < p_dead
    d_lo = np.maximum(birth + 1, end_default - 3 * 365)
    death = d_lo + (rng.random(n) * (end_default - d_lo + 1)).astype(np.int64)
    end = np.where(dead, np.minimum(death, end_default), end_default)
    # registration start: a few weeks after birth for those registered since birth, otherwise some years ago;
    # never the date of birth itself (the pipeline keeps registration dates, so they must not reveal it)
    years_reg = rng.exponential(12.0, n)
    since_birth = (years_reg >= age) | (age < 1)
    reg = np.where(since_birth, birth + rng.integers(7, 61, n),
                   end_default - (years_reg * _DAYS_PER_YEAR).astype(np.int64))
    reg = np.clip(reg, birth + 1, end)

    # conditions
    prev = prevalence(age, male)
    cond_onset: dict[str, np.ndarray] = {}
    has: dict[str, np.ndarray] = {}
    for c in CONDITION_ORDER:
        mean_years, min_age = ONSET[c]
        h = (rng.random(n) < prev[c]) & (age >= min_age)
        if c == "ld":
            onset = birth + rng.integers(365, 6 * 365, n)
        else:
            yrs = np.minimum(rng.exponential(mean_years, n), np.maximum(age - min_age, 0))
            onset = end_default - (yrs * _DAYS_PER_YEAR).astype(np.int64)
        has[c] = h
        cond_onset[c] = np.clip(onset, birth + 1, end)
    has["dm2"] &= ~has["dm1"]
    n_chronic = sum(has[c].astype(np.int64) for c in CONDITION_ORDER) if n else np.zeros(0, dtype=np.int64)

    # smoking status
    su = rng.random(n)
    p_never = np.select([age < 18, age < 40, age < 65], [0.9, 0.6, 0.5], 0.45)
    p_ex = np.select([age < 18, age < 40, age < 65], [0.03, 0.22, 0.35], 0.47)
    smoke = np.where(su < p_never, 0, np.where(su < p_never + p_ex, 1, 2))
    smoke = np.where(has["copd"] & (smoke == 0), 1, smoke)

    # physiology baselines
    z = rng.standard_normal((5, n))
    hyp_f = has["hyp"].astype(float)
    sbp0 = 110 + 0.5 * np.maximum(age - 20, 0) + 10 * z[0] + 10 * hyp_f
    chol0 = 4.4 + 0.015 * age + 0.7 * z[1]
    hba0 = np.where(has["dm1"], 64 + 10 * z[2],
                    np.where(has["dm2"], 55 + 9 * z[2], 33 + 0.07 * age + 2.5 * z[2]))
    h_adult = np.where(male, 176 + 7 * z[3], 163 + 6.5 * z[3])
    bmi0 = np.clip(27 + 4.5 * z[4] + 3.5 * has["dm2"] + 1.5 * has["ld"], 16, 55)

    # ethnicity
    shares = np.array(C.ETHNIC_SHARES) / sum(C.ETHNIC_SHARES)
    eth_letter_idx = rng.choice(len(shares), size=n, p=shares)
    eu = rng.random(n)
    has_ext = eu < 0.9
    not_stated = eu < 0.045  # a share of those with the extension say "Z" (not stated)
    eth_group = np.where(has_ext & ~not_stated, eth_letter_idx, -1)
    ou = rng.random(n)
    n_eth_obs = np.where(eth_group >= 0, np.where(ou < 0.4, 0, np.where(ou < 0.9, 1, 2)), 0)

    # other fixed items
    au = rng.random(n)
    n_allergy = np.where(au < 0.13, 1, np.where(au < 0.15, 2, 0))
    so_obs = (age >= 16) & (rng.random(n) < 0.3)

    # type 1 opt-out patterns: 0 dissent, 1 withdrawal (strictly increasing dates)
    optout_lo = np.maximum(birth + 1, OPTOUT_START)
    eligible = (end - optout_lo) >= 60
    n_elig = int(eligible.sum())
    p_opt = min(1.0, optout_fraction * n / n_elig) if n_elig else 0.0
    opt = eligible & (rng.random(n) < p_opt)
    ou2 = rng.random((n, 3))
    patterns: list[tuple[int, ...]] = []
    for i in range(n):
        if not opt[i]:
            patterns.append(())
            continue
        pat = [0]
        if ou2[i, 0] < 0.05:
            pat.append(0)  # recorded twice
        if ou2[i, 1] < 0.25:
            pat.append(1)
            if ou2[i, 2] < 0.1:
                pat.append(0)  # opted out again later
        patterns.append(tuple(pat))
    n_optout_codes = np.array([len(x) for x in patterns], dtype=np.int64)

    # flexible record budget: mean total (fixed + flexible) per patient = events_per_patient
    fixed = n_chronic + n_allergy + n_eth_obs + so_obs + n_optout_codes
    base = np.interp(age, (0, 5, 15, 16, 40, 60, 75, 101), (1.0, 0.5, 0.4, 0.7, 0.8, 1.2, 1.8, 2.2))
    female_fertile = (~male) & (age >= 16) & (age < 46)
    w = base * (1 + 0.6 * n_chronic) * np.clip(age / 5, 0.2, 1.0) * np.where(female_fertile, 1.3, 1.0)
    flex_target = max(events_per_patient - float(fixed.mean()), 0.0) if n else 0.0
    lam = flex_target * w / w.mean() if n else w
    budget = rng.poisson(lam)

    # names, address, phone, NHS numbers, GP
    given1 = np.where(gender == 0, 0, np.where(gender == 1, 1, rng.integers(0, 2, n)))
    gi = rng.integers(0, 100, (n, 2))
    has_middle = rng.random(n) < 0.3
    fam = rng.integers(0, len(FAMILY_NAMES), n)
    house = rng.integers(1, 250, n)
    street = rng.integers(0, len(STREET_NAMES), n)
    stype = rng.integers(0, len(STREET_TYPES), n)
    flat = rng.random(n) < 0.08
    flat_no = rng.integers(1, 30, n)
    pc_idx = rng.integers(0, len(area.postcodes), n)
    phone = rng.integers(0, 1000, n)
    title_u = rng.random(n)
    gp_pick = rng.integers(0, len(gp_refs), n)
    death_slot = rng.integers(0, len(TIMES), n)
    nhs = [str(x) for x in pool[nhs_offset:nhs_offset + n].tolist()]
    spaced_mask = rng.random(n) < 0.1
    # Dirt is kept apart from opt-outs and from itself, so each dirty record has exactly one thing wrong
    # with it and is seen by a pipeline's row checks: NHS numbers are made invalid only for patients without
    # type 1 codes, and no other dirt goes on those patients or on patients who are opted out.
    active_optout = np.array([bool(x) and x[-1] == 0 for x in patterns], dtype=bool)
    invalid = (drng.random(n) < dirty_fraction) & (n_optout_codes == 0)
    inv_kind = drng.integers(0, 3, n)
    inv_digit = drng.integers(0, 10, n)
    dirty_ok = ~invalid & ~active_optout
    dup_patient = (drng.random(n) < dirty_fraction / 4) & dirty_ok

    # Impossible patient dates: from a stream of their own, so the other dirt is drawn as before; their patients
    # carry no other dirt (a quarantined patient's events are unknown patients, not before_birth)
    date_dirt = _patient_date_dirt(np.random.default_rng(ss.spawn(1)[0]), dirty_fraction,
                                   dirty_ok & ~dup_patient & (n_optout_codes == 0), dead, birth, reg, end, today_ord,
                                   budget)
    for i in date_dirt:
        dirty_ok[i] = False
    builder = RecordBuilder(lib, rng, drng, ids, clinicians, today_ord, dirty_fraction, dates)
    managing = {"identifier": {"system": C.ODS_SYSTEM, "value": ods}}
    genders = ("male", "female", "other", "unknown")

    counts: Counter[str] = Counter()
    dirty = dict.fromkeys(DIRTY_KEYS, 0)
    n_active = n_withdrawn = n_invalid = 0
    valid_out: list[str] = []
    n_bundles = max(1, -(-n // bundle_size))
    carry: list[dict] = []
    L = {k: v.tolist() for k, v in {
        "birth": birth, "end": end, "dead": dead, "age": age, "male": male, "gender": gender, "reg": reg,
        "smoke": smoke, "eth_group": eth_group, "eth_letter": eth_letter_idx, "has_ext": has_ext,
        "budget": budget, "n_allergy": n_allergy, "n_eth_obs": n_eth_obs, "so_obs": so_obs,
        "sbp0": sbp0, "chol0": chol0, "hba0": hba0, "h_adult": h_adult, "bmi0": bmi0, "given1": given1,
        "has_middle": has_middle, "fam": fam, "house": house, "street": street, "stype": stype, "flat": flat,
        "flat_no": flat_no, "pc_idx": pc_idx, "phone": phone, "title_u": title_u, "gp_pick": gp_pick,
        "death_slot": death_slot, "spaced": spaced_mask, "invalid": invalid, "inv_kind": inv_kind,
        "inv_digit": inv_digit, "dup_patient": dup_patient, "dirty_ok": dirty_ok}.items()}
    gi_l = gi.tolist()
    has_l = {c: has[c].tolist() for c in CONDITION_ORDER}
    onset_l = {c: cond_onset[c].tolist() for c in CONDITION_ORDER}
    ds = dates.dates

    for b in range(n_bundles):
        entries: list[dict] = []
        if b == 0:
            entries.append(org)
            entries.extend(prac_resources)
        same_dups: list[dict] = []
        next_dups: list[dict] = []
        for i in range(b * bundle_size, min(n, (b + 1) * bundle_size)):
            g = L["gender"][i]
            is_male = L["male"][i]
            names = MALE_NAMES if L["given1"][i] == 0 else FEMALE_NAMES
            given = [names[gi_l[i][0]]]
            if L["has_middle"][i] and gi_l[i][1] != gi_l[i][0]:
                given.append(names[gi_l[i][1]])
            family = FAMILY_NAMES[L["fam"][i]]
            a = L["age"][i]
            tu = L["title_u"][i]
            if g == 0:
                title = "Mr"
            elif g == 1:
                title = "Miss" if a < 18 else ("Mrs" if tu < 0.55 else "Ms" if tu < 0.8 else "Miss")
            else:
                title = "Mx"
            # NHS number
            number = nhs[i]
            if L["invalid"][i]:
                written = invalid_nhs_number(number, L["inv_kind"][i], L["inv_digit"][i])
                n_invalid += 1
            else:
                written = number
                valid_out.append(number)
            if L["spaced"][i] and len(written) == 10:
                written = spaced(written)
            rid = ids.next()
            line = f"{L['house'][i]} {STREET_NAMES[L['street'][i]]} {STREET_TYPES[L['stype'][i]]}"
            lines = [f"Flat {L['flat_no'][i]}", line] if L["flat"][i] else [line]
            ext = []
            if L["has_ext"][i]:
                grp = L["eth_group"][i]
                letter = C.ETHNIC_LETTERS[grp] if grp >= 0 else "Z"
                ext.append({"url": C.ETHNIC_EXT_URL, "valueCodeableConcept": {
                    "coding": [{"system": C.ETHNIC_SYSTEM, "code": letter}]}})
            period = {"start": ds[L["reg"][i] - BASE_ORD]}
            bad_date = date_dirt.get(i)
            if bad_date is not None:
                kind, day = bad_date
                if kind == "registration_before_birth":
                    period["start"] = dt.date.fromordinal(day).isoformat()
                elif kind == "registration_end_before_start":
                    period["end"] = dt.date.fromordinal(day).isoformat()
            ext.append({"url": C.REGISTRATION_EXT_URL, "extension": [
                {"url": "registrationPeriod", "valuePeriod": period}]})
            patient = {"resourceType": "Patient", "id": rid, "extension": ext,
                       "identifier": [{"system": C.NHS_NUMBER_SYSTEM, "value": written}],
                       "name": [{"use": "official", "family": family, "given": given}],
                       "telecom": [{"system": "phone", "value": f"07700 900{L['phone'][i]:03d}",
                                    "use": "mobile"}],
                       "gender": genders[g], "birthDate": ds[L["birth"][i] - BASE_ORD]}
            if L["dead"][i]:
                patient["deceasedDateTime"] = ds[L["end"][i] - BASE_ORD] + TIMES[L["death_slot"][i]]
            if bad_date is not None and bad_date[0] in ("death_before_birth", "death_before_registration"):
                patient["deceasedDateTime"] = dt.date.fromordinal(bad_date[1]).isoformat()
            if bad_date is not None and bad_date[0] != "after_death":
                dirty[bad_date[0]] += 1
            patient["address"] = [{"use": "home", "line": lines, "city": area.town,
                                   "postalCode": area.postcodes[L["pc_idx"][i]]}]
            patient["generalPractitioner"] = [gp_refs[L["gp_pick"][i]]]
            patient["managingOrganization"] = managing
            entries.append(patient)
            if L["dup_patient"][i]:
                same_dups.append(patient)
                dirty["duplicate"] += 1

            smoke_i = L["smoke"][i]
            person = Person(
                rid=rid, birth=L["birth"][i], end=L["end"][i], alive=not L["dead"][i], age=a, male=is_male,
                conds={c: onset_l[c][i] for c in CONDITION_ORDER if has_l[c][i]},
                smoking=None if a < 12 else "NES"[smoke_i],
                eth=L["eth_group"][i] if L["eth_group"][i] >= 0 else None,
                given=given[0], family=family, title=title, budget=L["budget"][i],
                n_allergy=L["n_allergy"][i],
                n_eth_obs=L["n_eth_obs"][i], so_obs=L["so_obs"][i], optout=patterns[i], sbp0=L["sbp0"][i],
                chol0=L["chol0"][i], hba0=L["hba0"][i], h_adult=L["h_adult"][i], bmi0=L["bmi0"][i],
                dirty_ok=L["dirty_ok"][i])
            out = builder.build(person)
            if bad_date is not None and bad_date[0] == "after_death":
                late = next((r for r in out.resources if r["resourceType"] == "Observation"
                             and "effectiveDateTime" in r), None)
                if late is not None:
                    late["effectiveDateTime"] = dt.date.fromordinal(bad_date[1]).isoformat()
                    dirty["after_death"] += 1
            entries.extend(out.resources)
            for k, v in out.dirty.items():
                dirty[k] += v
            for r in out.duplicates:
                (same_dups if drng.random() < 0.7 else next_dups).append(r)
            if out.optout_state == "active":
                n_active += 1
            elif out.optout_state == "withdrawn":
                n_withdrawn += 1
        entries.extend(carry)
        entries.extend(same_dups)
        if b == n_bundles - 1:
            entries.extend(next_dups)
            carry = []
        else:
            carry = next_dups
        counts.update(r["resourceType"] for r in entries)
        bundle = {"resourceType": "Bundle", "id": ids.next(), "type": "collection",
                  "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in entries]}
        data = json.dumps(bundle, ensure_ascii=False, separators=(",", ":"))
        (out_dir / f"bundle-{b + 1:04d}.json").write_bytes(data.encode("utf-8"))
        del bundle, entries, data

    dirty["invalid_nhs_number"] = n_invalid
    truth = PracticeTruth(
        ods_code=ods, n_patients=n, n_optout_active=n_active, n_optout_withdrawn=n_withdrawn,
        n_invalid_nhs_number=n_invalid, resources=dict(sorted(counts.items())), dirty=dirty)
    return truth, area.pairs(), valid_out


def _patient_date_dirt(prng: np.random.Generator, dirty_fraction: float, clean: np.ndarray, dead: np.ndarray,
                       birth: np.ndarray, reg: np.ndarray, end: np.ndarray, today_ord: int,
                       budget: np.ndarray) -> dict[int, tuple]:
    """Patient index -> (kind, the ordinal of the impossible date) for a few patients of each PATIENT_DATE_KEYS
    kind (one per 2,500 patients at dirty_fraction 0.01, at least one in a practice of 200 patients or more),
    on the patients with the fewest records (a quarantined patient's records go with it), each on its own
    otherwise clean patient: a registration 200-400 days before birth, a death 200-400 days before birth, a death
    45 days before the registration's month, a registration end 1-400 days before its start, and an event
    AFTER_DEATH_DAYS after death."""
    n = len(clean)
    if dirty_fraction <= 0 or n == 0:
        return {}
    k = max(1 if n >= 200 else 0, round(n * dirty_fraction / 25))
    if k == 0:
        return {}
    order = np.lexsort((prng.random(n), budget))  # fewest records first, ties at random
    offsets = prng.integers(200, 401, n)  # beyond the rules' tolerance for a birth month given by year
    can = {
        "registration_before_birth": clean,
        "death_before_birth": clean & dead,  # dead patients only: the living have future bookings
        "death_before_registration": clean & dead & (reg - birth > 120),
        "registration_end_before_start": clean & (reg - birth > 410),  # so the end never falls on the birth
        "after_death": clean & dead & (end + AFTER_DEATH_DAYS < today_ord - 1),
    }
    day = {
        "registration_before_birth": birth - offsets,
        "death_before_birth": birth - offsets,
        "death_before_registration": reg - 45,
        "registration_end_before_start": reg - (offsets - 199),
        "after_death": end + AFTER_DEATH_DAYS,
    }
    out: dict[int, tuple] = {}
    for kind in PATIENT_DATE_KEYS:
        chosen = [int(i) for i in order if can[kind][i] and int(i) not in out][:k]
        for i in chosen:
            out[i] = (kind, int(day[kind][i]))
    return out
