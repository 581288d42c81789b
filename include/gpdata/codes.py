"""Clinical code checks and configured code sets."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import yaml

from gpdata.errors import ConfigError
from gpdata.settings import CONFIG_DIR

# Verhoeff tables (dihedral group D5), as used by SNOMED CT check digits.
_D = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5], [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
      [3, 4, 0, 1, 2, 8, 9, 5, 6, 7], [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
      [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3], [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
      [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]]
_P = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 5, 7, 6, 2, 8, 3, 0, 9, 4], [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
      [8, 9, 1, 6, 0, 4, 3, 5, 2, 7], [9, 4, 5, 3, 1, 2, 6, 8, 7, 0], [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
      [2, 7, 9, 3, 8, 0, 6, 4, 1, 5], [7, 0, 4, 6, 9, 1, 3, 2, 5, 8]]
_CONCEPT_PARTITIONS = {"00", "10"}          # concept ids (international, extension)
_SCTID_PARTITIONS = {"00", "01", "02", "10", "11", "12"}


_INV = [0, 4, 3, 2, 1, 5, 6, 7, 8, 9]


def verhoeff_ok(digits: str) -> bool:
    """True if ``digits`` is all ASCII digits and its last digit is a correct Verhoeff check digit."""
    if not digits or not digits.isascii() or not digits.isdigit():
        return False
    check = 0
    for i, ch in enumerate(reversed(digits)):
        check = _D[check][_P[i % 8][int(ch)]]
    return check == 0


def verhoeff_check_digit(payload: str) -> str:
    """The Verhoeff check digit to append to the digit string ``payload``."""
    check = 0
    for i, ch in enumerate(reversed(payload)):
        check = _D[check][_P[(i + 1) % 8][int(ch)]]
    return str(_INV[check])


def sctid_ok(code: str, concepts_only: bool = True) -> bool:
    """A well-formed SNOMED CT identifier: 6-18 digits, no leading zero, a valid partition, Verhoeff check."""
    if not (6 <= len(code) <= 18 and code.isdigit() and code[0] != "0"):
        return False
    if code[-3:-1] not in (_CONCEPT_PARTITIONS if concepts_only else _SCTID_PARTITIONS):
        return False
    return verhoeff_ok(code)


def _read_ok(code: str) -> bool:
    return 1 <= len(code.rstrip(".")) <= 5 and len(code) <= 5 and all(c.isalnum() or c == "." for c in code)


_CHECKS = {"snomed": sctid_ok, "dmd": sctid_ok, "readv2": _read_ok, "ctv3": _read_ok}


def codes_valid(systems: pa.Array, codes: pa.Array) -> pa.Array:
    """Per row: is the code well formed for its system? Checked once per distinct (system, code)."""
    keys = pc.binary_join_element_wise(pc.fill_null(systems, ""), pc.fill_null(codes, ""), "|")
    enc = pc.dictionary_encode(keys).combine_chunks() if isinstance(keys, pa.ChunkedArray) \
        else pc.dictionary_encode(keys)
    verdicts = []
    for key in enc.dictionary.to_pylist():
        system, _, code = key.partition("|")
        check = _CHECKS.get(system)
        verdicts.append(bool(code) and (check(code) if check else False))
    return pc.take(pa.array(verdicts, pa.bool_()), enc.indices)


def _key(system: str, code: str) -> str:
    return f"{system}|{code}"


def code_keys(systems: pa.Array, codes: pa.Array) -> pa.Array:
    """``system|code`` per row (null where either is null), for membership tests against code sets."""
    return pc.binary_join_element_wise(systems, codes, "|")


# Code systems as sources name them: FHIR URIs (http or https, with or without a trailing slash or a SNOMED
# edition path), OIDs (with or without ``urn:oid:``) and the labels flat-file exports use.
_SYSTEM_ALIASES = {
    "snomed": ("snomed.info/sct", "2.16.840.1.113883.6.96", "snomed", "snomedct", "snomed ct", "snomed-ct", "sct"),
    "readv2": ("read.info/readv2", "terminology.hl7.org/codesystem/rcv2", "2.16.840.1.113883.6.29", "readv2",
               "read v2", "read2", "read", "r2", "rcv2"),
    "ctv3": ("read.info/ctv3", "terminology.hl7.org/codesystem/read-codes", "2.16.840.1.113883.6.6", "ctv3",
             "read v3", "read3", "r3"),
    "dmd": ("dmd.nhs.uk", "dm+d", "dmd"),
}
_SYSTEM_OF = {alias: label for label, aliases in _SYSTEM_ALIASES.items() for alias in aliases}


def system_label(system: str | None) -> str | None:
    """The project's label (snomed, readv2, ctv3, dmd) of a code system as a source names it, or the name
    itself (trimmed) when it is not one of these."""
    if system is None:
        return None
    s = str(system).strip()
    key = s.lower().removeprefix("urn:oid:")
    for scheme in ("https://", "http://"):
        key = key.removeprefix(scheme)
    key = key.removeprefix("www.").rstrip("/")
    if key.startswith("snomed.info/sct"):  # an edition or version path after the system
        return "snomed"
    return _SYSTEM_OF.get(key, s or None)


def trim_code(code: str | None) -> str | None:
    """A code as delivered, without surrounding white space (including non-breaking spaces)."""
    if code is None:
        return None
    return str(code).strip() or None


def read_stem(code: str) -> str:
    """A Read v2 or CTV3 code without its dot padding or its two-digit term code: ``9Nu0.00``, ``9Nu0.``
    and ``9Nu0`` are all ``9Nu0``. A code longer than 5 characters that is not 5 + a term code is returned as is."""
    code = code.strip()
    if len(code) == 7 and code[5:].isdigit():
        code = code[:5]
    return code.rstrip(".") if len(code) <= 5 else code


@dataclass(frozen=True)
class OptOutCodes:
    """Type 1 codes as ``system|code`` keys, and as bare codes (SNOMED concept ids and Read/CTV3 stems)."""

    dissent: frozenset[str]
    withdrawn: frozenset[str]
    dissent_codes: frozenset[str] = frozenset()
    withdrawn_codes: frozenset[str] = frozenset()

    def kind(self, code: str | None) -> str | None:
        """``dissent``, ``withdrawn`` or None for a code in any form and under any system label: matching is
        on the code itself (trimmed; Read and CTV3 by stem), so a dissent is never missed for how its system
        was written. A code that is both counts as dissent."""
        if code is None:
            return None
        code = str(code).strip()
        for form in (code, read_stem(code)):
            if form in self.dissent_codes:
                return "dissent"
        for form in (code, read_stem(code)):
            if form in self.withdrawn_codes:
                return "withdrawn"
        return None

    def needles(self) -> tuple[bytes, ...]:
        """Byte strings at least one of which any delivered form of a type 1 code contains."""
        return tuple(sorted({c.encode() for c in self.dissent_codes | self.withdrawn_codes}))

    def classify(self, codes: pa.Array) -> tuple[pa.Array, pa.Array]:
        """(is dissent, is withdrawal) per row, decided once per distinct code."""
        codes = codes.combine_chunks() if isinstance(codes, pa.ChunkedArray) else codes
        enc = pc.dictionary_encode(codes.cast(pa.string()))
        kinds = [self.kind(c) for c in enc.dictionary.to_pylist()]
        dissent = pa.array([k == "dissent" for k in kinds], pa.bool_())
        withdrawn = pa.array([k == "withdrawn" for k in kinds], pa.bool_())
        return (pc.fill_null(pc.take(dissent, enc.indices), False),
                pc.fill_null(pc.take(withdrawn, enc.indices), False))


def _expand(system: str, codes: list[str]) -> set[str]:
    out = set()
    for code in codes:
        code = str(code)
        out.add(_key(system, code))
        if system in ("readv2", "ctv3"):  # Read codes are often delivered without their dot padding
            out.add(_key(system, code.rstrip(".")))
            out.add(_key(system, code.rstrip(".").ljust(5, ".")))
    return out


def _bare(system: str, codes: list[str]) -> set[str]:
    return {read_stem(str(c)) if system in ("readv2", "ctv3") else str(c).strip() for c in codes}


def _load_yaml(path: Path) -> dict:
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration file {path} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"configuration file {path} must hold a mapping")
    return doc


@lru_cache(maxsize=4)
def optout_codes(path: Path = CONFIG_DIR / "optout.yaml") -> OptOutCodes:
    doc = _load_yaml(path)
    sets = {}
    for kind in ("dissent", "withdrawn"):
        entries = doc.get(kind)
        if not isinstance(entries, dict) or not entries:
            raise ConfigError(f"{path}: '{kind}' must map code systems to lists of codes")
        sets[kind] = frozenset().union(*(_expand(system, codes) for system, codes in entries.items()))
        sets[f"{kind}_codes"] = frozenset().union(*(_bare(system, codes) for system, codes in entries.items()))
    return OptOutCodes(**sets)


@dataclass(frozen=True)
class RestrictedCodes:
    """Codes whose records are never extracted, by category (``identifying`` for the code lists; the legally
    restricted categories of deid.yaml). Matched on the code itself, trimmed, Read v2 / CTV3 by stem, whatever
    the source calls its system: a restricted code is never let through for how its system was written."""

    categories: dict[str, frozenset[str]]  # category -> bare codes (SNOMED ids, Read/CTV3 stems)

    def category(self, code: str | None) -> str | None:
        if code is None:
            return None
        code = str(code).strip()
        for form in (code, read_stem(code)):
            for name, codes in self.categories.items():
                if form in codes:
                    return name
        return None

    def classify(self, codes: pa.Array | pa.ChunkedArray) -> pa.Array:
        """The category per row (null where the code is not restricted), decided once per distinct code."""
        codes = codes.combine_chunks() if isinstance(codes, pa.ChunkedArray) else codes
        enc = pc.dictionary_encode(codes.cast(pa.string()))
        cats = pa.array([self.category(c) for c in enc.dictionary.to_pylist()], pa.string())
        return pc.take(cats, enc.indices)

    def __contains__(self, code: object) -> bool:
        return self.category(code if isinstance(code, str) else None) is not None


@lru_cache(maxsize=4)
def restricted_codes(path: Path = CONFIG_DIR / "deid.yaml") -> RestrictedCodes:
    """The restricted codes of ``deid.yaml``: its code lists (CSV files) and its legally restricted categories
    (codes per system, inline)."""
    doc = _load_yaml(path)
    cats: dict[str, set[str]] = {}
    for i, entry in enumerate(doc.get("restricted_code_lists") or ()):
        try:
            file, column, system = path.parent / entry["file"], entry["column"], entry["system"]
        except (KeyError, TypeError):
            raise ConfigError(f"{path}: restricted_code_lists[{i}] needs file, column and system") from None
        category = str(entry.get("category") or "identifying")
        try:
            with open(file, newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                if column not in (reader.fieldnames or ()):
                    raise ConfigError(f"{file}: no column {column!r} (restricted_code_lists[{i}] in {path})")
                found = [row[column].strip() for row in reader if (row[column] or "").strip()]
        except FileNotFoundError:
            raise ConfigError(f"{path}: restricted code list {file} does not exist") from None
        cats.setdefault(category, set()).update(_bare(system, found))
    categories = doc.get("restricted_categories") or {}
    if not isinstance(categories, dict):
        raise ConfigError(f"{path}: restricted_categories must map category names to code systems")
    for name, systems in categories.items():
        if not isinstance(systems, dict) or not systems or not all(
                isinstance(v, list) and v for v in systems.values()):
            raise ConfigError(f"{path}: restricted_categories.{name} must map code systems to non-empty code lists")
        unknown = set(systems) - set(_CHECKS)
        if unknown:
            raise ConfigError(f"{path}: restricted_categories.{name}: unknown code system(s) {sorted(unknown)} "
                              f"(use {sorted(_CHECKS)})")
        for system, codes in systems.items():
            cats.setdefault(str(name), set()).update(_bare(system, [str(c) for c in codes]))
    return RestrictedCodes({name: frozenset(codes) for name, codes in cats.items()})


@dataclass(frozen=True)
class Measurement:
    name: str
    codes: tuple[str, ...]
    units: tuple[str, ...]
    min: float
    max: float


@lru_cache(maxsize=4)
def measurements(path: Path = CONFIG_DIR / "quality.yaml") -> tuple[Measurement, ...]:
    """The measurements of quality.yaml: their codes, units and plausible range. Only these codes keep a
    numeric value at extraction (gpdata.privacy.deid); the quality gate checks their units and ranges."""
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (FileNotFoundError, yaml.YAMLError) as exc:
        raise ConfigError(f"quality configuration {path}: {exc}") from None
    out = []
    for name, spec in (doc.get("measurements") or {}).items():
        try:
            codes: set[str] = set()
            for rel in spec["code_lists"]:
                with open(path.parent / rel, newline="", encoding="utf-8-sig") as fh:
                    codes.update(row["code"].strip() for row in csv.DictReader(fh) if row.get("code"))
            out.append(Measurement(name, tuple(sorted(codes)), tuple(spec["units"]), float(spec["min"]),
                                   float(spec["max"])))
        except (KeyError, TypeError, ValueError, FileNotFoundError) as exc:
            raise ConfigError(f"quality configuration {path}: measurement {name!r} is incomplete or wrong "
                              f"({exc.__class__.__name__}: {exc})") from None
    return tuple(out)
