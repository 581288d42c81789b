"""Pseudonymisation keys.

One master key ring comes from the environment (``GPDATA_MASTER_KEY``, hex) or a key file named by
``GPDATA_MASTER_KEY_FILE`` (a secrets-backend mount in production; ``make demo`` writes a development one).
In production mode a key is refused when its file is readable by group or others, when it is weak (all bytes
equal, a repeated pattern, a byte sequence, a typed passphrase, a published test key) and when it is a
development key, which is told by the key itself (its last 8 bytes are an HMAC of the first 24 under a public
label), never by a flag in the file.
Each pseudonymised field gets its own key, derived with HKDF-SHA256 under a versioned label, so a key for
one field says nothing about another and a new version re-keys everything. Keys never come from code,
Airflow Variables or XCom, and their bytes never appear in a repr, log or error.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gpdata import settings, storage
from gpdata.errors import KeyConfigError
from gpdata.settings import check_secret_file

KEY_ENV = "GPDATA_MASTER_KEY"
KEY_FILE_ENV = "GPDATA_MASTER_KEY_FILE"
KEY_VERSION_ENV = "GPDATA_KEY_VERSION"
MODE_ENV = settings.MODE_ENV
MIN_KEY_BYTES = 32
DEFAULT_VERSION = "v1"

# Fields with their own derived key. Adding one never changes the others.
FIELDS = ("nhs_number", "date_of_birth", "postcode", "practitioner", "record_id")
VERSION_RE = re.compile(r"^v([1-9][0-9]{0,5})$")
_CHECK_LABEL = b"gpdata key check value"
_DEVELOPMENT_LABEL = b"gpdata development key: synthetic data only"
_DEVELOPMENT_BODY = 24  # random bytes of a development key; 8 more are its fingerprint
# SHA-256 of keys published with this project or with the standards it uses (test vectors, examples): never
# acceptable in production. Most are also caught as weak; the list catches the rest by fingerprint.
PUBLISHED_KEY_FINGERPRINTS = frozenset({
    hashlib.sha256(bytes.fromhex(h)).hexdigest() for h in (
        "5a" * 32, "ab" * 32, "42" * 32, "6b" * 32, "01" * 32, "02" * 32, "11" * 32,  # this project's tests
        "0b" * 22, "0b" * 20, "aa" * 20, "aa" * 131,  # RFC 5869 / RFC 4231 keys
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",  # RFC 5869 case 2 style
        "4a656665",  # RFC 4231 case 2 ("Jefe")
    )
})


@dataclass(frozen=True)
class MasterKey:
    """A key ring: every master key version in order, oldest first; the newest is current.

    A pseudonym of version N is HMAC under version N's field key of the version N-1 pseudonym (version 1
    takes the normalised identifier). Rotation adds a version and re-keys the store from its pseudonyms
    alone; the chain stays safe while the newest key is secret, even if an older one leaks.
    """

    ring: tuple[tuple[str, bytes], ...] = field(repr=False)
    development: bool

    @property
    def version(self) -> str:
        return self.ring[-1][0]

    @property
    def versions(self) -> list[str]:
        return [v for v, _ in self.ring]

    def derive(self, purpose: str, version: str | None = None, namespace: str = "pseudonym") -> bytes:
        """The 32-byte key for one purpose under one version (default: current), labelled
        ``gpdata/<version>/<namespace>/<purpose>``."""
        material = dict(self.ring)[version or self.version]
        return derive_key(material, f"gpdata/{version or self.version}/{namespace}/{purpose}")

    def chain(self, purpose: str, after: str | None = None) -> list[bytes]:
        """Field keys of every version after ``after`` (all versions if None), oldest first."""
        versions = self.versions
        start = versions.index(after) + 1 if after else 0
        return [self.derive(purpose, v) for v in versions[start:]]

    def check_value(self, version: str | None = None) -> str:
        """A short public fingerprint of one version's key (HMAC of a fixed label under a derived key): it
        tells whether two keys labelled alike are the same key, and says nothing about the key itself."""
        key = self.derive("key-check", version, namespace="check")
        return hmac.new(key, _CHECK_LABEL, hashlib.sha256).hexdigest()[:16]

    def checks(self) -> dict[str, str]:
        """Check value of every version in the ring."""
        return {v: self.check_value(v) for v in self.versions}

    def verify(self, recorded: dict[str, str] | None, where: str, practice: str | None = None) -> None:
        """Refuse when ``where`` (a store, a release, a list, a ledger) was made with a key this ring does
        not hold under the same label: a wrong key labelled ``v1`` changes every pseudonym silently."""
        for version, value in sorted((recorded or {}).items()):
            if version not in dict(self.ring):
                raise KeyConfigError(f"{where} was made with key version {version}, which the loaded key ring "
                                     f"({', '.join(self.versions)}) does not hold", practice=practice)
            if not hmac.compare_digest(str(value), self.check_value(version)):
                raise KeyConfigError(f"the loaded key {version} is not the key {where} was made with (its check "
                                     f"value differs): a wrong key file or secret?", practice=practice)

    def __repr__(self) -> str:  # never print key material
        return f"MasterKey(versions={self.versions!r}, development={self.development})"


def derive_key(master: bytes, label: str | bytes, length: int = 32, salt: bytes | None = None) -> bytes:
    """HKDF-SHA256 (RFC 5869) with ``label`` as the info string."""
    info = label.encode() if isinstance(label, str) else label
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(master)


def production_mode(env: dict[str, str] | None = None) -> bool:
    return settings.production_mode(env)


def development_key_material() -> bytes:
    """32 bytes for a development key: 24 random bytes and their fingerprint, so that production mode knows a
    development key wherever it is copied, whatever file it is put in."""
    body = secrets.token_bytes(_DEVELOPMENT_BODY)
    return body + _development_tag(body)


def _development_tag(body: bytes) -> bytes:
    return hmac.new(_DEVELOPMENT_LABEL, body, hashlib.sha256).digest()[: MIN_KEY_BYTES - _DEVELOPMENT_BODY]


def is_development_key(material: bytes) -> bool:
    """True for a key made by ``development_key_material`` (a random key matches by chance with odds 2**-64)."""
    if len(material) != MIN_KEY_BYTES:
        return False
    body, tag = material[:_DEVELOPMENT_BODY], material[_DEVELOPMENT_BODY:]
    return hmac.compare_digest(tag, _development_tag(body))


def weakness(material: bytes) -> str | None:
    """Why a key is too weak for production, or None. Each rule refuses a random 32-byte key with odds below
    2**-40: all bytes equal, a repeated pattern, an arithmetic byte sequence, only printable ASCII (a typed
    passphrase), fewer than 16 distinct byte values (a random key has about 30), or a published test key."""
    if hashlib.sha256(material).hexdigest() in PUBLISHED_KEY_FINGERPRINTS:
        return "it is a published test key"
    if len(set(material)) == 1:
        return "all its bytes are equal"
    for period in range(2, len(material) // 2 + 1):
        if all(material[i] == material[i % period] for i in range(len(material))):
            return f"it repeats a pattern of {period} bytes"
    steps = {(b - a) % 256 for a, b in zip(material, material[1:], strict=False)}
    if len(steps) == 1:
        return "its bytes are a sequence"
    if all(0x20 <= b < 0x7F for b in material):
        return "it is printable text (a passphrase), not random bytes"
    if len(material) >= MIN_KEY_BYTES and len(set(material)) < 16:
        return f"it has only {len(set(material))} distinct byte values"
    return None


def _parse_ring(entries: list[tuple[str, str]], where: str, practice: str | None) -> tuple[tuple[str, bytes], ...]:
    ring = []
    for version, hexkey in entries:
        try:
            material = bytes.fromhex(hexkey.strip())
        except ValueError:
            raise KeyConfigError(f"{where} is not hexadecimal (version {version})", practice=practice) from None
        if len(material) < MIN_KEY_BYTES:
            raise KeyConfigError(f"the master key (version {version}) is {len(material)} bytes; at least "
                                 f"{MIN_KEY_BYTES} are required", practice=practice)
        ring.append((version, material))
    if len({v for v, _ in ring}) != len(ring):
        raise KeyConfigError(f"{where} repeats a key version", practice=practice)
    numbers = []
    for version, _ in ring:
        match = VERSION_RE.match(version)
        if not match:
            raise KeyConfigError(f"{where}: key version {version!r} is not of the form v1, v2, ...", practice=practice)
        numbers.append(int(match.group(1)))
    if numbers != sorted(numbers):
        raise KeyConfigError(f"{where} lists its key versions out of order ({', '.join(v for v, _ in ring)}): the "
                             "newest, which is used, must come last", practice=practice)
    return tuple(ring)


def read_key_file(path: Path, practice: str | None = None) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise KeyConfigError(f"key file {path} named by {KEY_FILE_ENV} does not exist", practice=practice) from None
    except ValueError:
        raise KeyConfigError(f"key file {path} is not JSON", practice=practice) from None
    if not isinstance(doc, dict) or not (isinstance(doc.get("keys"), list) or isinstance(doc.get("key"), str)):
        raise KeyConfigError(f"key file {path} is not a gpdata key file (JSON with 'keys' or 'key')",
                             practice=practice)
    return doc


def _file_entries(doc: dict) -> list[tuple[str, str]]:
    if isinstance(doc.get("keys"), list):
        return [(str(k.get("version")), str(k.get("key", ""))) for k in doc["keys"] if isinstance(k, dict)]
    return [(str(doc.get("version", DEFAULT_VERSION)), doc["key"])]


def load_master_key(env: dict[str, str] | None = None, practice: str | None = None) -> MasterKey:
    """Load and check the key ring; fail closed with a message that names the cause, never the key.

    ``GPDATA_MASTER_KEY`` holds one hex key (version ``GPDATA_KEY_VERSION``, default v1) or a ring written
    ``v1:<hex>,v2:<hex>``; ``GPDATA_MASTER_KEY_FILE`` names a JSON key file (a mounted secret). With neither
    set in the process environment (``env`` None) and outside production mode, the development key named by
    GPDATA_HOME's settings file (``make demo`` writes it) is used; any other key named there is refused.
    """
    from_settings_file = None
    if env is None and not os.environ.get(KEY_ENV) and not os.environ.get(KEY_FILE_ENV) \
            and not production_mode(os.environ):
        from_settings_file = settings.read_settings_file().get(KEY_FILE_ENV)
        env = {**os.environ, KEY_FILE_ENV: from_settings_file} if from_settings_file else None
    env = os.environ if env is None else env
    development = False
    if env.get(KEY_ENV):
        raw = env[KEY_ENV].strip()
        if ":" in raw:
            entries = [tuple(part.split(":", 1)) for part in raw.split(",")]
        else:
            entries = [(env.get(KEY_VERSION_ENV, DEFAULT_VERSION), raw)]
        ring = _parse_ring(entries, KEY_ENV, practice)
    elif env.get(KEY_FILE_ENV):
        path = Path(env[KEY_FILE_ENV])
        doc = read_key_file(path, practice)
        check_secret_file(path, "key file", env, practice)
        ring = _parse_ring(_file_entries(doc), f"key file {path}", practice)
        development = doc.get("kind") == "development"  # a flag can only make a key stricter, never laxer
    else:
        raise KeyConfigError(f"no pseudonymisation key: set {KEY_ENV} or {KEY_FILE_ENV}", practice=practice)
    if not ring:
        raise KeyConfigError("the key ring is empty", practice=practice)
    if from_settings_file and not all(is_development_key(material) for _, material in ring):
        raise KeyConfigError(f"the key file {from_settings_file} named by the settings file "
                             f"{settings.settings_file()} is not a development key: name a real key explicitly "
                             f"with {KEY_FILE_ENV} or {KEY_ENV}", practice=practice)
    development = development or any(is_development_key(material) for _, material in ring)
    if development and production_mode(env):
        raise KeyConfigError(f"a development key is not allowed when {MODE_ENV}=production (it is told by its "
                             "fingerprint; make a production key with `openssl rand -hex 32`)", practice=practice)
    if production_mode(env):
        for version, material in ring:
            why = weakness(material)
            if why:
                raise KeyConfigError(f"the master key (version {version}) is refused when {MODE_ENV}=production: "
                                     f"{why}", practice=practice)
    return MasterKey(ring=ring, development=development)


def add_key_version(path: Path) -> str:
    """Append a new random master key version to a key file (atomically). Returns the new version."""
    doc = read_key_file(path)
    entries = _file_entries(doc)
    numbers = [int(v[1:]) for v, _ in entries if v.startswith("v") and v[1:].isdigit()]
    version = f"v{max(numbers, default=0) + 1}"
    new = {k: v for k, v in doc.items() if k not in ("key", "version")}
    development = any(_is_development_hex(k) for _, k in entries)  # a development ring stays one
    material = development_key_material() if development else secrets.token_bytes(MIN_KEY_BYTES)
    new["keys"] = [{"version": v, "key": k} for v, k in entries] + [{"version": version, "key": material.hex()}]
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(new, fh)
    os.replace(tmp, path)
    return version


def write_key_file(path: Path) -> None:
    """Create a production key file (one random version, mode 0600); never overwrites one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"keys": [{"version": DEFAULT_VERSION, "key": secrets.token_hex(MIN_KEY_BYTES)}]}
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyConfigError(f"key file {path} exists already: it is never overwritten") from None
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh)


