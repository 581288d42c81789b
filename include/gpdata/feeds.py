"""Practice feeds: one YAML file per practice, validated. Adding a file adds the practice."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gpdata.errors import ConfigError
from gpdata.settings import CONFIG_DIR

M = TypeVar("M", bound=BaseModel)
# LibYAML's safe loader: about 10x faster than the pure-Python one, which matters when the DAG processor reads
# thousands of feed files within its per-file parse timeout.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
ODS_PRACTICE_RE = re.compile(r"^[A-Z][0-9]{5}$")
CONN_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}$")
SCHEDULE_PRESETS = ("@hourly", "@daily", "@weekly", "@monthly", "@once")
DEFAULT_SCHEDULE = "@daily"


@cache
def _dialects() -> dict[str, str]:
    """Dialect name -> kind, read cheaply (DAG parsing must not import the data libraries); the full dialect
    is validated when a task reads it and by ``gpdata feeds validate``."""
    out = {}
    for path in sorted((CONFIG_DIR / "dialects").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text()) or {}
        out[path.stem] = doc.get("kind")
    return out


class Feed(BaseModel):
    """One practice's source of records."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ods_code: str = Field(description="ODS code of the practice, one letter and five digits (e.g. A81001)")
    name: str = Field(min_length=1, description="Practice name, for operators")
    supplier: str = Field(default="unknown", min_length=1,
                          description="Clinical system supplier (e.g. EMIS, TPP, synthetic)")
    format: Literal["fhir", "flatfile", "sql"] = Field(
        default="fhir", description="fhir (GP Connect / UK Core bundles), flatfile (a supplier export in a "
                                    "dialect) or sql (a supplier database)")
    location: str | None = Field(default=None, min_length=1,
                                 description="Delivery folder (fhir, flatfile); relative paths are from the YAML "
                                             "file")
    connection_id: str | None = Field(default=None, description="Airflow connection id of the supplier database "
                                                                "(sql)")
    dialect: str | None = Field(default=None, description="Dialect in include/config/dialects (flatfile: required; "
                                                           "sql: default supplier_sql)")
    mode: Literal["baseline", "incremental"] = Field(
        default="baseline", description="baseline: every delivery is a full extract that replaces the practice's "
                                        "data; incremental: a baseline, then only changes (amendments and "
                                        "deletions) merged in (flatfile, sql)")
    schedule: str = Field(default=DEFAULT_SCHEDULE, description="When to extract: a preset (@hourly, @daily, "
                                                                "@weekly, @monthly) or a cron expression")
    active: bool = True
    max_quarantine_fraction: float = Field(default=0.05, ge=0.0, le=1.0,
                                           description="Share of a table's rows that may be quarantined "
                                                       "before the whole batch fails")
    quarantine_allowance: int = Field(default=10, ge=0,
                                      description="Quarantined rows per table that never fail the batch, "
                                                  "so one bad row in a small table is not a failed feed")
    volume_tolerance: float | None = Field(default=0.5, ge=0.0,
                                           description="Largest relative change in a table's delivered rows "
                                                       "against the previous committed run (null: no check)")
    source_file: Path | None = Field(default=None, exclude=True)

    @field_validator("ods_code")
    @classmethod
    def _ods(cls, value: str) -> str:
        if not ODS_PRACTICE_RE.match(value):
            raise ValueError("must be an ODS practice code: one capital letter then five digits, e.g. A81001")
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        if value in SCHEDULE_PRESETS:
            return value
        from croniter import croniter

        if not croniter.is_valid(value):
            raise ValueError(f"must be one of {', '.join(SCHEDULE_PRESETS)} or a cron expression like '0 2 * * *'")
        return value

    @field_validator("connection_id")
    @classmethod
    def _conn(cls, value: str | None) -> str | None:
        if value is not None and not CONN_ID_RE.match(value):
            raise ValueError("must be an Airflow connection id (letters, digits, _ . -)")
        return value

    @model_validator(mode="after")
    def _by_format(self) -> Feed:
        if self.format in ("fhir", "flatfile") and not self.location:
            raise ValueError(f"format {self.format} needs a location (the delivery folder)")
        if self.format == "sql":
            if not self.connection_id:
                raise ValueError("format sql needs connection_id (an Airflow connection)")
            if self.location:
                raise ValueError("format sql reads a database: remove location")
        elif self.connection_id:
            raise ValueError(f"format {self.format} reads files: remove connection_id")
        if self.format == "fhir":
            if self.dialect:
                raise ValueError("format fhir has no dialect: remove it")
            if self.mode != "baseline":
                raise ValueError("format fhir delivers full snapshots: mode must be baseline")
        if self.format == "flatfile" and not self.dialect:
            raise ValueError(f"format flatfile needs a dialect (one of {', '.join(_dialects())})")
        if self.dialect:
            kind = _dialects().get(self.dialect)
            if kind is None:
                raise ValueError(f"unknown dialect {self.dialect!r} (known: {', '.join(_dialects())})")
            if kind != self.format:
                raise ValueError(f"dialect {self.dialect} is for format {kind}, not {self.format}")
        return self

    def location_path(self) -> Path:
        path = Path(self.location or ".")
        if not path.is_absolute() and self.source_file is not None:
            path = self.source_file.parent / path
        return path.resolve()


