"""Run parameters (``dag_run.conf``) of the extraction DAG, validated strictly before anything uses them.

A run may be triggered with a small JSON document. Only these keys are accepted:

* ``practices``: ODS practice codes to run (one capital letter, five digits), at most ``MAX_PRACTICES``,
  no repeats; absent or empty means every active feed;
* ``force``: re-extract even a delivery that was already loaded (default false).

Anything else fails: an unknown key, a wrong type, a path (``../``), a shell metacharacter, an SQL
fragment, an over-long value. Values are checked against allow-list patterns, never cleaned up, so a
value that passes is safe to use in a path, an SQL literal or a log line, and nothing is ever passed to a
shell. Errors name the field and the rule, never the value given (a conf can carry anything, even an
NHS number typed into the wrong box).

``JSON_SCHEMA`` is the same contract for Airflow's ``Param`` (the trigger form and the API refuse a run
that breaks it); the library model below also refuses unknown keys, which Airflow's Params let through.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from gpdata.errors import ConfigError

ODS_PATTERN = r"^[A-Z][0-9]{5}$"
MAX_PRACTICES = 1024  # Airflow's [core] max_map_length
KEYS = ("practices", "force")
_SAFE_NAME = re.compile(r"^[a-z_]{1,40}(\.[0-9]{1,4})?$")

OdsCode = Annotated[str, StringConstraints(pattern=ODS_PATTERN, min_length=6, max_length=6)]

JSON_SCHEMA: dict[str, dict[str, Any]] = {
    "practices": {
        "type": "array", "items": {"type": "string", "pattern": ODS_PATTERN, "minLength": 6, "maxLength": 6},
        "maxItems": MAX_PRACTICES, "uniqueItems": True,
        "title": "Practices",
        "description": "ODS codes of the practices to run (e.g. A81001); empty runs every active feed",
    },
    "force": {
        "type": "boolean",
        "title": "Force",
        "description": "Extract again even if the delivery was already loaded",
    },
}


class RunConf(BaseModel):
    """The validated ``dag_run.conf`` of an extraction run."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    practices: list[OdsCode] = Field(default_factory=list, max_length=MAX_PRACTICES)
    force: bool = False

    @field_validator("practices")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("repeats a practice")
        return value

    def select(self, ods_codes: list[str]) -> list[str]:
        """The practices of this run among the active feeds' codes (all of them when none was asked for).
        A requested practice with no active feed is an error, not a silent skip."""
        if not self.practices:
            return list(ods_codes)
        unknown = sorted(set(self.practices) - set(ods_codes))
        if unknown:
            raise ConfigError(f"dag_run.conf field 'practices': no active feed for {', '.join(unknown)}")
        return [c for c in ods_codes if c in set(self.practices)]


def _rule(err: dict) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown field (allowed: " + ", ".join(KEYS) + ")"
    if kind == "string_pattern_mismatch":
        return "must be an ODS practice code: one capital letter then five digits"
    if kind.endswith("_type") or kind == "model_type":
        return f"wrong type ({err['msg'].lower()})"
    if kind in ("too_long", "too_short", "string_too_long", "string_too_short"):
        return err["msg"].lower()
    return err["msg"].removeprefix("Value error, ").lower()


def validate(conf: Mapping[str, Any] | None) -> RunConf:
    """``dag_run.conf`` as a RunConf, or a ConfigError naming each bad field and its rule (never a value)."""
    if conf is None:
        return RunConf()
    if not isinstance(conf, Mapping):
        raise ConfigError("dag_run.conf must be a JSON object")
    try:
        return RunConf.model_validate(dict(conf))
    except ValidationError as exc:
        causes = []
        for err in exc.errors(include_input=False, include_url=False):
            where = ".".join(str(p) for p in err["loc"]) or "(conf)"
            if not _SAFE_NAME.match(where):  # a key is input too: echo it only if it is a plain name
                where = "(a name that is not a plain identifier)"
            causes.append(f"field '{where}': {_rule(err)}")
        raise ConfigError("dag_run.conf refused: " + "; ".join(causes)) from None
