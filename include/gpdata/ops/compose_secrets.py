"""`gpdata secrets init`: the `.env` docker compose reads, with a generated value for every secret.

`.env.example` (beside the compose file) is the template: each variable it leaves empty gets a fresh random
value, the others keep theirs (``AIRFLOW_UID`` becomes this user's id). The two key files the compose secrets
point to (the master pseudonymisation key and the audit key) are written once in a folder outside the checkout,
mode 0600, and never replaced: the store's pseudonyms and the audit chain depend on them. Every variable the
compose file requires (``${NAME:?...}``) must end up with a value, else nothing is written. `.env` is written
0600 and never overwritten without ``force``; no value is ever printed.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path

from gpdata.errors import ConfigError

DEFAULT_KEYS_DIR = Path("~/.config/gpdata/compose-secrets")
IMAGE_UID = 50000  # the official Airflow image's user, used when this command runs as root


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


GENERATED: dict[str, Callable[[], str]] = {
    "AIRFLOW_JWT_SECRET": lambda: secrets.token_hex(32),
    "AIRFLOW_FERNET_KEY": _fernet_key,
    "POSTGRES_PASSWORD": lambda: secrets.token_hex(16),
    "_AIRFLOW_WWW_USER_PASSWORD": lambda: "p" + secrets.token_urlsafe(18),  # never read as an option
    "S3_ROOT_USER": lambda: "root" + secrets.token_hex(6),
    "S3_ROOT_PASSWORD": lambda: secrets.token_hex(16),
    "S3_APP_ACCESS_KEY": lambda: "gpdata" + secrets.token_hex(6),
    "S3_APP_SECRET_KEY": lambda: secrets.token_hex(16),
}
KEY_FILES = {"GPDATA_MASTER_KEY_PATH": "master.key", "GPDATA_AUDIT_KEY_PATH": "audit.key"}
_VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)((?::?[-?])[^}]*)?\}")
_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def compose_variables(compose_text: str) -> dict[str, bool]:
    """Every ``${NAME...}`` of a compose file (``$${NAME}`` is the container's own), and whether it is required
    (``${NAME:?...}`` or ``${NAME?...}``)."""
    out: dict[str, bool] = {}
    for name, modifier in _VARIABLE.findall(compose_text):
        out[name] = out.get(name, False) or "?" in modifier[:2]
    return out


def _write_key_files(folder: Path, uid: int | None) -> tuple[dict[str, str], list[str]]:
    """The two key files (written if missing, else kept); returns variable -> path, and what was done."""
    from gpdata.privacy import keys

    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths, done = {}, []
    for variable, name in KEY_FILES.items():
        path = folder / name
        if path.exists():
            done.append(f"kept the existing {path} (a key file is never replaced)")
        else:
            if name == "master.key":
                keys.write_key_file(path)
            else:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(secrets.token_hex(32))
            if uid is not None:  # run as root: the containers' user must be able to read it
                os.chown(path, uid, -1)
            done.append(f"wrote {path} (mode 0600)")
        paths[variable] = str(path.resolve())
    return paths, done


def init(compose_file: Path, *, keys_dir: Path | None = None, force: bool = False) -> tuple[Path, list[str]]:
    """Write ``.env`` beside ``compose_file``. Returns its path and one line per step (names, never values)."""
    compose_file = Path(compose_file)
    env_file = compose_file.with_name(".env")
    template = compose_file.with_name(".env.example")
    if not compose_file.is_file():
        raise ConfigError(f"no compose file {compose_file}")
    if not template.is_file():
        raise ConfigError(f"no {template.name} beside {compose_file}: it is the template of .env")
    if env_file.exists() and not force:
        raise ConfigError(f"{env_file} exists already: it is kept (its values may be in use by the stack); "
                          "add --force to replace it")
    needed = compose_variables(compose_file.read_text())
    lines = template.read_text().splitlines()
    declared = {m.group(1): m.group(2) for m in map(_LINE.match, lines) if m}
    unknown = [n for n in declared if not declared[n] and n not in GENERATED and n not in KEY_FILES]
    missing = [n for n, required in needed.items() if required and n not in declared]
    if unknown or missing:
        raise ConfigError("cannot write .env: " + "; ".join(
            ([f"{template.name} leaves {', '.join(unknown)} empty and gpdata cannot generate it"] if unknown else [])
            + ([f"{compose_file.name} requires {', '.join(missing)}, which {template.name} does not declare"]
               if missing else [])))
    keys_dir = Path(keys_dir or DEFAULT_KEYS_DIR).expanduser().resolve()
    project = compose_file.resolve().parent
    if keys_dir.is_relative_to(project):  # the checkout is the image's build context and is copied about
        raise ConfigError(f"the key files must live outside the project folder {project} (it is docker's build "
                          f"context and gets copied): choose another --keys-dir than {keys_dir}")
    root = os.getuid() == 0
    uid = IMAGE_UID if root else os.getuid()
    key_paths, steps = _write_key_files(keys_dir, IMAGE_UID if root else None)
    values = dict(declared)
    values["AIRFLOW_UID"] = str(uid)
    generated = []
    for name, value in declared.items():
        if name in KEY_FILES:
            values[name] = key_paths[name]
        elif not value:
            values[name] = GENERATED[name]()
            generated.append(name)
    empty = [n for n, required in needed.items() if required and not values.get(n)]
    if empty:  # unreachable with the checks above; kept so .env is never written incomplete
        raise ConfigError(f"cannot write .env: no value for {', '.join(empty)}")
    out = []
    for line in lines:
        m = _LINE.match(line)
        out.append(f"{m.group(1)}={values[m.group(1)]}" if m else line)
    text = "# Written by `gpdata secrets init` from .env.example; never commit it.\n" + "\n".join(out) + "\n"
    tmp = env_file.with_name(f".env.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    tmp.replace(env_file)
    steps.append(f"wrote {env_file} (mode 0600) with generated {', '.join(generated)}; AIRFLOW_UID={uid}")
    return env_file, steps
