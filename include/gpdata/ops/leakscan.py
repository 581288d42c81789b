"""Leak scanner: proves that identifiers from the sources appear nowhere in what a run wrote.

Identifiers are collected from the FHIR deliveries themselves (NHS numbers in plain and spaced forms,
postcodes, names, address lines, phone numbers, full dates of birth). Outputs are read as data: every
Parquet file cell by cell (all versions of a Delta table, since old files stay on disk until vacuum),
JSON, logs and other text by tokens. Matching is on token sequences, so "12 Oak Road" is found in
"...12, OAK ROAD..." but "Hill" is not found inside "Hillside".

Numeric Parquet columns are checked for ten-digit whole numbers that pass the NHS-number Modulus 11 check
(an NHS number sent as a numeric result), whether or not the deliveries hold that number.

Dates of birth on the first of a month are indistinguishable from a birth month and are not searched.
Dates in Parquet are checked per patient: given the pseudonymiser, a row whose ``patient_pid`` belongs to a
patient and which holds that patient's full date of birth in any date column is a leak. (An event on some
other patient's birthday is not.) A surname alone is searched only in Parquet string cells (codes and
pseudonyms), where no word should be; in free text such as logs only full names are searched.

Identifiers too short to identify anyone are not searched as text: an identifier of another kind than NHS
number, postcode or date of birth with fewer than 6 letters and digits (a practitioner code ``100``, a name
``Jo Li``) would match CSS ``100%`` or ordinary words on every page, and the real leaks would drown in noise.
They are counted (``Identifiers.skipped``) so the report says so. Surnames are searched alone only in Parquet
string cells, only from 4 letters, and not in gpdata's own lower-case snake_case codes (a quarantine reason
``patient_invalid_nhs_number`` is not a finding for a patient called Invalid), nor in the values gpdata writes
from its own vocabularies (an ethnic group ``White`` is not a finding for a patient called White).

Numeric Parquet columns are read too: an NHS number from the sources sent as a number is found. File and
folder names are scanned like text. ``group`` folds findings into (kind, folder) groups with counts, the kinds
that identify a person directly (NHS number, name, address, postcode, date of birth) first, so a real leak is
never hidden below a page of lesser findings.

A root may be a local folder or the store on S3 (a ``gpdata.storage.StorePath``): objects are read through
the same path interface, and a finding names the ``s3://`` object.
"""

from __future__ import annotations

import gc
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gpdata.arrowutil import isin
from gpdata.privacy import nhsnumber
from gpdata.share.generalise import ETHNIC_GROUPS

_TOKEN = re.compile(r"[A-Z0-9]+")
PSEUDONYM_RE = r"^[0-9a-f]{64}$"
# Values gpdata writes from its own fixed vocabularies: a patient called White is not found in an ethnic group.
OWN_VOCABULARY = frozenset(v.upper() for v in ETHNIC_GROUPS.values())
_ENUM_WORD = re.compile(r"(?<![A-Za-z0-9_])[a-z0-9]+(?:_[a-z0-9]+)+(?![A-Za-z0-9_])")  # gpdata's own lower-case
# codes (quarantine reasons, states), alone or inside a text: no surname
DELTA_LOG_SKIP = frozenset({"date_of_birth"})
TEXT_SUFFIXES = {".json", ".log", ".txt", ".csv", ".md", ".html", ".yaml", ".yml", ".crc"}
MIN_IDENTIFIER_CHARS = 6  # letters and digits; shorter identifiers are not searched as text
ALWAYS_SEARCHED = frozenset({"nhs_number", "postcode", "date_of_birth"})
DIRECT_KINDS = ("nhs_number", "name", "address", "postcode", "date_of_birth")  # listed first
MIN_SURNAME_CHARS = 4


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.upper())


