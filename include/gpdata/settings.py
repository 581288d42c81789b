"""Where things live. Everything hangs off GPDATA_HOME (default ./var, relative to the current folder; the
Makefile and the venv's activate script set it to the checkout's var/), except the curated store when
GPDATA_STORE names one elsewhere: a folder, or an ``s3://bucket/prefix`` URI (see gpdata.storage).

GPDATA_HOME may hold a settings file, ``gpdata.toml`` (``make demo`` writes one), naming the folders and the
development key of that home. Its values are defaults under the environment: a variable that is set wins.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from gpdata.errors import GpdataError, KeyConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_DIR = PACKAGE_DIR.parent / "config"
CODELISTS_DIR = CONFIG_DIR / "codelists"
DEFAULT_FEEDS_DIR = CONFIG_DIR / "feeds"
DEFAULT_PROJECTS_DIR = CONFIG_DIR / "projects"
DEFAULT_DIALECTS_DIR = CONFIG_DIR / "dialects"
CHECKOUT_DIR = PACKAGE_DIR.parent.parent
MODE_ENV = "GPDATA_MODE"
SETTINGS_FILE = "gpdata.toml"
# The settings file's keys and the environment variables that win over them.
FILE_KEYS = {"feeds_dir": "GPDATA_FEEDS_DIR", "store": "GPDATA_STORE", "projects_dir": "GPDATA_PROJECTS_DIR",
             "secrets_dir": "GPDATA_SECRETS_DIR", "inbox_root": "GPDATA_INBOX_ROOT",
             "master_key_file": "GPDATA_MASTER_KEY_FILE"}


def production_mode(env: dict[str, str] | None = None) -> bool:
    """``GPDATA_MODE=production`` (any case): keys are held to production rules (see gpdata.privacy.keys) and
    secrets must come from files the operator made."""
    env = os.environ if env is None else env
    return env.get(MODE_ENV, "development").strip().lower() == "production"


def check_secret_file(path: Path, what: str, env: dict[str, str] | None = None, practice: str | None = None) -> None:
    """In production mode, refuse a secret file that group or others may read (or write)."""
    if not production_mode(env):
        return
    try:
        mode = Path(path).stat().st_mode
    except FileNotFoundError:
        raise KeyConfigError(f"{what} {path} does not exist", practice=practice) from None
    if mode & 0o077:
        raise KeyConfigError(f"{what} {path} is open to group or others (mode {mode & 0o777:04o}); it must be "
                             f"readable by its owner only (chmod 600) when {MODE_ENV}=production", practice=practice)


def dialects_dirs(env: dict[str, str] | None = None) -> tuple[Path, ...]:
    """Where dialects are found: GPDATA_DIALECTS_DIR (a data engineer's own, outside the code tree), if set,
    then the shipped include/config/dialects."""
    env = os.environ if env is None else env
    own = env.get("GPDATA_DIALECTS_DIR")
    return (Path(own).resolve(), DEFAULT_DIALECTS_DIR) if own else (DEFAULT_DIALECTS_DIR,)


@dataclass(frozen=True)
class Settings:
    home: Path
    feeds_dir: Path
    store: Path  # a Path, or a gpdata.storage.StorePath for an s3:// store
    projects_dir: Path = DEFAULT_PROJECTS_DIR
    secrets: Path = CHECKOUT_DIR / ".secrets"
    inbox_root: Path | None = None  # None: GPDATA_HOME

    @property
    def inbox(self) -> Path:
        """Where every feed's ``location`` must lie (GPDATA_INBOX_ROOT, default GPDATA_HOME)."""
        return self.inbox_root or self.home

    @property
    def working_folders(self) -> tuple[Path, ...]:
        """gpdata's own folders under GPDATA_HOME: never a delivery folder, even under the inbox root."""
        local = [self.staging, self.state, self.quarantined_deliveries, self.quality, self.data_docs,
                 self.extracts, self.register, self.airflow_home, self.secrets]
        if not self.store_is_remote:
            local.append(self.store)
        return tuple(p for p in local if isinstance(p, Path))

    @property
    def sources(self) -> Path:
        return self.home / "sources"

    @property
    def reference(self) -> Path:
        return self.home / "reference"

    @property
    def postcode_lookup(self) -> Path:
        return self.reference / "postcode_lsoa.csv"

    @property
    def area_lookup(self) -> Path:
        """LSOA -> MSOA -> local authority (lsoa_code,msoa_code,lad_code), for generalising areas in extracts."""
        return self.reference / "lsoa_areas.csv"

    @property
    def staging(self) -> Path:
        """Pseudonymised batches between the extraction, quality and commit tasks."""
        return self.home / "staging"

    @property
    def manifests(self) -> Path:
        return self.store / "_manifests"

    @property
    def state(self) -> Path:
        """Per-practice extraction state: the delivery ledger (SHA-256 of every file), the watermark and the
        pseudonymous maps of incremental feeds. Kept out of the store: it holds the pseudonyms of patients who
        opted out (to drop their later records), which no reader of the store may see."""
        return self.home / "state"

    @property
    def quarantined_deliveries(self) -> Path:
        """Delivered files that could not be read, moved aside per practice (identifiable: kept out of the
        store, with the sources' access rules)."""
        return self.home / "quarantine"

    @property
    def store_is_remote(self) -> bool:
        from gpdata import storage

        return storage.is_remote(self.store)

    @property
    def quality(self) -> Path:
        """Great Expectations file contexts and persisted (count-only) results, per practice. GX needs a
        local folder: with an s3:// store they stay under GPDATA_HOME."""
        return self.home / "quality" if self.store_is_remote else self.store / "_quality"

    @property
    def data_docs(self) -> Path:
        """Great Expectations Data Docs, one site per practice (under GPDATA_HOME with an s3:// store)."""
        return self.home / "docs" / "quality" if self.store_is_remote else self.store / "_docs" / "quality"

    @property
    def extracts(self) -> Path:
        """Project extracts: <project>/<release>/<table>.parquet, manifest.json, summary.json."""
        return self.home / "extracts"

    @property
    def register(self) -> Path:
        """The public data release register (register.csv, register.html)."""
        return self.home / "register"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"


def home_dir(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("GPDATA_HOME") or "var").resolve()


def settings_file(env: dict[str, str] | None = None) -> Path:
    return home_dir(env) / SETTINGS_FILE


def read_settings_file(env: dict[str, str] | None = None) -> dict[str, str]:
    """The settings file of GPDATA_HOME as environment variables ({} when there is none). Relative paths are
    taken from GPDATA_HOME. A file that cannot be read is an error naming it, never silently ignored."""
    path = settings_file(env)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise GpdataError(f"cannot read the settings file: {exc}", file=str(path)) from None
    unknown = sorted(set(doc) - set(FILE_KEYS))
    if unknown or not all(isinstance(v, str) and v for v in doc.values()):
        raise GpdataError(f"the settings file takes non-empty text values for {', '.join(FILE_KEYS)}"
                          + (f"; unknown: {', '.join(unknown)}" if unknown else ""), file=str(path))
    home = path.parent
    return {FILE_KEYS[k]: (v if "://" in v else str(home / v)) for k, v in doc.items()}


def write_settings_file(cfg: Settings, master_key_file: Path | None = None) -> Path:
    """Write ``gpdata.toml`` in GPDATA_HOME naming this configuration's folders (and a development key)."""
    values = {"feeds_dir": cfg.feeds_dir, "store": cfg.store, "projects_dir": cfg.projects_dir,
              "secrets_dir": cfg.secrets, "master_key_file": master_key_file}
    lines = ["# gpdata settings for this GPDATA_HOME, written by `make demo` (gpdata.ops.demo). Every line is a",
             "# default under the environment: GPDATA_FEEDS_DIR, GPDATA_STORE, GPDATA_PROJECTS_DIR,",
             "# GPDATA_SECRETS_DIR, GPDATA_INBOX_ROOT and GPDATA_MASTER_KEY_FILE win when set.",
             "# master_key_file is used only for a development key and never when GPDATA_MODE=production."]
    lines += [f"{k} = {json.dumps(str(v))}" for k, v in values.items() if v is not None]
    cfg.home.mkdir(parents=True, exist_ok=True)
    path = cfg.home / SETTINGS_FILE
    tmp = path.with_name(SETTINGS_FILE + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def load(env: dict[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    home = home_dir(env)
    env = {**read_settings_file(env), **{k: v for k, v in env.items() if v}}  # the environment wins
    feeds = Path(env["GPDATA_FEEDS_DIR"]).resolve() if env.get("GPDATA_FEEDS_DIR") else DEFAULT_FEEDS_DIR
    store = _store(env["GPDATA_STORE"], env) if env.get("GPDATA_STORE") else home / "store"
    projects = Path(env["GPDATA_PROJECTS_DIR"]).resolve() if env.get("GPDATA_PROJECTS_DIR") else DEFAULT_PROJECTS_DIR
    # Development keys (`make demo`, `gpdata dev-key`): outside GPDATA_HOME, so copying var/ never copies a key.
    secrets = Path(env["GPDATA_SECRETS_DIR"]).resolve() if env.get("GPDATA_SECRETS_DIR") else CHECKOUT_DIR / ".secrets"
    inbox = Path(env["GPDATA_INBOX_ROOT"]).resolve() if env.get("GPDATA_INBOX_ROOT") else None
    return Settings(home=home, feeds_dir=feeds, store=store, projects_dir=projects, secrets=secrets,
                    inbox_root=inbox)


def _store(value: str, env) -> Path:
    """A folder (resolved) or, for an s3:// URI, a gpdata.storage.StorePath with credentials from ``env``."""
    if "://" not in value:
        return Path(value).resolve()
    from gpdata import storage

    return storage.root(value, env=dict(env))
