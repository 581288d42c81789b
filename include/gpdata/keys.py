"""Pseudonymisation keys.

One master key comes from the environment (``GPDATA_MASTER_KEY``, hex) or a key file named by
``GPDATA_MASTER_KEY_FILE`` (a secrets-backend mount in production; ``make demo`` writes a development one).
Each pseudonymised field gets its own key, derived with HKDF-SHA256 under a versioned label, so a key for
one field says nothing about another and a new version re-keys everything. Keys never come from code,
Airflow Variables or XCom, and their bytes never appear in a repr, log or error.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gpdata.errors import KeyConfigError

KEY_ENV = "GPDATA_MASTER_KEY"
KEY_FILE_ENV = "GPDATA_MASTER_KEY_FILE"
KEY_VERSION_ENV = "GPDATA_KEY_VERSION"
MODE_ENV = "GPDATA_MODE"
MIN_KEY_BYTES = 32
DEFAULT_VERSION = "v1"

# Fields with their own derived key. Adding one never changes the others.
FIELDS = ("nhs_number", "date_of_birth", "postcode", "practitioner", "record_id")


@dataclass(frozen=True)
class MasterKey:
    material: bytes = field(repr=False)
    version: str
    development: bool

    def derive(self, purpose: str) -> bytes:
        """A 32-byte key for one field, e.g. ``derive("nhs_number")``."""
        return derive_key(self.material, f"gpdata/{self.version}/pseudonym/{purpose}")

    def __repr__(self) -> str:  # never print key material
        return f"MasterKey(version={self.version!r}, development={self.development})"


def derive_key(master: bytes, label: str | bytes, length: int = 32, salt: bytes | None = None) -> bytes:
    """HKDF-SHA256 (RFC 5869) with ``label`` as the info string."""
    info = label.encode() if isinstance(label, str) else label
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(master)


def production_mode(env: dict[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return env.get(MODE_ENV, "development").lower() == "production"


def load_master_key(env: dict[str, str] | None = None, practice: str | None = None) -> MasterKey:
    """Load and check the master key; fail closed with a message that names the cause, not the key."""
    env = os.environ if env is None else env
    version = env.get(KEY_VERSION_ENV, DEFAULT_VERSION)
    development = False
    if env.get(KEY_ENV):
        raw = env[KEY_ENV].strip()
        try:
            material = bytes.fromhex(raw)
        except ValueError:
            raise KeyConfigError(f"{KEY_ENV} is not hexadecimal", practice=practice) from None
    elif env.get(KEY_FILE_ENV):
        path = Path(env[KEY_FILE_ENV])
        try:
            doc = json.loads(path.read_text())
            material = bytes.fromhex(doc["key"])
        except FileNotFoundError:
            raise KeyConfigError(f"key file {path} named by {KEY_FILE_ENV} does not exist",
                                 practice=practice) from None
        except (ValueError, KeyError, TypeError):
            raise KeyConfigError(f"key file {path} is not a gpdata key file (JSON with a hex 'key')",
                                 practice=practice) from None
        development = doc.get("kind") == "development"
        version = doc.get("version", version)
    else:
        raise KeyConfigError(f"no pseudonymisation key: set {KEY_ENV} or {KEY_FILE_ENV}", practice=practice)
    if len(material) < MIN_KEY_BYTES:
        raise KeyConfigError(f"the master key is {len(material)} bytes; at least {MIN_KEY_BYTES} are required",
                             practice=practice)
    if development and production_mode(env):
        raise KeyConfigError(f"a development key is not allowed when {MODE_ENV}=production", practice=practice)
    return MasterKey(material=material, version=version, development=development)


def write_development_key(path: Path) -> bool:
    """Create a random development key file if there is none. Returns True if one was written."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"kind": "development", "version": DEFAULT_VERSION, "key": secrets.token_hex(32),
           "note": "gpdata development key: for synthetic data only, refused when GPDATA_MODE=production"}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh)
    return True
