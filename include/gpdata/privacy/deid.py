"""De-identification at source: canonical (identifiable) tables in, staged (pseudonymised) tables out.

* NHS numbers are normalised and Modulus-11 checked, then replaced by a keyed HMAC-SHA256 pseudonym;
  invalid ones are marked for quarantine without their value.
* Date of birth and postcode become linkage pseudonyms; for analysis the date of birth is generalised to
  its month and the postcode to its LSOA and outward code.
* Names, addresses, telecoms and free text are dropped, as is every record whose code is restricted
  (identifying codes, and the legally restricted categories of include/config/deid.yaml: HFEA fertility
  treatment, gender reassignment), in any of its SNOMED CT, Read v2 or CTV3 forms. Output columns come only
  from the curated allow-list, so an unexpected source field never passes.
* A numeric value is kept only for a code configured as a measurement (unit and range, quality.yaml); any
  other code's value and unit are dropped. ``guard_numeric`` refuses a staged table with a numeric cell that
  is a valid NHS number, whatever else let it through.
* HMACs are computed once per distinct value (dictionary encode, HMAC the dictionary, take).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from gpdata import storage
from gpdata.arrowutil import const, first_reason, isin, read_lookup
from gpdata.codes import RestrictedCodes, code_keys, measurements
from gpdata.errors import GpdataError
from gpdata.model import CURATED, EVENT_TABLES, ISSUE, PARTITION, POSITION, staged_schema
from gpdata.privacy import nhsnumber
from gpdata.privacy.keys import MasterKey


def _hmac_states(key: bytes):
    """HMAC-SHA256 (RFC 2104) with the key's inner and outer hash states computed once: per value, two
    copies of a hash state instead of the key schedule again (``hmac.digest`` redoes it on every call)."""
    if len(key) > 64:  # the SHA-256 block size
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    return inner.copy, outer.copy


def hmac_hex(key: bytes, values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Hex HMAC-SHA256 of each value under ``key``, computed once per distinct value; nulls stay null."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    enc = pc.dictionary_encode(values)
    dictionary = enc.dictionary
    if pa.types.is_string(dictionary.type) or pa.types.is_large_string(dictionary.type):
        dictionary = dictionary.cast(pa.binary() if pa.types.is_string(dictionary.type) else pa.large_binary())
    inner, outer = _hmac_states(key)
    digests = []
    append = digests.append
    for value in dictionary.to_pylist():
        h = inner()
        h.update(value if isinstance(value, bytes) else str(value).encode())
        o = outer()
        o.update(h.digest())
        append(o.hexdigest())
    return pc.take(pa.array(digests, pa.string()), enc.indices)


FILE_TOKEN_PREFIX = "file-"  # noqa: S105 (a prefix, not a secret)


def file_token(master: MasterKey, name: str) -> str:
    """A stable, keyed stand-in for a delivered file's name (``file-`` and 16 hex digits). Senders name files
    after patients, so beyond the inbox and the refused-delivery folder (which are identifiable and keep the
    real names) a file is known only by this token: rows, quarantine, ledgers, manifests, errors, logs, XCom.
    The token is HMAC-SHA256 under a key derived from the current master key version for this purpose alone,
    so it cannot be reversed by hashing candidate names without the key."""
    if name.startswith(FILE_TOKEN_PREFIX) and len(name) == len(FILE_TOKEN_PREFIX) + 16:
        return name  # already a token
    key = master.derive("delivered-file-name", namespace="token")
    return FILE_TOKEN_PREFIX + hmac.new(key, name.encode(), hashlib.sha256).hexdigest()[:16]


class Pseudonymiser:
    """Keyed pseudonyms per field, each under its own HKDF-derived key, chained over the key ring."""

    def __init__(self, master: MasterKey) -> None:
        self.version = master.version
        self._master = master
        self._chains: dict[tuple[str, str | None], list[bytes]] = {}

    def __call__(self, values: pa.Array | pa.ChunkedArray, field: str, after: str | None = None) -> pa.Array:
        """Pseudonyms of ``values`` at the current version. With ``after``, ``values`` are already pseudonyms
        of that version and only the later versions are applied (re-keying)."""
        if (field, after) not in self._chains:
            self._chains[field, after] = self._master.chain(field, after)
        for key in self._chains[field, after]:
            values = hmac_hex(key, values)
        return values


def normalise_postcode(values: pa.Array) -> pa.Array:
    """Upper case with no spaces ("ls1 4ab" -> "LS14AB")."""
    return pc.utf8_upper(pc.replace_substring_regex(values, r"\s+", ""))


@dataclass(frozen=True)
class PostcodeLookup:
    postcodes: pa.Array  # normalised
    lsoas: pa.Array

    @classmethod
    def load(cls, path: Path) -> PostcodeLookup:
        """The lookup in ``path``, read once per process while the file is unchanged (every extraction asks)."""
        def read() -> PostcodeLookup:
            cols = read_lookup(path, ("postcode", "lsoa_code"), "postcode lookup")
            return cls(postcodes=normalise_postcode(cols["postcode"]), lsoas=cols["lsoa_code"])

        return storage.cached_by_file(path, "postcode lookup", read)

    def lsoa(self, normalised: pa.Array) -> pa.Array:
        return pc.take(self.lsoas, pc.index_in(normalised, value_set=self.postcodes))


def _month(dates: pa.Array) -> pa.Array:
    return pc.cast(pc.floor_temporal(pc.cast(dates, pa.timestamp("s")), unit="month"), pa.date32())


def _lookup(refs: pa.Array, keys: pa.Array, values: pa.Array) -> pa.Array:
    return pc.take(values, pc.index_in(refs, value_set=keys))


def _finish(name: str, columns: dict[str, pa.Array], n: int, practice: str, version: str) -> pa.Table:
    columns[PARTITION] = const(practice, n)
    columns["key_version"] = const(version, n)
    schema = staged_schema(name)
    return pa.Table.from_arrays([pc.cast(columns[f.name], f.type) if f.name in columns
                                 else pa.nulls(n, f.type) for f in schema], schema=schema)


def _restricted(table: pa.Table, restricted: RestrictedCodes | frozenset[str], by_category: dict) -> pa.Array:
    """Per row: is its code restricted? Counts the hits per category into ``by_category``."""
    if not isinstance(restricted, RestrictedCodes):  # ``system|code`` keys (a hand-made set)
        hit = pc.is_in(code_keys(table["code_system"], table["code"]), pa.array(sorted(restricted), pa.string()))
        return pc.fill_null(hit, False)
    cats = restricted.classify(table["code"])
    for item in pc.value_counts(cats.drop_null()).to_pylist():
        by_category[item["values"]] = by_category.get(item["values"], 0) + item["counts"]
    return pc.is_valid(cats)


def guard_numeric(tables: dict[str, pa.Table], practice: str, stage: str = "extract") -> None:
    """Refuse tables with a numeric cell that is a valid NHS number (the in-pipeline leak check of numbers):
    names the practice, table, column and count, never the value."""
    found = []
    for name, table in tables.items():
        for field in table.schema:
            if pa.types.is_integer(field.type) or pa.types.is_floating(field.type):
                n = pc.sum(nhsnumber.in_numbers(table[field.name])).as_py() or 0
                if n:
                    found.append(f"{name}.{field.name}: {n} value(s)")
    if found:
        raise GpdataError("numeric values that are valid NHS numbers would be written (" + "; ".join(found)
                          + "): nothing is written; find the source field that carries them", practice=practice,
                          stage=stage)


def _issues(table: pa.Table, found: pa.Array) -> pa.Array:
    """A reason the source adapter gave (e.g. an unreadable FHIR entry) first, then those found here."""
    if ISSUE not in table.column_names:
        return found
    return pc.coalesce(table[ISSUE].combine_chunks(), found)


@dataclass(frozen=True)
class People:
    """What event rows are linked through: the delivery's patients and practitioners (source id -> pseudonym),
    and for an incremental delivery the practice's maps of those delivered earlier (see ``deidentify``)."""

    patient_refs: pa.Array
    patient_pids: pa.Array
    practitioner_ids: pa.Array
    practitioner_pids: pa.Array
    practitioner_roles: pa.Array
    known: pa.Table | None = None
    known_practitioners: pa.Table | None = None


