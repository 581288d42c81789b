"""Approved projects: one YAML file each, validated against the data dictionary and the calendar."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gpdata.config import load_folder, load_model
from gpdata.errors import ConfigError
from gpdata.model import CURATED, PSEUDONYM_FIELDS


class Approval(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    panel: str = Field(min_length=1)
    reference: str = Field(min_length=1)
    date: dt.date


class CodeListCohort(BaseModel):
    """Patients with any code from these lists (SNOMED CT) in the observations table within the date range."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    code_lists: list[str] = Field(min_length=1, description="CSV files with a `code` column, relative to this file")


BIRTH_LEVELS = ("month", "year", "band5")               # finest first; the default is the last (coarsest)
AREA_LEVELS = ("lsoa", "msoa", "local_authority")
ETHNICITY_LEVELS = ("category", "group")                # NHS ethnic category (A-Z) or its 5 groups + not stated
DATE_LEVELS = ("day", "shift", "month", "year")
DATE_COLUMNS = ("event_date", "registration_date", "due_date", "death_month", "start_time")
DEFAULT_MINIMUM_K = 5


class RareCodes(BaseModel):
    """Codes held by fewer than ``min_patients`` patients in the extract: kept, grouped to the code list (a
    parent concept) of the project's cohort that holds them (dropped when none does), or dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    min_patients: int = Field(default=8, ge=1)
    action: Literal["keep", "group", "drop"] = "drop"


class Sensitive(BaseModel):
    """The attribute l-diversity is measured for: a column of an extract table."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    table: str
    column: str


class Project(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    project_id: str = Field(description="Short id, letters, digits and hyphens (e.g. DARS-NIC-12345)")
    organisation: str = Field(min_length=1)
    purpose: str = Field(min_length=1)
    legal_basis: str = Field(min_length=1)
    approvals: list[Approval] = Field(description="Two independent panels must approve")
    tables: dict[str, list[str]] = Field(description="Table -> the columns approved from it")
    date_from: dt.date
    date_to: dt.date
    cohort: CodeListCohort | None = None
    national_data_optout: Literal["apply", "exempt"] = "apply"
    exemption_reason: str | None = None
    expires: dt.date
    active: bool = True
    precision: dict[str, str] = Field(default_factory=dict, description=(
        "Column -> approved precision: birth_month month|year|band5, lsoa_code lsoa|msoa|local_authority, "
        "ethnic_category category|group, a date column day|shift|month|year. Unlisted: the coarsest"))
    rare_codes: RareCodes = RareCodes()
    small_classes: Literal["refuse", "suppress"] = Field(default="refuse", description=(
        "Below minimum_k: refuse the extract, or suppress (blank) the quasi-identifiers of the records in "
        "classes below it"))
    minimum_k: int = Field(default=DEFAULT_MINIMUM_K, ge=1)
    environment: Literal["standard", "trusted_research_environment"] = "standard"
    environment_reason: str | None = None
    sensitive: Sensitive | None = None
    source_file: Path | None = Field(default=None, exclude=True)

    @field_validator("project_id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]{1,63}", value):
            raise ValueError("letters, digits and hyphens only, 2 to 64 characters")
        return value

    @field_validator("approvals")
    @classmethod
    def _two_panels(cls, value: list[Approval]) -> list[Approval]:
        if len({a.panel for a in value}) < 2:
            raise ValueError("needs approvals from two independent panels")
        return value

    @field_validator("tables")
    @classmethod
    def _columns_in_dictionary(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for table, columns in value.items():
            if table not in CURATED:
                raise ValueError(f"table {table!r} is not in the data dictionary")
            unknown = [c for c in columns if c not in CURATED[table].names]
            if unknown:
                raise ValueError(f"column(s) {', '.join(unknown)} of {table} are not in the data dictionary")
            if "patient_pid" not in columns and table != "practitioners":
                raise ValueError(f"{table}: patient_pid is required (it is re-keyed for the project)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Project:
        if self.date_to < self.date_from:
            raise ValueError("date_to is before date_from")
        if self.national_data_optout == "exempt" and not self.exemption_reason:
            raise ValueError("an exemption from the National Data Opt-out needs its exemption_reason")
        if self.minimum_k < DEFAULT_MINIMUM_K and self.environment != "trusted_research_environment":
            raise ValueError(f"minimum_k below {DEFAULT_MINIMUM_K} needs environment: trusted_research_environment")
        if self.environment == "trusted_research_environment" and not self.environment_reason:
            raise ValueError("environment: trusted_research_environment needs its environment_reason")
        levels = {"birth_month": BIRTH_LEVELS, "lsoa_code": AREA_LEVELS, "ethnic_category": ETHNICITY_LEVELS,
                  **dict.fromkeys(DATE_COLUMNS, DATE_LEVELS)}
        for column, level in self.precision.items():
            if column not in levels:
                raise ValueError(f"precision: {column!r} has no precision levels (use {', '.join(levels)})")
            if level not in levels[column]:
                raise ValueError(f"precision: {column} {level!r} is not one of {', '.join(levels[column])}")
        if self.sensitive and self.sensitive.column not in self.tables.get(self.sensitive.table, ()):
            raise ValueError(f"sensitive: {self.sensitive.table}.{self.sensitive.column} is not an approved column")
        return self

    def level(self, column: str) -> str:
        """The approved precision of a column: declared, else the coarsest."""
        if column in self.precision:
            return self.precision[column]
        if column == "birth_month":
            return BIRTH_LEVELS[-1]
        if column == "lsoa_code":
            return AREA_LEVELS[-1]
        if column == "ethnic_category":
            return ETHNICITY_LEVELS[-1]
        return DATE_LEVELS[-1]

    def finer_precision(self) -> dict[str, str]:
        """The declared precisions finer than the default (recorded in the register)."""
        coarsest = {"birth_month": BIRTH_LEVELS[-1], "lsoa_code": AREA_LEVELS[-1],
                    "ethnic_category": ETHNICITY_LEVELS[-1]}
        return {c: v for c, v in sorted(self.precision.items()) if v != coarsest.get(c, DATE_LEVELS[-1])}

    def check_current(self, today: dt.date) -> None:
        if today > self.expires:
            raise ConfigError(f"project {self.project_id}: approval expired on {self.expires}",
                              file=str(self.source_file))
        if not self.active:
            raise ConfigError(f"project {self.project_id} is not active", file=str(self.source_file))

    def pseudonym_columns(self, table: str) -> list[str]:
        return [c for c in self.tables[table] if c in PSEUDONYM_FIELDS]

    def code_list_paths(self) -> list[Path]:
        base = self.source_file.parent if self.source_file else Path.cwd()
        return [(base / p).resolve() for p in (self.cohort.code_lists if self.cohort else [])]


def load_project(path: Path) -> Project:
    project = load_model(path, Project, "project")
    for code_list in project.code_list_paths():
        if not code_list.exists():
            raise ConfigError(f"cohort code list {code_list} does not exist", file=str(path))
    return project


def load_projects(folder: Path) -> list[Project]:
    """Every project in a folder, sorted by id; a repeated id is an error."""
    return load_folder(folder, load_project, "project_id", "project", "project id")
