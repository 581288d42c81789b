"""Code systems, code lists and the small hand-picked code tables used by the generator.

Most clinical codes come from the public code lists in include/config/codelists (see SOURCES.md there);
the few tables written out here (roles, allergies, vaccines, referrals, recalls, symptoms, sexual
orientation, opt-out) are kept in this one module so they are easy to review.  Every SNOMED CT / dm+d
code the generator writes as a *valid* code passes the Verhoeff check (tests enforce this).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checks import verhoeff_valid

SNOMED = "http://snomed.info/sct"
DMD = "https://dmd.nhs.uk"
READ_V2 = "http://read.info/readv2"
CTV3 = "http://read.info/ctv3"
UCUM = "http://unitsofmeasure.org"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
SDS_USER_SYSTEM = "https://fhir.nhs.uk/Id/sds-user-id"
SDS_JOB_ROLE_SYSTEM = "https://fhir.nhs.uk/CodeSystem/NHSDigital-SDS-JobRoleCode"
ETHNIC_EXT_URL = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-EthnicCategory"
ETHNIC_SYSTEM = "https://fhir.hl7.org.uk/CodeSystem/UKCore-EthnicCategoryEngland"
REGISTRATION_EXT_URL = (
    "https://fhir.nhs.uk/STU3/StructureDefinition/Extension-CareConnect-GPC-RegistrationDetails-1"
)
CONDITION_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-category"
CONDITION_CLINICAL_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-clinical"

DEFAULT_CODELIST_DIR = Path(__file__).resolve().parents[2] / "config" / "codelists"

# --------------------------------------------------------------------------------------------------
# SDS job roles (code, display, kind).  Practice nurses have no SDS role of their own; "Staff Nurse"
# (R0620) is what practice nurses usually hold, advanced nurse practitioners hold R0600.
# --------------------------------------------------------------------------------------------------
JOB_ROLES: dict[str, tuple[str, str, str]] = {
    "gp_partner": ("R0260", "General Medical Practitioner", "gp"),
    "gp_salaried": ("R0270", "Salaried General Practitioner", "gp"),
    "gp_registrar": ("R6200", "GP Registrar", "gp"),
    "practice_nurse": ("R0620", "Staff Nurse", "nurse"),
    "nurse_practitioner": ("R0600", "Specialist Nurse Practitioner", "nurse"),
    "hca": ("R1480", "Healthcare Assistant", "hca"),
    "pharmacist": ("R9804", "Clinical Pharmacists", "pharmacist"),
    "paramedic": ("R1070", "Paramedic", "paramedic"),
}

# --------------------------------------------------------------------------------------------------
# Type 1 opt-out (dissent from secondary use of GP patient identifiable data) and its withdrawal.
# --------------------------------------------------------------------------------------------------
OPTOUT_DISSENT = (
    (SNOMED, "827241000000103",
     "Dissent from secondary use of general practitioner patient identifiable data"),
    (READ_V2, "9Nu0.", "Dissent from secondary use of GP patient identifiable data"),
    (CTV3, "XaZ89", "Dissent from secondary use of GP patient identifiable data"),
)
OPTOUT_WITHDRAWN = (
    (SNOMED, "827261000000102",
     "Dissent withdrawn for secondary use of general practitioner patient identifiable data"),
    (READ_V2, "9Nu1.", "Dissent withdrawn for secondary use of GP patient identifiable data"),
    (CTV3, "XaZ8A", "Dissent withdrawn for secondary use of GP patient identifiable data"),
)
OPTOUT_SYSTEM_WEIGHTS = (0.8, 0.1, 0.1)  # mostly SNOMED
OPTOUT_DISSENT_CODES = frozenset(c for _, c, _ in OPTOUT_DISSENT)
OPTOUT_WITHDRAWN_CODES = frozenset(c for _, c, _ in OPTOUT_WITHDRAWN)

# --------------------------------------------------------------------------------------------------
# Hand-picked SNOMED tables: (code, display, weight)
# --------------------------------------------------------------------------------------------------
ALLERGIES = (
    ("91936005", "Allergy to penicillin", 0.30),
    ("294505008", "Allergy to amoxicillin", 0.08),
    ("300916003", "Latex allergy", 0.05),
    ("91935009", "Allergy to peanut", 0.10),
    ("91934008", "Allergy to nut", 0.06),
    ("91930004", "Allergy to eggs", 0.05),
    ("425525006", "Allergy to dairy product", 0.05),
    ("300913006", "Shellfish allergy", 0.05),
    ("232347008", "Dander (animal) allergy", 0.08),
    ("232350006", "House dust mite allergy", 0.10),
    ("714035009", "Allergy to soy protein", 0.02),
)

SEXUAL_ORIENTATION = (
    ("20430005", "Heterosexual", 0.80),
    ("38628009", "Homosexual", 0.03),
    ("89217008", "Homosexual female", 0.01),
    ("76102007", "Homosexual male", 0.01),
    ("42035005", "Bisexual", 0.03),
    ("1064711000000108", "Person asked and does not know or is not sure", 0.02),
    ("699042003", "Declined to state sexual orientation", 0.05),
    ("729951000000104", "Sexual orientation not given - patient refused", 0.05),
)

# Symptoms and other coded findings recorded with no value.
SYMPTOMS = (
    ("49727002", "Cough", 0.12),
    ("21522001", "Abdominal pain", 0.08),
    ("267036007", "Dyspnoea", 0.06),
    ("161891005", "Backache", 0.10),
    ("29857009", "Chest pain", 0.05),
    ("404640003", "Dizziness", 0.05),
    ("271807003", "Eruption of skin", 0.07),
    ("48694002", "Anxiety", 0.08),
    ("267102003", "Sore throat symptom", 0.08),
    ("162397003", "Pain in throat", 0.03),
    ("271594007", "Syncope", 0.01),
    ("62315008", "Diarrhoea", 0.05),
    ("79890006", "Loss of appetite", 0.02),
    ("82423001", "Chronic pain", 0.05),
)

VACCINES = {
    "flu": ("822851000000102", "Seasonal influenza vaccination"),
    "pneumo": ("12866006", "Pneumococcal vaccination"),
    "mmr": ("38598009", "Administration of measles and mumps and rubella vaccine"),
    "hpv": ("761841000", "Administration of vaccine product containing only Human papillomavirus antigen"),
    # "covid" comes from the primis covadm1 code list
}

REFERRALS = (
    ("183519002", "Referral to cardiology service", 0.30),
    ("103699006", "Referral to dietitian", 0.15),
    ("306206005", "Referral to service", 0.40),
    # the echocardiography referral list is mixed in for heart failure / older patients
)
REFERRAL_CATEGORY = {"coding": [{"system": SNOMED, "code": "3457005", "display": "Patient referral"}]}

# Recall (planned review) codes per condition: (code, display, interval in days)
RECALLS = {
    "dm1": ("170777000", "Diabetic annual review", 365),
    "dm2": ("170777000", "Diabetic annual review", 365),
    "copd": ("394703002", "Chronic obstructive pulmonary disease annual review", 365),
    "asthma": ("270442000", "Asthma monitoring check done", 365),
    "hf": ("134378009", "Congestive heart failure monitoring", 182),
    "hyp": ("314529007", "Medication review due", 365),
}
NEVER_SMOKED = ("266919005", "Never smoked tobacco")
EX_SMOKER = ("8517006", "Ex-smoker")

# Preferred (most commonly recorded) codes in each list: code -> share of draws.  The rest of the list
# shares what is left.
PREFERRED = {
    "hyp": {"59621000": 0.6, "38341003": 0.15, "1201005": 0.05},
    "dm2": {"44054006": 0.8},
    "dm1": {"46635009": 0.8},
    "copd": {"13645005": 0.8},
    "hf": {"84114007": 0.5, "42343007": 0.3},
    "ld": {"110359009": 0.5},
    "asthma": {"195967001": 0.8},
    "bp": {"271649006": 0.6, "72313002": 0.15, "407554009": 0.1},
    "weight": {"27113001": 0.6, "162763007": 0.2},
    "bmi": {"60621009": 0.8, "301331008": 0.2},
    "height": {"50373000": 0.6, "162755006": 0.2},
    "chol": {"1005671000000105": 0.5, "850981000000101": 0.3},
    "fatigue": {"84229001": 0.4, "267032009": 0.2},
}
_EXCLUDE_TERMS = re.compile(r"pregnan|childbirth|puerper|eclampsia|delivered|fetus|neonat", re.I)

# Antihypertensive dm+d products.  The project's hypertension dm+d list has no terms (and some ids in it
# were damaged by a spreadsheet), so the generator draws from this small table of common products whose
# ids ARE in that list; `CodeLibrary` keeps only the ones present in the list it loads.
ANTIHYPERTENSIVES = (
    ("319283006", "Amlodipine 5mg tablets", 0.10),
    ("7305311000001108", "Amlodipine 5mg tablets (A A H Pharmaceuticals Ltd)", 0.08),
    ("7333311000001100", "Amlodipine 5mg tablets (Teva UK Ltd)", 0.06),
    ("7305011000001105", "Amlodipine 10mg tablets (A A H Pharmaceuticals Ltd)", 0.06),
    ("7333511000001106", "Amlodipine 10mg tablets (Teva UK Ltd)", 0.04),
    ("18457811000001100", "Amlodipine 10mg tablets (Accord Healthcare Ltd)", 0.03),
    ("172711000001100", "Istin 5mg tablets (Upjohn UK Ltd)", 0.01),
    ("18111000001103", "Lisinopril 5mg tablets (A A H Pharmaceuticals Ltd)", 0.07),
    ("528611000001100", "Lisinopril 5mg tablets (Teva UK Ltd)", 0.04),
    ("532711000001109", "Lisinopril 10mg tablets (A A H Pharmaceuticals Ltd)", 0.08),
    ("640511000001107", "Lisinopril 10mg tablets (Teva UK Ltd)", 0.05),
    ("668811000001102", "Lisinopril 20mg tablets (A A H Pharmaceuticals Ltd)", 0.06),
    ("487411000001102", "Lisinopril 20mg tablets (Teva UK Ltd)", 0.03),
    ("825311000001100", "Zestril 10mg tablets (AstraZeneca UK Ltd)", 0.01),
    ("10828511000001108", "Perindopril erbumine 2mg tablets (A A H Pharmaceuticals Ltd)", 0.03),
    ("11879911000001102", "Perindopril erbumine 4mg tablets (Teva UK Ltd)", 0.04),
    ("10829111000001106", "Perindopril erbumine 8mg tablets (A A H Pharmaceuticals Ltd)", 0.02),
    ("4811000001104", "Enalapril 2.5mg tablets (A A H Pharmaceuticals Ltd)", 0.03),
    ("102611000001100", "Enalapril 2.5mg tablets (Zentiva)", 0.02),
    ("303411000001102", "Captopril 25mg tablets (A A H Pharmaceuticals Ltd)", 0.01),
    ("215411000001106", "Diltiazem 60mg modified-release tablets (A A H Pharmaceuticals Ltd)", 0.03),
    ("11404611000001108", "Felodipine 5mg modified-release tablets (Almus Pharmaceuticals Ltd)", 0.03),
    ("490211000001101", "Plendil 5mg modified-release tablets (AstraZeneca UK Ltd)", 0.01),
)

# Ethnic category letters (NHS data dictionary, England) with approximate 2021 census shares, in the
# order of the OpenSAFELY 16-group ethnicity grouping (Grouping_16 = index + 1).
ETHNIC_LETTERS = "ABCDEFGHJKLMNPRS"
ETHNIC_LABELS = (
    "White - British", "White - Irish", "White - Any other White background",
    "Mixed - White and Black Caribbean", "Mixed - White and Black African", "Mixed - White and Asian",
    "Mixed - Any other mixed background", "Asian or Asian British - Indian",
    "Asian or Asian British - Pakistani", "Asian or Asian British - Bangladeshi",
    "Asian or Asian British - Any other Asian background", "Black or Black British - Caribbean",
    "Black or Black British - African", "Black or Black British - Any other Black background",
    "Other Ethnic Groups - Chinese", "Other Ethnic Groups - Any other ethnic group",
)
ETHNIC_SHARES = (73.5, 0.9, 6.3, 0.9, 0.4, 0.8, 0.7, 3.3, 2.7, 1.1, 1.7, 1.1, 2.5, 0.5, 0.8, 2.2)


def coding(system: str, code: str, display: str | None = None) -> dict:
    c = {"system": system, "code": code}
    if display:
        c["display"] = display
    return c


@dataclass
class CodeTable:
    """Weighted list of codings; `concepts[i]` is a shared CodeableConcept {"coding": [codings[i]]}.

    Shared dicts are never mutated by the generator (dirty edits replace them)."""

    codings: list[dict]
    cum: np.ndarray

    @classmethod
    def build(cls, rows: list[tuple[str, str, str]] | list[tuple[str, str, str, float]]) -> CodeTable:
        if not rows:
            raise ValueError("empty code table")
        codings = [coding(r[0], r[1], r[2]) for r in rows]
        w = np.array([r[3] if len(r) > 3 else 1.0 for r in rows], dtype=float)
        if w.sum() <= 0:
            w = np.ones(len(rows))
        cum = np.cumsum(w / w.sum())
        cum[-1] = 1.0
        return cls(codings, cum)

    def __post_init__(self) -> None:
        self.concepts = [{"coding": [c]} for c in self.codings]

    def __len__(self) -> int:
        return len(self.codings)

    def draw(self, u: np.ndarray) -> list[int]:
        """Indexes for uniforms `u` (vectorised inverse-CDF draw)."""
        return np.searchsorted(self.cum, u, side="right").clip(0, len(self.codings) - 1).tolist()

    def draw1(self, u: float) -> int:
        return min(int(np.searchsorted(self.cum, u, side="right")), len(self.codings) - 1)


def _is_read_code(code: str) -> bool:
    """Five-character Read v2 / CTV3 code, not a supplier-local one (EMIS ^ESCT..., TPP Y....)."""
    return (len(code) == 5 and not code.startswith("Y")
            and all(ch.isascii() and (ch.isalnum() or ch == ".") for ch in code))


def read_codelist(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def _weighted(rows: list[tuple[str, str]], preferred: dict[str, float] | None, system: str = SNOMED,
              exclude: re.Pattern | None = None) -> CodeTable:
    preferred = preferred or {}
    rows = [(c, t) for c, t in rows if c in preferred or not (exclude and exclude.search(t))]
    present = {c for c, _ in rows}
    pref_total = sum(w for c, w in preferred.items() if c in present)
    rest = [c for c, _ in rows if c not in preferred]
    rest_w = (1.0 - pref_total) / len(rest) if rest else 0.0
    out = []
    for c, t in rows:
        out.append((system, c, t, preferred.get(c, rest_w)))
    return CodeTable.build(out)


def _drug_table(rows: list[dict[str, str]], rules: list[tuple[str, float]], exclude: re.Pattern,
                code_key: str = "code", term_key: str = "term") -> CodeTable:
    """dm+d products whose term matches one of the `rules` regexes; each rule's weight is shared among
    its matches."""
    out: list[tuple[str, str, str, float]] = []
    for pattern, weight in rules:
        rx = re.compile(pattern, re.I)
        hits = [r for r in rows if rx.search(r[term_key]) and not exclude.search(r[term_key])
                and verhoeff_valid(r[code_key])]
        for r in hits:
            out.append((DMD, r[code_key], r[term_key], weight / len(hits)))
    return CodeTable.build(out)


_NOT_ROUTINE = re.compile(
    r"special order|oral solution|oral suspension|ampoule|nebuliser|respules|vials|injection .*ml vials|"
    r"imported|sachets|\bmg/5ml|unit dose",
    re.I,
)


@dataclass
class Drug:
    table: CodeTable
    dosage: tuple[str, ...]
    quantity: tuple[int, ...]
    unit: str


class CodeLibrary:
    """All code tables, built once from a code-list directory."""

    def __init__(self, codelist_dir: Path | None = None) -> None:
        d = Path(codelist_dir) if codelist_dir is not None else DEFAULT_CODELIST_DIR
        if not d.is_dir():
            raise FileNotFoundError(f"code list directory not found: {d}")
        self.dir = d

        def ct(name: str) -> list[tuple[str, str]]:
            rows = read_codelist(d / name)
            return [(r["code"], r.get("term") or "") for r in rows if verhoeff_valid(r["code"])]

        # Conditions
        self.conditions: dict[str, CodeTable] = {
            "hyp": _weighted(ct("nhsd-primary-care-domain-refsets-hyp_cod.csv"), PREFERRED["hyp"],
                             exclude=_EXCLUDE_TERMS),
            "dm2": _weighted(ct("nhsd-primary-care-domain-refsets-dmtype2_cod.csv"), PREFERRED["dm2"],
                             exclude=_EXCLUDE_TERMS),
            "dm1": _weighted(ct("nhsd-primary-care-domain-refsets-dmtype1_cod.csv"), PREFERRED["dm1"],
                             exclude=_EXCLUDE_TERMS),
            "copd": _weighted(ct("nhsd-primary-care-domain-refsets-copd_cod.csv"), PREFERRED["copd"]),
            "hf": _weighted(ct("nhsd-primary-care-domain-refsets-hf_cod.csv"), PREFERRED["hf"],
                            exclude=_EXCLUDE_TERMS),
            "ld": _weighted(ct("nhsd-primary-care-domain-refsets-ld_cod.csv"), PREFERRED["ld"]),
            "asthma": _weighted(ct("primis-covid19-vacc-uptake-ast.csv"), PREFERRED["asthma"],
                                exclude=_EXCLUDE_TERMS),
        }
        # Measurements
        self.bp = _weighted(ct("opensafely-systolic-blood-pressure-qof.csv"), PREFERRED["bp"])
        self.weight = _weighted(ct("opensafely-weight-snomed.csv"), PREFERRED["weight"])
        self.bmi = _weighted(ct("nhsd-primary-care-domain-refsets-bmival_cod.csv"), PREFERRED["bmi"])
        self.height = _weighted(ct("opensafely-height-snomed.csv"), PREFERRED["height"])
        self.chol = _weighted(ct("opensafely-cholesterol-tests-numerical-value.csv"), PREFERRED["chol"])
        self.hba1c = _weighted(ct("opensafely-glycated-haemoglobin-hba1c-tests-numerical-value.csv"), None)
        self.fatigue = _weighted(ct("reducehf-fatigue.csv"), PREFERRED["fatigue"])
        self.symptoms = CodeTable.build([(SNOMED, c, t, w) for c, t, w in SYMPTOMS])
        # Smoking status: never / ex / current, mixing SNOMED and CTV3 (QOF CTV3 codes only).
        smoking = read_codelist(d / "opensafely-smoking-clear.csv")

        def ctv3(cat: str) -> list[tuple[str, str, str, float]]:
            rows = [r for r in smoking if r["Category"] == cat and r["CodeSource"] == "QOF"]
            return [(CTV3, r["CTV3Code"], r["Description"], 0.5 / len(rows)) for r in rows]

        current = ct("reducehf-current-smoker.csv")
        self.smoking = {
            "N": CodeTable.build([(SNOMED, *NEVER_SMOKED, 0.5), *ctv3("N")]),
            "E": CodeTable.build([(SNOMED, *EX_SMOKER, 0.5), *ctv3("E")]),
            "S": CodeTable.build([*[(SNOMED, c, t, 0.6 / len(current)) for c, t in current],
                                  *[(s, c, t, w * 0.8) for s, c, t, w in ctv3("S")]]),
        }
        # Ethnicity: per 16-group index, SNOMED (OpenSAFELY list) mostly, plus Read v2 (EMIS map) and
        # CTV3 (TPP map) source codes.
        eth = read_codelist(d / "opensafely-ethnicity-snomed-0removed.csv")
        emis = read_codelist(d / "EmisEthnicityMap.csv")
        tpp = read_codelist(d / "TppEthnicityMap.csv")
        self.ethnicity: list[CodeTable] = []
        for g, letter in enumerate(ETHNIC_LETTERS):
            sn = [(SNOMED, r["code"], r["Ethnicity"]) for r in eth
                  if r["Grouping_16"] == str(g + 1) and verhoeff_valid(r["code"])]
            rv = [(READ_V2, r["SourceCode"], r["SourceTerm"]) for r in emis
                  if r["TargetCode"] == letter and _is_read_code(r["SourceCode"])]
            c3 = [(CTV3, r["SourceCode"], r["SourceTerm"]) for r in tpp
                  if r["TargetCode"] == letter and _is_read_code(r["SourceCode"])]
            rows: list[tuple[str, str, str, float]] = [(*x, 0.8 / len(sn)) for x in sn]
            rows += [(*x, 0.1 / len(rv)) for x in rv]
            rows += [(*x, 0.1 / len(c3)) for x in c3]
            self.ethnicity.append(CodeTable.build(rows))
        self.sexual_orientation = CodeTable.build([(SNOMED, c, t, w) for c, t, w in SEXUAL_ORIENTATION])
        self.allergies = CodeTable.build([(SNOMED, c, t, w) for c, t, w in ALLERGIES])
        covid = ct("primis-covid19-vacc-uptake-covadm1.csv")
        self.vaccines = {k: coding(SNOMED, c, t) for k, (c, t) in VACCINES.items()}
        self.covid_vaccines = CodeTable.build([(SNOMED, c, t) for c, t in covid])
        self.referrals = CodeTable.build([(SNOMED, c, t, w) for c, t, w in REFERRALS])
        echo = ct("reducehf-echocardiography-referral.csv")
        self.echo_referrals = CodeTable.build([(SNOMED, c, t) for c, t in echo])
        self.recalls = {k: {"coding": [coding(SNOMED, c, t)]} for k, (c, t, _) in RECALLS.items()}
        self.recall_interval = {k: v[2] for k, v in RECALLS.items()}
        self.optout_dissent = [coding(*x) for x in OPTOUT_DISSENT]
        self.optout_withdrawn = [coding(*x) for x in OPTOUT_WITHDRAWN]
        # Drugs
        antidiab = read_codelist(d / "opensafely-antidiabetic-drugs.csv")
        insulin = read_codelist(d / "opensafely-insulin-medication.csv")
        resp = read_codelist(d / "opensafely-copd-medications-new-dmd.csv")
        hyp_ids = {r["code"] for r in read_codelist(d / "user-elsie_horne-hypertension_drugs_dmd.csv")}
        hyp_rows = [(DMD, c, t, w) for c, t, w in ANTIHYPERTENSIVES if c in hyp_ids and verhoeff_valid(c)]
        if not hyp_rows:
            raise ValueError("no antihypertensive products found in the hypertension dm+d list")
        tabs = ("One tablet once daily", "One tablet daily", "Take one each morning")
        self.drugs: dict[str, Drug] = {
            "antihypertensive": Drug(CodeTable.build(hyp_rows), tabs, (28, 56), "tablet"),
            "metformin": Drug(_drug_table(antidiab, [(r"^metformin .*tablets", 1.0)], _NOT_ROUTINE),
                              ("One tablet twice daily with meals", "One tablet three times a day with food"),
                              (56, 84), "tablet"),
            "antidiabetic_2nd": Drug(
                _drug_table(antidiab, [(r"^gliclazide 80mg tablets", 0.4), (r"^sitagliptin", 0.2),
                                       (r"^(dapagliflozin|empagliflozin)", 0.3), (r"^pioglitazone", 0.1)],
                            _NOT_ROUTINE),
                tabs, (28, 56), "tablet"),
            "insulin": Drug(_drug_table(insulin, [(r"pre-filled|cartridges", 1.0)], _NOT_ROUTINE),
                            ("Use as directed", "Inject as directed by diabetes team"), (5, 10),
                            "pre-filled pen"),
            "reliever": Drug(_drug_table(resp, [(r"^salbutamol 100micrograms/dose inhaler", 1.0)],
                                         _NOT_ROUTINE),
                             ("Two puffs when required",
                              "One to two puffs up to four times a day when required"),
                             (1, 2), "inhaler"),
            "preventer": Drug(_drug_table(resp, [(r"^(beclometasone|budesonide|fluticasone).*inhaler", 1.0)],
                                          _NOT_ROUTINE),
                              ("Two puffs twice daily", "One puff twice daily"), (1,), "inhaler"),
            "lama": Drug(_drug_table(resp, [(r"^(tiotropium|umeclidinium|glycopyrronium|aclidinium)", 1.0)],
                                     _NOT_ROUTINE),
                         ("Inhale the contents of one capsule once daily", "One puff once daily"), (1,),
                         "inhaler"),
        }

    def valid_codes(self) -> set[tuple[str, str]]:
        """Every (system, code) the library can emit as a valid code (for tests)."""
        out: set[tuple[str, str]] = set()
        tables: list[CodeTable] = [
            *self.conditions.values(), self.bp, self.weight, self.bmi, self.height, self.chol, self.hba1c,
            self.fatigue, self.symptoms, *self.smoking.values(), *self.ethnicity, self.sexual_orientation,
            self.allergies, self.covid_vaccines, self.referrals, self.echo_referrals,
            *(dr.table for dr in self.drugs.values()),
        ]
        for t in tables:
            out.update((c["system"], c["code"]) for c in t.codings)
        out.update((c["system"], c["code"]) for c in self.vaccines.values())
        out.update((c["coding"][0]["system"], c["coding"][0]["code"]) for c in self.recalls.values())
        out.update((c["system"], c["code"]) for c in self.optout_dissent + self.optout_withdrawn)
        out.add((REFERRAL_CATEGORY["coding"][0]["system"], REFERRAL_CATEGORY["coding"][0]["code"]))
        return out
