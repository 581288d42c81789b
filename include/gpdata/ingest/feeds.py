"""Practice feeds: one YAML file per practice, validated. Adding a file adds the practice."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gpdata.config import explain, load_folder, load_model
from gpdata.errors import ConfigError
from gpdata.settings import dialects_dirs

ODS_PRACTICE_RE = re.compile(r"^[A-Z][0-9]{5}$")
CONN_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}$")
SCHEDULE_PRESETS = ("@hourly", "@daily", "@weekly", "@monthly", "@once")
DEFAULT_SCHEDULE = "@daily"


@cache
def _dialect_kinds(dirs: tuple[Path, ...]) -> dict[str, tuple[str | None, str | None]]:
    """Dialect name -> (kind, what a delivery holds without a deletion column), read cheaply (DAG parsing must
    not import the data libraries); the full dialect is validated when a task reads it, by ``gpdata feeds
    validate`` and ``gpdata feeds add``."""
    out = {}
    for folder in dirs:
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else ():
            doc = yaml.safe_load(path.read_text()) or {}
            out.setdefault(path.stem, (doc.get("kind"), doc.get("delivers")))
    return out


def _dialects() -> dict[str, tuple[str | None, str | None]]:
    return _dialect_kinds(dialects_dirs())


def _dialect_info(name: str) -> tuple[str | None, str | None] | None:
    """(kind, delivers) of a dialect named by name or by a path under the dialect folders; None if unknown."""
    if not name.endswith((".yaml", ".yml")):
        return _dialects().get(name)
    from gpdata.ingest.dialects import resolve_dialect

    try:
        path = resolve_dialect(name)
    except ConfigError as exc:
        raise ValueError(exc.cause) from None
    doc = yaml.safe_load(path.read_text()) or {}
    return doc.get("kind"), doc.get("delivers")


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
    dialect: str | None = Field(default=None, description="Dialect name (include/config/dialects or "
                                                           "GPDATA_DIALECTS_DIR) or path of a dialect file under "
                                                           "GPDATA_DIALECTS_DIR (flatfile: required; sql: default "
                                                           "supplier_sql)")
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
    bundles: Literal["together", "independent"] = Field(
        default="together", description="fhir: together (one unreadable bundle refuses the whole delivery) or "
                                        "independent (a snapshot of per-patient bundles: an unreadable bundle is "
                                        "moved to quarantine alone and the others load)")
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
            info = _dialect_info(self.dialect)
            if info is None:
                raise ValueError(f"unknown dialect {self.dialect!r} (known: {', '.join(_dialects())})")
            kind, delivers = info
            if kind != self.format:
                raise ValueError(f"dialect {self.dialect} is for format {kind}, not {self.format}")
            if delivers == "snapshot" and self.mode != "baseline":
                raise ValueError(f"dialect {self.dialect} delivers full snapshots without a deletion column: mode "
                                 "must be baseline")
        return self

    def location_path(self) -> Path:
        path = Path(self.location or ".")
        if not path.is_absolute() and self.source_file is not None:
            path = self.source_file.parent / path
        return path.resolve()


def check_location(feed: Feed, inbox_root: Path, forbidden: tuple[Path, ...] = ()) -> Path:
    """The feed's delivery folder, if it lies under the inbox root (symbolic links resolved) and in none of
    gpdata's own working folders; else a ConfigError naming the feed. A feed without a location (sql) passes."""
    if feed.format == "sql" or not feed.location:
        return Path(inbox_root)
    where = f"feed {feed.source_file}" if feed.source_file else f"the feed of practice {feed.ods_code}"
    location, root = feed.location_path(), Path(inbox_root).resolve()
    if not location.is_relative_to(root):
        raise ConfigError(f"{where}: location {feed.location} lies outside the inbox root {root} "
                          "(GPDATA_INBOX_ROOT): deliveries are read only from under it", practice=feed.ods_code)
    for folder in forbidden:
        folder = Path(folder).resolve()
        if location.is_relative_to(folder) or folder.is_relative_to(location):
            raise ConfigError(f"{where}: location {feed.location} is, or holds, gpdata's own folder {folder}: "
                              "point it at the practice's delivery folder", practice=feed.ods_code)
    return location