def new_counts() -> dict:
    """The de-identification counts, zero; ``deidentify_people`` and ``deidentify_events`` add to them."""
    return {"restricted_code_records": {}, "unmatched_postcodes": 0, "values_dropped": 0,
            "numeric_nhs_numbers_dropped": 0, "restricted_code_categories": {}}


def deidentify_people(canonical: dict[str, pa.Table], practice: str, pseudo: Pseudonymiser,
                      postcodes: PostcodeLookup, counts: dict, known: pa.Table | None = None,
                      known_practitioners: pa.Table | None = None) -> tuple[dict[str, pa.Table], People]:
    """The staged patients and practitioners tables, and the pseudonyms their events are linked through."""
    staged: dict[str, pa.Table] = {}
    pat = canonical["patients"]
    n = pat.num_rows
    nhs = nhsnumber.normalise(pat["nhs_number"].combine_chunks())
    valid = nhsnumber.is_valid(nhs)
    patient_pid = pseudo(pc.if_else(valid, nhs, pa.nulls(n, pa.string())), "nhs_number")
    postcode = normalise_postcode(pat["postcode"].combine_chunks())
    lsoa = postcodes.lsoa(postcode)
    counts["unmatched_postcodes"] += pc.sum(pc.and_(pc.is_valid(postcode), pc.is_null(lsoa))).as_py() or 0
    dob = pat["birth_date"].combine_chunks()
    staged["patients"] = _finish("patients", {
        "patient_pid": patient_pid,
        "dob_pid": pseudo(pc.strftime(dob, format="%Y-%m-%d"), "date_of_birth"),
        "postcode_pid": pseudo(postcode, "postcode"),
        "birth_month": _month(dob),
        "sex": pat["gender"],
        "ethnic_category": pat["ethnic_category"],
        "lsoa_code": lsoa,
        "postcode_district": pc.utf8_slice_codeunits(postcode, 0, -3),
        "registration_date": pat["registration_date"],
        "registration_end_date": pat["registration_end_date"],
        "death_month": _month(pat["deceased_date"].combine_chunks()),
        POSITION[0]: pat["_src_file"], POSITION[1]: pat["_src_entry"],
        ISSUE: _issues(pat, first_reason(n, [(pc.is_null(pat["nhs_number"]), "missing_nhs_number"),
                                             (pc.invert(valid), "invalid_nhs_number")])),
    }, n, practice, pseudo.version)

    # Practitioners: pseudonym of the SDS user id, or of the source id where there is none
    prac = canonical["practitioners"]
    prac_ids = prac["source_id"].combine_chunks()
    prac_pids = pseudo(pc.coalesce(prac["sds_user_id"].combine_chunks(), prac_ids), "practitioner")
    staged["practitioners"] = _finish("practitioners", {
        "practitioner_pid": prac_pids, "role_code": prac["role_code"], "role_name": prac["role_name"],
        POSITION[0]: prac["_src_file"], POSITION[1]: prac["_src_entry"],
        ISSUE: _issues(prac, first_reason(prac.num_rows, [(pc.is_null(prac_ids), "missing_record_id")])),
    }, prac.num_rows, practice, pseudo.version)
    return staged, People(pat["source_id"].combine_chunks(), patient_pid, prac_ids, prac_pids,
                          prac["role_code"].combine_chunks(), known, known_practitioners)


