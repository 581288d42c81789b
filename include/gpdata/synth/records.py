"""Per-patient clinical records: builds the FHIR resource dicts for one patient.

Dates are handled as proleptic ordinals (datetime.date.toordinal) and turned into strings through a
lookup table, random numbers are drawn per patient in vectorised blocks; both keep this fast enough for
a million resources a practice.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np

from . import codes as C
from .checks import verhoeff_check_digit
from .identifiers import IdStream

BASE_ORD = dt.date(1900, 1, 1).toordinal()
OPTOUT_START = dt.date(2013, 6, 1).toordinal()  # type 1 opt-out codes in use from 2013
COVID_START = dt.date(2020, 12, 8).toordinal()
FIRST_DIRTY_ORD = dt.date(1901, 1, 1).toordinal()  # dirty dates stay after 1900 (a different quality rule)
# Dirty future dates are 3 to 50 years after `today`, so they are still in the future when the pipeline
# runs on a later real date.
FUTURE_MIN_DAYS = 3 * 365
FUTURE_MAX_DAYS = 50 * 365
# observation / appointment clock times, 08:00 - 18:55 in 5 minute steps
TIMES = tuple(f"T{h:02d}:{m:02d}:00+00:00" for h in range(8, 19) for m in range(0, 60, 5))
N_TIMES = len(TIMES)

# Observation kinds
BP, WEIGHT, BMI, HEIGHT, SMOKING, CHOL, HBA1C, FATIGUE, SYMPTOM = range(9)
UNITS = {BP: "mm[Hg]", WEIGHT: "kg", BMI: "kg/m2", HEIGHT: "cm", CHOL: "mmol/L", HBA1C: "mmol/mol"}
# General observation mix by age group (child <12, teen 12-17, adult 18-39, older 40+)
_GEN_MIX = {
    "child": {WEIGHT: 0.22, HEIGHT: 0.18, BMI: 0.05, FATIGUE: 0.03, SYMPTOM: 0.52},
    "teen": {BP: 0.05, WEIGHT: 0.15, HEIGHT: 0.10, BMI: 0.10, SMOKING: 0.10, FATIGUE: 0.08, SYMPTOM: 0.42},
    "adult": {BP: 0.20, WEIGHT: 0.13, HEIGHT: 0.03, BMI: 0.12, SMOKING: 0.12, CHOL: 0.03, HBA1C: 0.02,
              FATIGUE: 0.07, SYMPTOM: 0.28},
    "older": {BP: 0.24, WEIGHT: 0.12, HEIGHT: 0.02, BMI: 0.10, SMOKING: 0.09, CHOL: 0.08, HBA1C: 0.06,
              FATIGUE: 0.07, SYMPTOM: 0.22},
}
# Monitoring observations per long-term condition
_MON_MIX = {
    "hyp": {BP: 0.65, WEIGHT: 0.1, BMI: 0.1, CHOL: 0.15},
    "dm2": {HBA1C: 0.4, BP: 0.2, BMI: 0.15, WEIGHT: 0.1, CHOL: 0.15},
    "dm1": {HBA1C: 0.5, BP: 0.2, BMI: 0.1, WEIGHT: 0.1, CHOL: 0.1},
    "copd": {SMOKING: 0.35, BMI: 0.2, WEIGHT: 0.2, FATIGUE: 0.25},
    "hf": {BP: 0.35, WEIGHT: 0.4, FATIGUE: 0.25},
    "ld": {WEIGHT: 0.35, BP: 0.3, BMI: 0.35},
    "asthma": {SMOKING: 0.3, WEIGHT: 0.2, BMI: 0.2, FATIGUE: 0.3},
}
# Flexible budget categories
GEN, MON, MEDS, IMM, APPT, REF, RECALL = range(7)

# Practitioner mix (by role kind) for each kind of record
PRACTITIONER_MIX = {
    "obs": {"gp": 0.45, "nurse": 0.3, "hca": 0.2, "pharmacist": 0.03, "paramedic": 0.02},
    "condition": {"gp": 0.9, "nurse": 0.1},
    "meds": {"gp": 0.8, "pharmacist": 0.15, "nurse": 0.05},
    "imm": {"nurse": 0.75, "hca": 0.15, "gp": 0.1},
    "ref": {"gp": 0.9, "nurse": 0.1},
    "appt": {"gp": 0.55, "nurse": 0.25, "hca": 0.12, "pharmacist": 0.04, "paramedic": 0.04},
    "allergy": {"gp": 0.6, "nurse": 0.3, "pharmacist": 0.1},
}

CONDITION_TEXT = {
    "hyp": ("Hypertension", "HTN", "High blood pressure"),
    "dm2": ("Type 2 diabetes", "T2DM", "Diabetes mellitus type 2"),
    "dm1": ("Type 1 diabetes", "T1DM", "Insulin dependent diabetes"),
    "copd": ("COPD", "Chronic obstructive pulmonary disease", "Emphysema/COPD"),
    "hf": ("Heart failure", "CCF", "HF - on echo"),
    "ld": ("Learning disability", "LD register", "Learning disabilities"),
    "asthma": ("Asthma", "Asthmatic", "Asthma - mild intermittent"),
}
NOTES_PLAIN = (
    "Lifestyle advice given.", "Patient education leaflet provided.", "Diagnosed in secondary care.",
    "Confirmed on review; continue current management.", "Added to QOF register.",
    "Reviewed by practice nurse.", "Discussed treatment options and follow-up plan.",
)
NOTES_NAMED = (
    "{given} {family} informed of diagnosis.", "Discussed with {given}; lifestyle advice given.",
    "Letter sent to {title} {family} about results.", "{title} {family} aware and agrees with plan.",
)
APPT_TEXT = (
    "Routine appointment", "Telephone consultation", "Medication review", "Blood test",
    "Blood pressure check", "Face to face consultation", "Video consultation", "Follow-up",
    "Results discussion", "Minor illness", "Dressing change", "Long term condition review", "Flu clinic",
    "New patient health check", "Home visit", "Cervical screening", "Travel advice", "Contraception review",
)
APPT_NAMED = ("Call back {given} re results", "{title} {family} - review", "Telephone {given} {family}")
NONSENSE_CODES = ("UNKNOWN", "XXXXX", "TEST123", "ZZZ99", "n/a", "EMIS-LOCAL-01", "?", "N/K", "CODE")

DIRTY_KINDS = ("future_date", "before_birth", "unknown_code", "duplicate")

# where the event dates sit, per resource type (dirty dates move all of them)
_DATE_FIELDS = {
    "Observation": ("effectiveDateTime",),
    "Condition": ("onsetDateTime", "recordedDate"),
    "AllergyIntolerance": ("recordedDate", "onsetDateTime"),
    "Immunization": ("occurrenceDateTime",),
    "MedicationStatement": ("dateAsserted",),
    "MedicationRequest": ("authoredOn",),
    "ServiceRequest": ("authoredOn", "occurrenceDateTime"),
    "Appointment": ("start", "end"),
}
_CODE_FIELD = {
    "Observation": "code", "Condition": "code", "AllergyIntolerance": "code", "Immunization": "vaccineCode",
    "MedicationStatement": "medicationCodeableConcept", "MedicationRequest": "medicationCodeableConcept",
    "ServiceRequest": "code",
}


@dataclass
class Person:
    """One patient's facts, in the form the record builder needs (no resource ids beyond the patient's)."""

    rid: str
    birth: int
    end: int  # last date a record can carry: death date, or the day before `today`
    alive: bool
    age: float  # years, at today
    male: bool
    conds: dict[str, int]  # condition -> onset ordinal
    smoking: str | None  # N / E / S, None for young children
    eth: int | None  # 0-15 ethnic group index, None when not recorded / not stated
    given: str
    family: str
    title: str
    budget: int  # flexible record budget
    n_allergy: int
    n_eth_obs: int
    so_obs: bool
    optout: tuple[int, ...]  # 0 = dissent, 1 = withdrawal, in date order; empty when none
    sbp0: float
    chol0: float
    hba0: float
    h_adult: float
    bmi0: float
    dirty_ok: bool = True  # False for patients whose records the pipeline never checks row by row
    ref: dict = field(init=False)

    def __post_init__(self) -> None:
        self.ref = {"reference": f"Patient/{self.rid}"}


@dataclass
class PatientOutput:
    resources: list[dict]
    duplicates: list[dict]
    dirty: dict[str, int]
    optout_state: str | None  # "active" / "withdrawn" / None


class DateStrings:
    def __init__(self, last_ord: int) -> None:
        d0 = dt.date(1900, 1, 1)
        self.dates = [(d0 + dt.timedelta(days=i)).isoformat() for i in range(last_ord - BASE_ORD + 1)]

    def d(self, o: int) -> str:
        return self.dates[o - BASE_ORD]


class RecordBuilder:
    def __init__(self, lib: C.CodeLibrary, rng: np.random.Generator, dirty_rng: np.random.Generator,
                 ids: IdStream, practitioners: list[tuple[str, str]], today: int, dirty_fraction: float,
                 dates: DateStrings) -> None:
        """`practitioners`: (practitioner id, role kind) for the practice's clinicians."""
        self.lib = lib
        self.rng = rng
        self.drng = dirty_rng
        self.ids = ids
        self.today = today
        self.dirty_fraction = dirty_fraction
        self.ds = dates.dates
        self.prac_refs = [{"reference": f"Practitioner/{pid}"} for pid, _ in practitioners]
        kinds = [k for _, k in practitioners]
        self.prac_pick: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for ctx, mix in PRACTITIONER_MIX.items():
            idx, w = [], []
            for kind, share in mix.items():
                members = [i for i, k in enumerate(kinds) if k == kind]
                for i in members:
                    idx.append(i)
                    w.append(share / len(members))
            if not idx:  # no clinician of a suitable kind: anyone will do
                idx, w = list(range(len(kinds))), [1.0] * len(kinds)
            cum = np.cumsum(np.array(w) / sum(w))
            cum[-1] = 1.0
            self.prac_pick[ctx] = (np.array(idx), cum)
        self.gp_index = [i for i, k in enumerate(kinds) if k == "gp"] or list(range(len(kinds)))
        self.gen_tables = {}
        for group, mix in _GEN_MIX.items():
            self.gen_tables[group] = self._cum(mix)
        self.mon_tables = {c: self._cum(m) for c, m in _MON_MIX.items()}
        self.obs_tables = {BP: lib.bp, WEIGHT: lib.weight, BMI: lib.bmi, HEIGHT: lib.height, CHOL: lib.chol,
                           HBA1C: lib.hba1c, FATIGUE: lib.fatigue, SYMPTOM: lib.symptoms}
        self.drug_units = {k: [_unit_for(c["display"], d.unit) for c in d.table.codings]
                           for k, d in lib.drugs.items()}

    @staticmethod
    def _cum(mix: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
        kinds = np.array(list(mix.keys()))
        w = np.array(list(mix.values()), dtype=float)
        cum = np.cumsum(w / w.sum())
        cum[-1] = 1.0
        return kinds, cum

    # ------------------------------------------------------------------------------------------ helpers
    def _pracs(self, ctx: str, n: int) -> list[dict]:
        idx, cum = self.prac_pick[ctx]
        sel = idx[np.searchsorted(cum, self.rng.random(n), side="right").clip(0, len(idx) - 1)]
        refs = self.prac_refs
        return [refs[i] for i in sel.tolist()]

    def _dates(self, lo: int | np.ndarray, hi: int, n: int, skew: float = 0.6) -> np.ndarray:
        """n ordinals in [lo, hi], denser towards hi (recent years are better recorded)."""
        span = np.maximum(hi - np.asarray(lo) + 1, 1)
        return np.asarray(lo) + (span * self.rng.random(n) ** skew).astype(np.int64)

    def _when(self, ords: list[int], p_date_only: float = 0.15) -> list[str]:
        """ISO datetimes (+00:00) or plain dates."""
        n = len(ords)
        slots = self.rng.integers(0, N_TIMES, n).tolist()
        date_only = (self.rng.random(n) < p_date_only).tolist()
        ds = self.ds
        return [ds[o - BASE_ORD] if do else ds[o - BASE_ORD] + TIMES[s]
                for o, s, do in zip(ords, slots, date_only, strict=True)]

    def _d(self, o: int) -> str:
        return self.ds[o - BASE_ORD]

    # ------------------------------------------------------------------------------------------ build
    def build(self, p: Person) -> PatientOutput:
        rng = self.rng
        pref = p.ref
        # routine records: the last twenty years of life at most, and never on the date of birth itself
        lo = min(max(p.birth + 1, p.end - 20 * 365), p.end)
        res: list[dict] = []

        # Long-term conditions
        if p.conds:
            self._conditions(p, res)
        # Allergies
        if p.n_allergy:
            self._allergies(p, lo, res)
        # Ethnicity and sexual orientation observations
        if p.n_eth_obs and p.eth is not None:
            table = self.lib.ethnicity[p.eth]
            ords = np.sort(self._dates(lo, p.end, p.n_eth_obs, skew=1.0)).tolist()
            whens = self._when(ords)
            pr = self._pracs("obs", len(ords))
            for w, pr_ in zip(whens, pr, strict=True):
                res.append(self._obs(pref, pr_, w, table.concepts[table.draw1(rng.random())]))
        if p.so_obs:
            so_lo = min(max(lo, p.birth + 16 * 365), p.end)
            o = int(self._dates(so_lo, p.end, 1, skew=0.8)[0])
            t = self.lib.sexual_orientation
            res.append(self._obs(pref, self._pracs("obs", 1)[0], self._when([o])[0],
                                 t.concepts[t.draw1(rng.random())]))

        # Flexible budget
        if p.budget:
            self._flexible(p, lo, res)

        # Dirty records (opt-out codes are added afterwards so they are never made dirty)
        dirty = dict.fromkeys(DIRTY_KINDS, 0)
        duplicates: list[dict] = []
        if self.dirty_fraction > 0 and res and p.dirty_ok:
            self._make_dirty(p, res, dirty, duplicates)

        state = None
        if p.optout:
            state = self._optout(p, res)
        nxt = self.ids.next
        for r in res:
            if not r["id"]:
                r["id"] = nxt()
        return PatientOutput(res, duplicates, dirty, state)

    # ------------------------------------------------------------------------------------------ parts
    @staticmethod
    def _obs(pref: dict, prac: dict, when: str, concept: dict, value: dict | None = None) -> dict:
        r = {"resourceType": "Observation", "id": "", "status": "final", "subject": pref, "performer": [prac],
             "effectiveDateTime": when, "code": concept}
        if value is not None:
            r["valueQuantity"] = value
        return r

    def _conditions(self, p: Person, res: list[dict]) -> None:
        rng = self.rng
        names = list(p.conds)
        n = len(names)
        u = rng.random((n, 6)).tolist()
        pracs = self._pracs("condition", n)
        for name, uu, prac in zip(names, u, pracs, strict=True):
            onset = p.conds[name]
            table = self.lib.conditions[name]
            code = table.codings[table.draw1(uu[0])]
            texts = CONDITION_TEXT[name]
            text = code.get("display") or texts[0] if uu[1] < 0.6 else texts[int(uu[2] * len(texts))]
            recorded = min(onset + int(uu[3] * 30), p.end)
            r = {"resourceType": "Condition", "id": "",
                 "clinicalStatus": {"coding": [{"system": C.CONDITION_CLINICAL_SYSTEM,
                                                "code": "active" if name != "asthma" or uu[4] < 0.85
                                                else "inactive"}]},
                 "category": [{"coding": [{"system": C.CONDITION_CATEGORY_SYSTEM,
                                           "code": "problem-list-item"}]}],
                 "code": {"coding": [code], "text": text},
                 "subject": p.ref, "onsetDateTime": self._d(onset), "recordedDate": self._d(recorded),
                 "asserter": prac}
            if uu[5] < 0.25:
                if uu[5] < 0.09:
                    tpl = NOTES_NAMED[int(uu[2] * len(NOTES_NAMED))]
                    note = tpl.format(given=p.given, family=p.family, title=p.title)
                else:
                    note = NOTES_PLAIN[int(uu[4] * len(NOTES_PLAIN))]
                r["note"] = [{"text": note}]
            res.append(r)

    def _allergies(self, p: Person, lo: int, res: list[dict]) -> None:
        rng = self.rng
        t = self.lib.allergies
        ords = self._dates(lo, p.end, p.n_allergy, skew=1.0).tolist()
        pracs = self._pracs("allergy", p.n_allergy)
        for o, prac in zip(ords, pracs, strict=True):
            r = {"resourceType": "AllergyIntolerance", "id": "", "patient": p.ref,
                 "code": t.concepts[t.draw1(rng.random())], "recordedDate": self._d(o), "recorder": prac}
            if rng.random() < 0.5:
                r["onsetDateTime"] = self._d(int(rng.integers(min(p.birth + 1, o), o + 1)))
            res.append(r)

    def _flexible(self, p: Person, lo: int, res: list[dict]) -> None:
        rng = self.rng
        chronic = list(p.conds)
        n_chronic = len(chronic)
        med_conds = [c for c in chronic if c != "ld"]
        recall_conds = [c for c in chronic if c in self.lib.recalls]
        w = np.array([
            0.45,
            0.12 * n_chronic,
            (0.25 + 0.1 * (len(med_conds) - 1)) if med_conds else 0.0,
            0.05 + (0.05 if (p.age >= 65 or p.age < 5) else 0.0),
            0.15,
            0.02 + 0.01 * n_chronic,
            0.015 * len(recall_conds),
        ])
        counts = rng.multinomial(p.budget, w / w.sum()).tolist()
        spill = 0
        if counts[MEDS]:
            spill += self._meds(p, med_conds, counts[MEDS], res)
        if counts[IMM]:
            self._immunizations(p, counts[IMM], res)
        if counts[APPT]:
            self._appointments(p, lo, counts[APPT], res)
        if counts[REF]:
            self._referrals(p, lo, counts[REF], res)
        if counts[RECALL]:
            self._recalls(p, recall_conds, counts[RECALL], res)
        n_gen = counts[GEN] + spill
        self._observations(p, lo, n_gen, chronic, counts[MON], res)

    def _observations(self, p: Person, lo: int, n_gen: int, chronic: list[str], n_mon: int,
                      res: list[dict]) -> None:
        rng = self.rng
        if n_gen + n_mon == 0:
            return
        group = "child" if p.age < 12 else "teen" if p.age < 18 else "adult" if p.age < 40 else "older"
        kinds_g, cum_g = self.gen_tables[group]
        kinds = [kinds_g[np.searchsorted(cum_g, rng.random(n_gen), side="right").clip(0, len(kinds_g) - 1)]]
        lows = [np.full(n_gen, lo, dtype=np.int64)]
        if n_mon and chronic:
            which = rng.integers(0, len(chronic), n_mon)
            for ci, cname in enumerate(chronic):
                m = int((which == ci).sum())
                if not m:
                    continue
                k_m, cum_m = self.mon_tables[cname]
                kinds.append(k_m[np.searchsorted(cum_m, rng.random(m), side="right").clip(0, len(k_m) - 1)])
                lows.append(np.full(m, max(p.conds[cname], lo) if p.conds[cname] < p.end else p.end,
                                    dtype=np.int64))
        kind = np.concatenate(kinds)
        low = np.minimum(np.concatenate(lows), p.end)
        n = kind.size
        if p.smoking is None:  # children: no smoking status
            kind[kind == SMOKING] = SYMPTOM
        ords = self._dates(low, p.end, n)
        # values
        age_evt = (ords - p.birth) / 365.25
        noise = rng.standard_normal((4, n))
        growth = np.minimum(1.0, 0.3 + 0.7 * (np.clip(age_evt, 0, 18) / 18.0) ** 0.75)
        height = p.h_adult * growth + noise[0] * 0.8
        child_bmi = 16.0 + np.clip(age_evt - 5, 0, 13) * 0.45
        bmi = np.where(age_evt < 18, child_bmi, p.bmi0) + noise[1] * 0.8
        weight = bmi * (height / 100.0) ** 2
        sbp = np.where(age_evt < 18, 105 + age_evt, p.sbp0 - 0.45 * np.maximum(p.age - age_evt, 0))
        sbp = sbp + noise[2] * 9
        chol = p.chol0 + noise[3] * 0.4
        hba = p.hba0 + noise[2] * (8 if "dm1" in p.conds or "dm2" in p.conds else 3)
        values = {
            BP: np.clip(np.round(sbp), 80, 230).tolist(),
            WEIGHT: np.clip(np.round(weight, 1), 2.0, 250.0).tolist(),
            BMI: np.clip(np.round(bmi, 1), 11.0, 70.0).tolist(),
            HEIGHT: np.clip(np.round(height, 1), 45.0, 215.0).tolist(),
            CHOL: np.clip(np.round(chol, 1), 2.0, 12.0).tolist(),
            HBA1C: np.clip(np.round(hba), 20, 150).tolist(),
        }
        code_u = rng.random(n).tolist()
        whens = self._when(ords.tolist())
        pracs = self._pracs("obs", n)
        tables = self.obs_tables
        smoking_table = self.lib.smoking.get(p.smoking) if p.smoking else None
        pref = p.ref
        for i, k in enumerate(kind.tolist()):
            t = smoking_table if k == SMOKING else tables[k]
            concept = t.concepts[t.draw1(code_u[i])]
            unit = UNITS.get(k)
            if unit is None:
                res.append(self._obs(pref, pracs[i], whens[i], concept))
            else:
                res.append(self._obs(pref, pracs[i], whens[i], concept,
                                     {"value": values[k][i], "unit": unit, "system": C.UCUM, "code": unit}))

    def _drugs_for(self, p: Person, med_conds: list[str]) -> list[tuple[str, int]]:
        u = self.rng.random(len(med_conds)).tolist()
        out: list[tuple[str, int]] = []
        for c, x in zip(med_conds, u, strict=True):
            on = p.conds[c]
            if c == "hyp":
                out.append(("antihypertensive", on))
                if x < 0.4:
                    out.append(("antihypertensive", on + int(x * 2000)))
            elif c == "hf":
                if "hyp" not in p.conds:
                    out.append(("antihypertensive", on))
            elif c == "dm2":
                out.append(("metformin", on))
                if x < 0.4:
                    out.append(("antidiabetic_2nd", on + int(x * 3000)))
            elif c == "dm1":
                out.append(("insulin", on))
                if x < 0.6:
                    out.append(("insulin", on))
            elif c == "copd":
                out.append(("reliever", on))
                if x < 0.7:
                    out.append(("lama", on))
            elif c == "asthma":
                out.append(("reliever", on))
                if x < 0.6:
                    out.append(("preventer", on))
        return [(k, min(max(on, p.birth + 1), p.end)) for k, on in out]

    def _meds(self, p: Person, med_conds: list[str], k: int, res: list[dict]) -> int:
        """Authorisations (MedicationStatement) and monthly issues (MedicationRequest).  Returns the part
        of the budget that did not fit (more issues than months since diagnosis)."""
        rng = self.rng
        drugs = self._drugs_for(p, med_conds)
        if not drugs:
            return k
        if k < len(drugs):
            drugs = drugs[:k]
        nd = len(drugs)
        per = (rng.multinomial(k - nd, np.full(nd, 1.0 / nd)) + 1).tolist()
        spill = 0
        pracs = self._pracs("meds", nd)
        for (key, onset), n_items, prac in zip(drugs, per, pracs, strict=True):
            drug = self.lib.drugs[key]
            ci = drug.table.draw1(rng.random())
            concept = drug.table.concepts[ci]
            unit = self.drug_units[key][ci]
            active = p.alive and rng.random() < 0.85
            if active:
                last = p.end - int(rng.integers(0, 28))
            else:
                last = int(rng.integers(onset, p.end + 1))
            last = max(last, onset)
            n_want = n_items - 1
            # roughly monthly issues going back from the last one, none before the diagnosis
            offsets = np.concatenate(([0], np.cumsum(rng.integers(26, 32, max(n_want - 1, 0)))))[:n_want]
            issue_ords = (last - offsets[offsets <= last - onset]).tolist()
            n_issue = len(issue_ords)
            spill += n_want - n_issue
            first = issue_ords[-1] if issue_ords else last
            auth = max(first - int(rng.integers(0, 4)), onset)
            sid = self.ids.next()
            stmt = {"resourceType": "MedicationStatement", "id": sid,
                    "status": "active" if active else "completed", "subject": p.ref,
                    "medicationCodeableConcept": concept,
                    "effectivePeriod": {"start": self._d(auth)} if active else
                    {"start": self._d(auth), "end": self._d(min(last + 28, p.end))},
                    "dateAsserted": self._d(auth), "informationSource": prac,
                    "dosage": [{"text": drug.dosage[int(rng.integers(len(drug.dosage)))]}]}
            res.append(stmt)
            if not n_issue:
                continue
            based_on = [{"reference": f"MedicationStatement/{sid}"}]
            qty = drug.quantity[int(rng.integers(len(drug.quantity)))]
            dispense = {"quantity": {"value": qty, "unit": unit}}
            instr = stmt["dosage"]
            whens = self._when(issue_ords[::-1], p_date_only=0.05)
            # issues are mostly signed by the authorising clinician
            req_pracs = self._pracs("meds", n_issue)
            same = (rng.random(n_issue) < 0.7).tolist()
            for w, rp, s in zip(whens, req_pracs, same, strict=True):
                res.append({"resourceType": "MedicationRequest", "id": "", "status": "completed",
                            "intent": "order", "subject": p.ref, "medicationCodeableConcept": concept,
                            "authoredOn": w, "requester": prac if s else rp, "basedOn": based_on,
                            "dispenseRequest": dispense, "dosageInstruction": instr})
        return spill

    def _immunizations(self, p: Person, k: int, res: list[dict]) -> None:
        rng = self.rng
        a = p.age
        if a < 2:
            mix = {"mmr": 0.6, "flu": 0.4}
        elif a < 11:
            mix = {"mmr": 0.4, "flu": 0.6}
        elif a < 18:
            mix = {"hpv": 0.4, "flu": 0.4, "mmr": 0.2}
        elif a < 65:
            mix = {"flu": 0.5, "covid": 0.5}
        else:
            mix = {"flu": 0.65, "covid": 0.25, "pneumo": 0.1}
        names = list(mix)
        w = np.array(list(mix.values()))
        picks = rng.choice(len(names), size=k, p=w / w.sum()).tolist()
        caps = {"mmr": 2, "hpv": 2, "pneumo": 1}
        used: dict[str, int] = {}
        lo = max(p.birth + 60, p.end - 25 * 365)
        lo = min(lo, p.end)
        u = rng.random((k, 3)).tolist()
        ords: list[int] = []
        concepts: list[dict] = []
        for j, uu in zip(picks, u, strict=True):
            name = names[j]
            n_used = used.get(name, 0)
            if n_used >= caps.get(name, 10**6):
                name = "flu"
            used[name] = used.get(name, 0) + 1
            o = -1
            if name == "mmr":
                o = p.birth + (365 if n_used == 0 else 1216) + int(uu[1] * 60)
            elif name == "hpv":
                o = p.birth + int(12.5 * 365) + (0 if n_used == 0 else 365) + int(uu[1] * 150)
            elif name == "pneumo":
                o = p.birth + 65 * 365 + int(uu[1] * 5 * 365)
            elif name == "covid":
                c_lo = max(lo, COVID_START)
                if c_lo <= p.end:
                    o = c_lo + int(uu[1] * (p.end - c_lo + 1))
            if name == "flu" or not (lo <= o <= p.end):
                name = "flu"
                y_lo = dt.date.fromordinal(lo).year
                y_hi = dt.date.fromordinal(p.end).year
                y = y_lo + int(uu[2] * (y_hi - y_lo + 1))
                o = dt.date(y, 9, 20).toordinal() + int(uu[1] * 90)
                if not (lo <= o <= p.end):
                    o = lo + int(uu[1] * (p.end - lo + 1))
            ords.append(o)
            if name == "covid":
                t = self.lib.covid_vaccines
                concepts.append(t.concepts[t.draw1(uu[0])])
            else:
                concepts.append({"coding": [self.lib.vaccines[name]]})
        whens = self._when(ords, p_date_only=0.3)
        pracs = self._pracs("imm", k)
        for w, c, pr in zip(whens, concepts, pracs, strict=True):
            res.append({"resourceType": "Immunization", "id": "", "status": "completed", "vaccineCode": c,
                        "patient": p.ref, "occurrenceDateTime": w, "performer": [{"actor": pr}]})

    def _appointments(self, p: Person, lo: int, k: int, res: list[dict]) -> None:
        rng = self.rng
        n_future = 0
        if p.alive:
            x = rng.random()
            n_future = min(k, 2 if x < 0.08 else 1 if x < 0.35 else 0)
        n_past = k - n_future
        a_lo = min(max(lo, p.end - 12 * 365), p.end)
        ords = self._dates(a_lo, p.end, n_past, skew=0.5).tolist()
        ords += (self.today + rng.integers(1, 57, n_future)).tolist()
        # weekdays only; shift within the allowed window
        for i, o in enumerate(ords):
            wd = (o + 6) % 7  # Monday 0 .. Sunday 6
            if wd >= 5:
                back, fwd = o - (wd - 4), o + (7 - wd)
                if i < n_past:
                    ords[i] = back if back >= a_lo else (fwd if fwd <= p.end else o)
                else:
                    ords[i] = fwd
        slots = rng.integers(0, N_TIMES - 4, k).tolist()
        dur = rng.choice(np.array([10, 15, 20]), size=k, p=[0.5, 0.3, 0.2]).tolist()
        status_u = rng.random(k).tolist()
        text_u = rng.random((k, 2)).tolist()
        pracs = self._pracs("appt", k)
        ds = self.ds
        for i in range(k):
            o = ords[i]
            s = slots[i]
            start_min = 8 * 60 + s * 5
            end_min = start_min + dur[i]
            d = ds[o - BASE_ORD]
            if i >= n_past:
                status = "booked"
            else:
                x = status_u[i]
                status = "fulfilled" if x < 0.86 else "noshow" if x < 0.91 else "cancelled"
            tu = text_u[i]
            if tu[0] < 0.05:
                desc = APPT_NAMED[int(tu[1] * len(APPT_NAMED))].format(given=p.given, family=p.family,
                                                                       title=p.title)
            else:
                desc = APPT_TEXT[int(tu[1] * len(APPT_TEXT))]
            res.append({"resourceType": "Appointment", "id": "", "status": status,
                        "start": f"{d}T{start_min // 60:02d}:{start_min % 60:02d}:00+00:00",
                        "end": f"{d}T{end_min // 60:02d}:{end_min % 60:02d}:00+00:00",
                        "minutesDuration": dur[i], "description": desc,
                        "participant": [{"actor": p.ref, "status": "accepted"},
                                        {"actor": pracs[i], "status": "accepted"}]})

    def _referrals(self, p: Person, lo: int, k: int, res: list[dict]) -> None:
        rng = self.rng
        ords = self._dates(lo, p.end, k).tolist()
        whens = self._when(ords, p_date_only=0.1)
        u = rng.random((k, 3)).tolist()
        pracs = self._pracs("ref", k)
        echo_share = 0.6 if "hf" in p.conds else 0.15 if p.age >= 55 else 0.0
        for o, w, uu, pr in zip(ords, whens, u, pracs, strict=True):
            t = self.lib.echo_referrals if uu[0] < echo_share else self.lib.referrals
            res.append({"resourceType": "ServiceRequest", "id": "",
                        "status": "completed" if o < self.today - 90 or uu[1] < 0.5 else "active",
                        "intent": "order", "category": [C.REFERRAL_CATEGORY],
                        "code": t.concepts[t.draw1(uu[2])], "subject": p.ref, "authoredOn": w,
                        "requester": pr, "priority": "urgent" if uu[1] < 0.12 else "routine"})

    def _recalls(self, p: Person, conds: list[str], k: int, res: list[dict]) -> None:
        rng = self.rng
        which = rng.integers(0, len(conds), k).tolist()
        pracs = self._pracs("ref", k)
        for c_i, pr in zip(which, pracs, strict=True):
            c = conds[c_i]
            on = min(p.conds[c], p.end)
            o = int(self._dates(on, p.end, 1, skew=0.7)[0])
            due = o + self.lib.recall_interval[c]
            res.append({"resourceType": "ServiceRequest", "id": "",
                        "status": "active" if due >= self.today and p.alive else "completed",
                        "intent": "plan", "category": [C.REFERRAL_CATEGORY], "code": self.lib.recalls[c],
                        "subject": p.ref, "authoredOn": self._d(o), "occurrenceDateTime": self._d(due),
                        "requester": pr, "priority": "routine"})

    def _optout(self, p: Person, res: list[dict]) -> str:
        """Type 1 opt-out codes on strictly increasing dates; returns the state the latest one implies."""
        rng = self.rng
        n = len(p.optout)
        lo = max(p.birth + 1, OPTOUT_START)
        span = p.end - lo  # the caller only sets optout when span >= 10 * n
        cuts = np.sort(rng.choice(span, size=n, replace=False)) + lo
        whens = self._when(cuts.tolist(), p_date_only=0.3)
        pracs = self._pracs("obs", n)
        systems = rng.choice(3, size=n, p=C.OPTOUT_SYSTEM_WEIGHTS).tolist()
        for kind, w, pr, s in zip(p.optout, whens, pracs, systems, strict=True):
            c = (self.lib.optout_dissent if kind == 0 else self.lib.optout_withdrawn)[s]
            res.append(self._obs(p.ref, pr, w, {"coding": [c]}))
        return "active" if p.optout[-1] == 0 else "withdrawn"

    # ------------------------------------------------------------------------------------------ dirt
    def _make_dirty(self, p: Person, res: list[dict], dirty: dict[str, int], duplicates: list[dict]) -> None:
        drng = self.drng
        n = len(res)
        hit = np.flatnonzero(drng.random(n) < self.dirty_fraction)
        if not hit.size:
            return
        kinds = drng.integers(0, 4, hit.size).tolist()
        for i, kind in zip(hit.tolist(), kinds, strict=True):
            r = res[i]
            rtype = r["resourceType"]
            kname = DIRTY_KINDS[kind]
            if kname == "future_date" and rtype == "Appointment":
                kname = "duplicate"  # future appointments are legitimate (booked)
            if kname == "unknown_code" and rtype not in _CODE_FIELD:
                kname = "duplicate"
            if kname == "future_date":
                self._set_dates(r, self.today + int(drng.integers(FUTURE_MIN_DAYS, FUTURE_MAX_DAYS + 1)))
            elif kname == "before_birth":
                # before the first of the birth month (the pipeline only keeps the birth month)
                first = dt.date.fromordinal(p.birth).replace(day=1).toordinal()
                self._set_dates(r, max(first - int(drng.integers(1, 3651)), FIRST_DIRTY_ORD))
            elif kname == "unknown_code":
                key = _CODE_FIELD[rtype]
                old = r[key]
                system = old["coding"][0]["system"]
                if system not in (C.SNOMED, C.DMD):
                    system = C.SNOMED
                new = {"coding": [{"system": system, "code": self._bogus_code()}]}
                if "text" in old:
                    new["text"] = old["text"]
                r[key] = new
            else:
                duplicates.append(r)
            dirty[kname] += 1

    def _set_dates(self, r: dict, o: int) -> None:
        d = self.ds[o - BASE_ORD]
        rtype = r["resourceType"]
        for f in _DATE_FIELDS[rtype]:
            if f in r:
                r[f] = d + r[f][10:]
        if rtype == "MedicationStatement":
            r["effectivePeriod"] = {"start": d}

    def _bogus_code(self) -> str:
        drng = self.drng
        if drng.random() < 0.7:
            length = int(drng.choice([8, 9, 15, 16, 17]))
            payload = str(int(drng.integers(1, 10))) + "".join(map(str, drng.integers(0, 10, length - 2)))
            good = int(verhoeff_check_digit(payload))
            return payload + str((good + int(drng.integers(1, 10))) % 10)
        return NONSENSE_CODES[int(drng.integers(len(NONSENSE_CODES)))]


def _unit_for(term: str, default: str) -> str:
    t = term.lower()
    for key, unit in (("capsule", "capsule"), ("tablet", "tablet"), ("inhaler", "inhaler"),
                      ("cartridge", "cartridge"), ("pre-filled", "pre-filled pen"), ("powder", "capsule")):
        if key in t:
            return unit
    return default
