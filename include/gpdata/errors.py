"""Errors that name where a problem is (practice, file, row) and why, never which patient."""

from __future__ import annotations


class GpdataError(Exception):
    """A failure an operator can act on. The message never carries a record's values."""

    def __init__(self, cause: str, *, practice: str | None = None, file: str | None = None,
                 row: int | None = None, stage: str | None = None) -> None:
        self.cause = cause
        self.practice = practice
        self.file = file
        self.row = row
        self.stage = stage
        super().__init__(self._message())

    def _message(self) -> str:
        parts = []
        if self.practice:
            parts.append(f"practice {self.practice}")
        if self.stage:
            parts.append(f"stage {self.stage}")
        if self.file:
            parts.append(f"file {self.file}")
        if self.row is not None:
            parts.append(f"row {self.row}")
        where = ": ".join(parts)
        return f"{where}: {self.cause}" if where else self.cause


class ConfigError(GpdataError):
    """A configuration file (feed, code set, key) is missing or wrong."""


class KeyConfigError(ConfigError):
    """The pseudonymisation key is missing, too short or not allowed in this mode."""


class SourceError(GpdataError):
    """A practice delivery cannot be read."""


class QualityGateError(GpdataError):
    """A batch failed its quality gate; nothing was committed for the practice."""