def _explain(error: ValidationError) -> str:
    parts = []
    for err in error.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(file)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"field '{where}': {msg}" if err["loc"] else msg)
    return "; ".join(parts)


def _validate(path: Path, doc, model: type[M], what: str) -> M:
    """``path`` is already absolute and resolved."""
    if not isinstance(doc, dict):
        raise ConfigError(f"a {what} file must hold a mapping of fields", file=str(path))
    try:
        return model(**doc, source_file=path)
    except ValidationError as exc:
        raise ConfigError(_explain(exc), file=str(path)) from None


def _parse(path: Path):
    try:
        return yaml.load(Path(path).read_text(), Loader=_LOADER)  # noqa: S506 - a safe loader (C or pure)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", file=str(path)) from None


def load_model(path: Path, model: type[M], what: str) -> M:
    """One YAML configuration file validated into a pydantic model; errors name the file and the field."""
    return _validate(Path(path).resolve(), _parse(path), model, what)


def _docs_cache(folder: Path) -> Path | None:
    """Where parsed YAML documents of a folder are cached (under GPDATA_HOME), or None without a home."""
    import hashlib

    home = os.environ.get("GPDATA_HOME")
    if not home:
        return None
    tag = hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:16]
    return Path(home) / "cache" / f"yaml-{tag}.json"


