"""Practice feeds: one YAML file per practice, validated. Adding a file adds the practice."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gpdata.errors import ConfigError

M = TypeVar("M", bound=BaseModel)
ODS_PRACTICE_RE = re.compile(r"^[A-Z][0-9]{5}$")


class Feed(BaseModel):
    """One practice's source of records."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ods_code: str = Field(description="ODS code of the practice, one letter and five digits (e.g. A81001)")
    name: str = Field(min_length=1, description="Practice name, for operators")
    supplier: str = Field(default="unknown", description="Clinical system supplier (e.g. EMIS, TPP)")
    format: Literal["fhir"] = Field(default="fhir", description="Source format of the delivery")
    location: str = Field(min_length=1, description="Delivery folder; relative paths are from the YAML file")
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

    def location_path(self) -> Path:
        path = Path(self.location)
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
        parts.append(f"field '{where}': {msg}")
    return "; ".join(parts)


def load_model(path: Path, model: type[M], what: str) -> M:
    """One YAML configuration file validated into a pydantic model; errors name the file and the field."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", file=str(path)) from None
    if not isinstance(doc, dict):
        raise ConfigError(f"a {what} file must hold a mapping of fields", file=str(path))
    try:
        return model(**doc, source_file=Path(path).resolve())
    except ValidationError as exc:
        raise ConfigError(_explain(exc), file=str(path)) from None


def load_folder(folder: Path, loader: Callable[[Path], M], key: str, what: str, label: str) -> list[M]:
    """Every ``*.yaml``/``*.yml`` file of a folder through ``loader``, sorted by ``key``; a repeated key is an
    error naming both files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{what} folder {folder} does not exist")
    found: dict[str, M] = {}
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        item = loader(path)
        value = getattr(item, key)
        if value in found:
            raise ConfigError(f"duplicate {label} {value}, also in {found[value].source_file}", file=str(path))
        found[value] = item
    return [found[k] for k in sorted(found)]


def load_feed(path: Path) -> Feed:
    return load_model(path, Feed, "feed")


def load_feeds(folder: Path, *, active_only: bool = False) -> list[Feed]:
    """Every feed in a folder, sorted by ODS code; duplicates are an error."""
    feeds = load_folder(folder, load_feed, "ods_code", "feed", "ODS code")
    return [f for f in feeds if f.active] if active_only else feeds


def feed_yaml(feed: Feed) -> str:
    return yaml.safe_dump(feed.model_dump(mode="json"), sort_keys=False)


def write_synthetic_feeds(ods_codes: list[str], sources: Path, feeds_dir: Path) -> list[Path]:
    """One feed file per synthetic practice; locations are relative when the folders are siblings."""
    feeds_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for ods in ods_codes:
        location = sources / ods
        if feeds_dir.resolve().parent == sources.resolve().parent:
            location = Path("..") / sources.name / ods
        feed = Feed(ods_code=ods, name=f"Synthetic practice {ods}", supplier="synthetic", format="fhir",
                    location=str(location))
        path = feeds_dir / f"{ods}.yaml"
        path.write_text(feed_yaml(feed))
        written.append(path)
    return written