@dataclass
class Identifiers:
    sequences: dict[int, set[tuple[str, ...]]] = field(default_factory=dict)  # length -> token sequences
    labels: dict[tuple[str, ...], str] = field(default_factory=dict)
    surnames: set[str] = field(default_factory=set)
    vocabulary: set[str] = field(default_factory=set)  # every token of every identifier: a quick reject
    dob_by_nhs: dict[str, str] = field(default_factory=dict)
    dob_by_pid: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # too short to search: kind -> count
    nhs_numbers: set[int] = field(default_factory=set)  # for numeric columns

    def add(self, kind: str, text: str | None) -> None:
        if not text:
            return
        seq = tuple(tokens(text))
        if not seq:
            return
        if kind not in ALWAYS_SEARCHED and len("".join(seq)) < MIN_IDENTIFIER_CHARS:
            self.skipped[kind] = self.skipped.get(kind, 0) + 1
            return
        if kind == "nhs_number" and len(seq) == 1:
            self.nhs_numbers.add(int(seq[0]))
        self.sequences.setdefault(len(seq), set()).add(seq)
        self.vocabulary.update(seq)
        self.labels.setdefault(seq, kind)
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def link(self, pseudonymise: Callable[[pa.Array], pa.Array]) -> None:
        """Map each patient pseudonym to the full date of birth, for the per-patient date check."""
        nhs = list(self.dob_by_nhs)
        pids = pseudonymise(pa.array(nhs, pa.string())).to_pylist()
        self.dob_by_pid = {pid: self.dob_by_nhs[n] for pid, n in zip(pids, nhs, strict=True)}

    def describe(self) -> str:
        found = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items()))
        short = ", ".join(f"{n} {k}" for k, n in sorted(self.skipped.items()))
        return found + (f" (not searched, under {MIN_IDENTIFIER_CHARS} characters: {short})" if short else "")

    def find(self, text: str, skip: frozenset[str] = frozenset()) -> str | None:
        """The kind of the first identifier found in the text (ignoring kinds in ``skip``), or None."""
        toks = tokens(text)
        if self.vocabulary.isdisjoint(toks):
            return None
        for length, seqs in self.sequences.items():
            for i in range(len(toks) - length + 1):
                seq = tuple(toks[i:i + length])
                if seq in seqs and self.labels[seq] not in skip:
                    return self.labels[seq]
        return None


def _patient_identifiers(res: dict, ids: Identifiers) -> None:
    nhs = None
    for ident in res.get("identifier") or ():
        value = ident.get("value") or ""
        digits = re.sub(r"\D", "", value)
        if len(digits) == 10:
            nhs = digits
            ids.add("nhs_number", digits)
            ids.add("nhs_number", f"{digits[:3]} {digits[3:6]} {digits[6:]}")
        elif value:
            ids.add("identifier", value)
    for name in res.get("name") or ():
        family = name.get("family")
        for given in name.get("given") or ():
            ids.add("name", f"{given} {family}")
        if family and len(family) >= MIN_SURNAME_CHARS:
            ids.surnames.add(family.upper())
    for address in res.get("address") or ():
        for line in address.get("line") or ():
            ids.add("address", line)
        postcode = (address.get("postalCode") or "").upper().replace(" ", "")
        if postcode:
            ids.add("postcode", postcode)
            ids.add("postcode", f"{postcode[:-3]} {postcode[-3:]}")
    for telecom in res.get("telecom") or ():
        ids.add("telecom", telecom.get("value"))
    dob = res.get("birthDate") or ""
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", dob) and not dob.endswith("-01"):
        y, m, d = dob.split("-")
        if nhs:
            ids.dob_by_nhs[nhs] = dob
        for form in (dob, f"{d}/{m}/{y}", f"{y}{m}{d}", f"{d}-{m}-{y}"):
            ids.add("date_of_birth", form)


def collect_identifiers(*sources: Path) -> Identifiers:
    """Identifiers of every patient and practitioner in every delivery under each of ``sources``."""
    ids = Identifiers()
    gc.disable()  # millions of short-lived parsed objects: the cyclic collector only slows this down
    try:
        for path in sorted(p for folder in sources for p in Path(folder).rglob("*.json")):
            try:
                doc = orjson.loads(path.read_bytes())
            except orjson.JSONDecodeError:
                continue
            for entry in doc.get("entry") or () if isinstance(doc, dict) else ():
                res = entry.get("resource") or {}
                if res.get("resourceType") in ("Patient", "Practitioner"):
                    _patient_identifiers(res, ids)
            del doc
    finally:
        gc.enable()
    return ids


@dataclass(frozen=True)
class Finding:
    path: str
    where: str
    kind: str

    def __str__(self) -> str:  # says what kind of identifier and where, never the value
        return f"{self.path}: {self.where}: {self.kind}"


def _value_kind(value: str, ids: Identifiers) -> str | None:
    """The kind of identifier a text cell holds: any identifier in it, or a surname on its own outside gpdata's
    own vocabularies and lower-case codes, alone or inside a text (a failure's cause, counts by reason kept as
    JSON: ``{"invalid_nhs_number": 1}`` is a reason code, not a patient called Invalid)."""
    kind = ids.find(value)
    if kind is None and value.upper() not in OWN_VOCABULARY and ids.surnames & set(tokens(_ENUM_WORD.sub(" ", value))):
        kind = "name"
    return kind