def _read_docs(folder: Path, paths: list[Path]) -> dict[Path, object]:
    """Each file's parsed YAML, reusing the cache for files whose size and modification time are unchanged
    (the DAG processor re-reads thousands of feed files every few minutes; parsing them is the slow part)."""
    import json

    cache_path = _docs_cache(folder)
    cached = {}
    if cache_path and cache_path.exists():
        try:
            cached = json.loads(cache_path.read_text())
        except (OSError, ValueError):
            cached = {}
    docs, fresh, changed = {}, {}, False
    stats = {e.name: e.stat() for e in os.scandir(folder)}
    for path in paths:
        st = stats[path.name]
        stamp = [st.st_mtime_ns, st.st_size]
        entry = cached.get(path.name)
        if entry and entry[0] == stamp:
            docs[path] = entry[1]
        else:
            docs[path] = _parse(path)
            changed = True
        fresh[path.name] = [stamp, docs[path]]
    if cache_path and (changed or len(fresh) != len(cached)):
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_name(f".{cache_path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(fresh, default=str))
            os.replace(tmp, cache_path)
        except OSError:
            pass  # a read-only home only loses the speed-up
    return docs


def load_folder(folder: Path, loader: Callable[[Path], M], key: str, what: str, label: str,
                model: type[M] | None = None) -> list[M]:
    """Every ``*.yaml``/``*.yml`` file of a folder through ``loader`` (or, faster, validated into ``model`` from
    cached YAML), sorted by ``key``; a repeated key is an error naming both files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{what} folder {folder} does not exist")
    root = folder.resolve()
    paths = [root / n for n in sorted(e.name for e in os.scandir(root)
                                      if e.name.endswith((".yaml", ".yml")) and e.is_file())]
    docs = _read_docs(root, paths) if model is not None else {}
    found: dict[str, M] = {}
    for path in paths:
        item = _validate(path, docs[path], model, what) if model is not None else loader(path)
        value = getattr(item, key)
        if value in found:
            raise ConfigError(f"duplicate {label} {value}, also in {found[value].source_file}", file=str(path))
        found[value] = item
    return [found[k] for k in sorted(found)]


def load_feed(path: Path) -> Feed:
    return load_model(path, Feed, "feed")


def find_feed(folder: Path, ods_code: str) -> Feed:
    """The feed of one practice: ``<ODS>.yaml`` (as ``gpdata feeds add`` writes it), else a search of the
    folder. The file's ODS code must match."""
    if not ODS_PRACTICE_RE.match(ods_code or ""):
        raise ConfigError(f"not an ODS practice code: {ods_code!r}")
    for name in (f"{ods_code}.yaml", f"{ods_code}.yml"):
        path = Path(folder) / name
        if path.exists():
            feed = load_feed(path)
            if feed.ods_code == ods_code:
                return feed
    for feed in load_feeds(folder):
        if feed.ods_code == ods_code:
            return feed
    raise ConfigError(f"no feed for practice {ods_code} in {folder}", practice=ods_code)


def load_feeds(folder: Path, *, active_only: bool = False) -> list[Feed]:
    """Every feed in a folder, sorted by ODS code; duplicates are an error."""
    feeds = load_folder(folder, load_feed, "ods_code", "feed", "ODS code", model=Feed)
    return [f for f in feeds if f.active] if active_only else feeds


def feed_yaml(feed: Feed) -> str:
    return yaml.safe_dump(feed.model_dump(mode="json", exclude_none=True), sort_keys=False)


def add_feed(folder: Path, fields: dict) -> Path:
    """Validate a feed from its fields and write ``<ODS>.yaml``; refuses a practice that already has a feed."""
    folder = Path(folder)
    try:
        feed = Feed(**fields)
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None
    existing = {f.ods_code: f.source_file for f in load_feeds(folder)} if folder.is_dir() else {}
    if feed.ods_code in existing:
        raise ConfigError(f"practice {feed.ods_code} already has a feed: {existing[feed.ods_code]}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{feed.ods_code}.yaml"
    path.write_text(f"# Feed of {feed.name}, written by gpdata feeds add\n" + feed_yaml(feed))
    load_feed(path)  # what was written reads back valid
    return path


def write_synthetic_feeds(ods_codes: list[str], sources: Path, feeds_dir: Path,
                          formats: list[str] | None = None) -> list[Path]:
    """One feed file per synthetic practice, practice i delivering in ``formats[i % len(formats)]``: ``fhir``
    (the generated bundles) or a flat-file dialect (``emis_csv``, ``tpp_pipe``: the same records exported to
    ``<sources>/<ODS>-<dialect>/``, an incremental feed). Locations are relative when the folders are siblings."""
    formats = formats or ["fhir"]
    feeds_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, ods in enumerate(ods_codes):
        fmt = formats[i % len(formats)]
        folder = ods if fmt == "fhir" else f"{ods}-{fmt}"
        if fmt != "fhir":
            from gpdata.synth.exports import export_flatfile

            export_flatfile(sources / ods, sources / folder, ods, fmt)
        location = sources / folder
        if feeds_dir.resolve().parent == sources.resolve().parent:
            location = Path("..") / sources.name / folder
        fields = {"format": "fhir"} if fmt == "fhir" else {"format": "flatfile", "dialect": fmt,
                                                             "mode": "incremental"}
        feed = Feed(ods_code=ods, name=f"Synthetic practice {ods}", supplier="synthetic", location=str(location),
                    **fields)
        path = feeds_dir / f"{ods}.yaml"
        path.write_text(feed_yaml(feed))
        written.append(path)
    return written