def deidentify_events(name: str, table: pa.Table, people: People, practice: str, pseudo: Pseudonymiser,
                      restricted: RestrictedCodes | frozenset[str], counts: dict) -> pa.Table:
    """One event table, or any batch of its rows (row by row: the batches' results concatenated are the whole
    table's), staged; adds to ``counts``."""
    if table.num_rows and "code" in table.column_names:
        hit = _restricted(table, restricted, counts["restricted_code_categories"])
        records = counts["restricted_code_records"]
        records[name] = records.get(name, 0) + (pc.sum(hit).as_py() or 0)
        table = table.filter(pc.invert(hit))
    if table.num_rows and "value" in table.column_names:
        # A value only where a measurement is expected; elsewhere it is dropped with its unit.
        measured = pa.array(sorted({c for m in measurements() for c in m.codes}), pa.string())
        keep = isin(table["code"], measured)
        nhs_like = nhsnumber.in_numbers(table["value"])  # even for a measurement: never a real result
        counts["numeric_nhs_numbers_dropped"] += (
            pc.sum(nhs_like).as_py() or 0)
        keep = pc.and_(keep, pc.invert(nhs_like))
        counts["values_dropped"] += (pc.sum(pc.and_(
            pc.invert(keep), pc.is_valid(table["value"]))).as_py() or 0)
        for col in ("value", "unit"):
            kept = pc.if_else(keep, table[col], pa.nulls(table.num_rows, table.schema.field(col).type))
            table = table.set_column(table.schema.get_field_index(col), col, kept)
    m = table.num_rows
    refs = table["patient_ref"].combine_chunks()
    in_batch = pc.is_in(refs, value_set=people.patient_refs)
    pids = _lookup(refs, people.patient_refs, people.patient_pids)
    found = in_batch
    known = people.known
    if known is not None and known.num_rows:
        earlier = _lookup(pseudo(refs, "record_id"), known["ref_pid"].combine_chunks(),
                          known["patient_pid"].combine_chunks())
        pids = pc.if_else(in_batch, pids, earlier)
        found = pc.or_(in_batch, pc.is_valid(earlier))
    practitioner = table["practitioner_ref"].combine_chunks()
    practitioner_pid = _lookup(practitioner, people.practitioner_ids, people.practitioner_pids)
    staff_role = _lookup(practitioner, people.practitioner_ids, people.practitioner_roles)
    kp = people.known_practitioners
    if kp is not None and kp.num_rows:
        at = pc.index_in(pseudo(practitioner, "record_id"), value_set=kp["ref_pid"].combine_chunks())
        practitioner_pid = pc.coalesce(practitioner_pid, pc.take(kp["practitioner_pid"], at))
        staff_role = pc.coalesce(staff_role, pc.take(kp["role_code"], at))
    columns = {
        "record_id": pseudo(table["source_id"], "record_id"),
        "patient_pid": pids,
        "practitioner_pid": practitioner_pid,
        POSITION[0]: table["_src_file"], POSITION[1]: table["_src_entry"],
        ISSUE: _issues(table, first_reason(m, [(pc.is_null(table["source_id"]), "missing_record_id"),
                                               (pc.invert(found), "unknown_patient"),
                                               (pc.is_null(pids), "patient_invalid_nhs_number")])),
    }
    # Two allow-lists on purpose (defence in depth, issue 23): this one copies only curated columns, and
    # _finish builds the table from the staged schema alone, so either suffices and a mutant of one survives.
    curated = set(CURATED[name].names)
    for col in table.column_names:
        if col in curated and col not in columns:
            columns[col] = table[col]
    if name == "medications":
        columns["authorisation_id"] = pseudo(table["authorisation_ref"], "record_id")
    if name == "observations":
        columns["panel_id"] = pseudo(table["panel_ref"], "record_id")
    if name == "appointments":
        columns["staff_role"] = staff_role
    return _finish(name, columns, m, practice, pseudo.version)


def deidentify(canonical: dict[str, pa.Table], practice: str, pseudo: Pseudonymiser,
               postcodes: PostcodeLookup, restricted: RestrictedCodes | frozenset[str],
               known: pa.Table | None = None,
               known_practitioners: pa.Table | None = None) -> tuple[dict[str, pa.Table], dict]:
    """Turn canonical tables into staged, pseudonymised tables plus counts of what was dropped.

    ``known`` (incremental deliveries): the practice's patient map (``ref_pid`` -> ``patient_pid``), so events of
    patients delivered in an earlier batch are linked to them; ``known_practitioners`` likewise (``ref_pid`` ->
    ``practitioner_pid``, ``role_code``) for their clinicians. The same as ``deidentify_people`` and then
    ``deidentify_events`` for each event table, which a streaming caller uses batch by batch."""
    counts = new_counts()
    staged, people = deidentify_people(canonical, practice, pseudo, postcodes, counts, known, known_practitioners)
    for name in EVENT_TABLES:
        staged[name] = deidentify_events(name, canonical[name], people, practice, pseudo, restricted, counts)
    return staged, counts