def load_feed(path: Path) -> Feed:
    return load_model(path, Feed, "feed")


def find_feed(folder: Path, ods_code: str) -> Feed:
    """The feed of one practice: ``<ODS>.yaml`` (as ``gpdata feeds add`` writes it), else a search of the
    folder's readable files (a broken file of another practice is passed over). The file's ODS code must
    match."""
    if not ODS_PRACTICE_RE.match(ods_code or ""):
        raise ConfigError(f"not an ODS practice code: {ods_code!r}")
    for name in (f"{ods_code}.yaml", f"{ods_code}.yml"):
        path = Path(folder) / name
        if path.exists():
            feed = load_feed(path)
            if feed.ods_code == ods_code:
                return feed
    feeds, problems = survey_feeds(folder)  # another practice's broken file does not stop this one
    for feed in feeds:
        if feed.ods_code == ods_code:
            return feed
    unreadable = f" ({len(problems)} feed file(s) cannot be read: see gpdata feeds validate)" if problems else ""
    raise ConfigError(f"no feed for practice {ods_code} in {folder}{unreadable}", practice=ods_code)


def load_feeds(folder: Path, *, active_only: bool = False) -> list[Feed]:
    """Every feed in a folder, sorted by ODS code; duplicates are an error."""
    feeds = load_folder(folder, load_feed, "ods_code", "feed", "ODS code", model=Feed)
    return [f for f in feeds if f.active] if active_only else feeds


def survey_feeds(folder: Path, *, active_only: bool = False) -> tuple[list[Feed], list[ConfigError]]:
    """The feeds of a folder that can be read, and an error (naming the file, the field and the cause) for each
    file that cannot: one broken feed file disables that feed only. A missing folder is still an error."""
    problems: list[ConfigError] = []
    feeds = load_folder(folder, load_feed, "ods_code", "feed", "ODS code", model=Feed, problems=problems)
    return ([f for f in feeds if f.active] if active_only else feeds), problems


def feed_yaml(feed: Feed) -> str:
    return yaml.safe_dump(feed.model_dump(mode="json", exclude_none=True), sort_keys=False)


def add_feed(folder: Path, fields: dict, *, check_sample: Path | None = None) -> tuple[Path, dict | None]:
    """Validate a feed from its fields, its dialect in full and, given ``check_sample``, a sample delivery read
    with it; then write ``<ODS>.yaml``. Refuses a practice that already has a feed. Returns the file written and
    the sample's rows per table (None without a sample)."""
    folder = Path(folder)
    try:
        feed = Feed(**fields)
    except ValidationError as exc:
        raise ConfigError(explain(exc)) from None
    # Another practice's broken file does not stop this one; a broken file this one would clash with does.
    feeds, problems = survey_feeds(folder) if folder.is_dir() else ([], [])
    existing = {f.ods_code: f.source_file for f in feeds}
    if feed.ods_code in existing:
        raise ConfigError(f"practice {feed.ods_code} already has a feed: {existing[feed.ods_code]}")
    clashes = [p.file for p in problems if f"duplicate ODS code {feed.ods_code}," in p.cause]
    if clashes:
        raise ConfigError(f"practice {feed.ods_code} already has feed files, left out as duplicates: "
                          f"{', '.join(clashes)}; keep one of them")
    if (folder / f"{feed.ods_code}.yaml").exists():
        raise ConfigError(f"{folder / f'{feed.ods_code}.yaml'} exists already and cannot be read (see gpdata feeds "
                          "validate): fix it rather than adding the practice again")
    if feed.dialect or feed.format == "sql":
        from gpdata.ingest.dialects import load_dialect

        load_dialect(feed.dialect or "supplier_sql")  # the full check: the feed is refused with its dialect
    if check_sample is not None:
        from gpdata.ingest.sources import check_sample as check

        sample = check(feed, Path(check_sample))
    else:
        sample = None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{feed.ods_code}.yaml"
    path.write_text(f"# Feed of {feed.name}, written by gpdata feeds add\n" + feed_yaml(feed))
    load_feed(path)  # what was written reads back valid
    return path, sample