def _is_development_hex(hexkey: str) -> bool:
    try:
        return is_development_key(bytes.fromhex(hexkey.strip()))
    except ValueError:
        return False


def write_development_key(path: Path) -> bool:
    """Create a development key file (0600) if there is none. Returns True if one was written. The key is
    random and carries its fingerprint, so production mode refuses it even without the file's ``kind``."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"kind": "development", "keys": [{"version": DEFAULT_VERSION, "key": development_key_material().hex()}],
           "note": "gpdata development key: for synthetic data only, refused when GPDATA_MODE=production"}
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # written meanwhile by another process: keep it
        return False
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh)
    return True


# The key check values the store was made with, and an unfinished rotation, under ``<store>/_keys/``.
def keys_dir(store_root: Path) -> Path:
    return storage.root(store_root) / "_keys"


def rotation_journal(store_root: Path) -> Path:
    return keys_dir(store_root) / "rotation.json"


def store_checks(store_root: Path) -> dict[str, str]:
    doc = storage.read_json(keys_dir(store_root) / "checks.json") or {}
    return dict(doc.get("versions") or {})


def store_version(store_root: Path) -> str | None:
    """The key version the store's pseudonyms are at: the newest it has recorded."""
    recorded = store_checks(store_root)
    return max(recorded, key=lambda v: int(VERSION_RE.match(v).group(1)) if VERSION_RE.match(v) else 0,
               default=None)


def verify_store(store_root: Path, key: MasterKey, practice: str | None = None, *,
                 during_rotation: bool = False) -> None:
    """Fail closed before anything is read or written: the key must be the one the store was made with, the
    store must be at the key's current version, and no rotation may be unfinished."""
    journal = storage.read_json(rotation_journal(store_root))
    if journal and not during_rotation:
        raise KeyConfigError(f"a key rotation ({journal.get('from')} -> {journal.get('to') or 'new'}) is unfinished: "
                             "run `gpdata keys rotate` again to finish it", practice=practice)
    recorded = store_checks(store_root)
    key.verify(recorded, "the store", practice)
    if recorded and not during_rotation and key.version not in recorded:
        raise KeyConfigError(f"the store was not brought to key version {key.version} (it knows "
                             f"{', '.join(sorted(recorded))}): run `gpdata keys rotate`", practice=practice)


def record_store(store_root: Path, key: MasterKey) -> None:
    """Record the check value of every version in the ring (after ``verify_store``)."""
    recorded = store_checks(store_root)
    if all(recorded.get(v) == c for v, c in key.checks().items()):
        return
    storage.write_json_atomic(keys_dir(store_root) / "checks.json", {"versions": {**recorded, **key.checks()}})