def _scan_parquet(path: Path, ids: Identifiers) -> list[Finding]:
    findings = []
    with path.open("rb") as fh:  # a local file or an S3 object alike
        table = pq.read_table(fh)
    dobs = None
    if ids.dob_by_pid and "patient_pid" in table.column_names:
        pid_keys = pa.array(list(ids.dob_by_pid), pa.string())
        dob_values = pc.cast(pa.array(list(ids.dob_by_pid.values()), pa.string()), pa.date32())
        dobs = pc.take(dob_values, pc.index_in(table["patient_pid"], value_set=pid_keys))
    for name in table.column_names:
        col = table[name]
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            # A pseudonym (64 hex characters, one token) can never contain an identifier: skip them in bulk.
            col = pc.filter(col, pc.invert(pc.fill_null(pc.match_substring_regex(col, PSEUDONYM_RE), True)))
            for value in set(pc.unique(col).to_pylist()) - {None}:
                kind = _value_kind(value, ids)
                if kind:
                    findings.append(Finding(str(path), f"column {name}", kind))
                    break
        elif pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_decimal(col.type):
            # A number that is a valid NHS number is a leak whether or not the deliveries hold it; one the
            # deliveries hold (valid or not) is a leak too.
            values = pc.unique(col.combine_chunks()) if isinstance(col, pa.ChunkedArray) else pc.unique(col)
            known = pa.array(sorted(ids.nhs_numbers), pa.float64())
            if pc.any(nhsnumber.in_numbers(values)).as_py() or pc.any(isin(
                    pc.cast(values, pa.float64()), known)).as_py():
                findings.append(Finding(str(path), f"column {name}", "nhs_number"))
        elif dobs is not None and (pa.types.is_date(col.type) or pa.types.is_timestamp(col.type)):
            as_dates = pc.cast(col, pa.date32()) if pa.types.is_date(col.type) else pc.cast(
                pc.floor_temporal(col, unit="day"), pa.date32())
            if pc.any(pc.fill_null(pc.equal(as_dates, dobs), False)).as_py():
                findings.append(Finding(str(path), f"column {name}", "date_of_birth"))
    return findings


def scan_text(text: str, ids: Identifiers, where: str, skip: frozenset[str] = frozenset()) -> list[Finding]:
    findings = []
    for lineno, line in enumerate(text.splitlines(), 1):
        kind = ids.find(line, skip)
        if kind:
            findings.append(Finding(where, f"line {lineno}", kind))
    return findings


def scan_file(path: Path, ids: Identifiers) -> list[Finding]:
    if path.suffix == ".parquet":
        return _scan_parquet(path, ids)
    data = path.read_bytes()
    if path.suffix in TEXT_SUFFIXES or b"\0" not in data[:4096]:
        # A Delta transaction log holds per-file min/max column statistics: a date there is a bound over
        # many rows (it matches somebody's birthday by chance), so dates of birth are checked in the data
        # files, per patient, and every other identifier kind is still searched here.
        skip = DELTA_LOG_SKIP if "_delta_log" in path.parts else frozenset()
        return scan_text(data.decode("utf-8", errors="replace"), ids, str(path), skip)
    return []


def scan_tree(paths: Iterable[Path], ids: Identifiers, stats: dict | None = None,
              exclude: Iterable[Path] = ()) -> list[Finding]:
    """Scan every file under each path (or the file itself), its name and the names of the folders it is in:
    local paths or ``s3://`` store paths. Paths under ``exclude`` are left out; ``stats["files"]`` counts what
    was read."""
    from gpdata import storage

    skip = [str(storage.root(p)) for p in exclude]
    findings: list[Finding] = []
    named: set[str] = set()
    for root in map(storage.root, paths):
        files = [root] if root.is_file() else sorted((p for p in root.rglob("*") if p.is_file()), key=str)
        for path in files:
            if any(str(path) == s or str(path).startswith(s + "/") for s in skip):
                continue
            if stats is not None:
                stats["files"] = stats.get("files", 0) + 1
            for part in [path, *path.parents]:
                if str(part) in named or (part == root and part != path):
                    break  # the root's own name is the operator's
                named.add(str(part))
                kind = ids.find(part.name)
                if kind:
                    findings.append(Finding(str(part), "file name" if part == path else "folder name", kind))
            findings.extend(scan_file(path, ids))
    return findings


def group(findings: list[Finding]) -> list[dict]:
    """Findings folded by kind and folder, with counts: direct identifiers first, then by count."""
    groups: dict[tuple[str, str], dict] = {}
    for f in findings:
        folder = f.path.rsplit("/", 1)[0] if "/" in f.path else f.path
        g = groups.setdefault((f.kind, folder), {"kind": f.kind, "folder": folder, "count": 0, "example": str(f)})
        g["count"] += 1
    rank = {k: i for i, k in enumerate(DIRECT_KINDS)}
    return sorted(groups.values(), key=lambda g: (rank.get(g["kind"], len(rank)), -g["count"], g["folder"]))


def dump_findings(findings: list[Finding]) -> str:
    return json.dumps([str(f) for f in findings], indent=2)
