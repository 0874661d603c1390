"""Errors and accounting for reading data: every problem names file, line, field and reason."""

from __future__ import annotations

from dataclasses import dataclass, field


class RecordError(ValueError):
    """A record (or raw line) is invalid; raised by parsers and adapters without location.

    The loader adds the location, so adapters only say which field and why.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class DataError(Exception):
    """Reading data failed; the message is meant for users and needs no traceback."""


@dataclass(slots=True)
class Rejection:
    """One rejected line: where it was, what was wrong, and the raw text (so nothing is lost)."""

    location: str  # file path, or hub dataset name
    line: int  # 1-based line (JSONL, CSV, JSON array element start) or row number
    field: str  # "-" when the line as a whole is unreadable
    reason: str
    raw: str

    def describe(self) -> str:
        """`file:line: field 'x': reason`, the one-line form used in messages."""
        where = f"{self.location}:{self.line}"
        if self.field == "-":
            return f"{where}: {self.reason}"
        return f"{where}: field {self.field!r}: {self.reason}"


@dataclass(slots=True)
class LoadReport:
    """How many records were read, kept and rejected; read == kept + rejected always."""

    read: int = 0
    kept: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    duplicates: int = 0  # duplicates found (rejected only when de-duplicating)
    formats: dict[str, str] = field(default_factory=dict)  # location -> format name

    @property
    def rejected(self) -> int:
        """Number of rejected lines."""
        return len(self.rejections)

    def merge(self, other: LoadReport) -> None:
        """Add the counts of `other` (another source of a mixture) to this report."""
        self.read += other.read
        self.kept += other.kept
        self.rejections.extend(other.rejections)
        self.duplicates += other.duplicates
        self.formats.update(other.formats)

    def reasons(self) -> dict[str, int]:
        """Rejections counted by field and reason class (the text before any detail)."""
        counts: dict[str, int] = {}
        for r in self.rejections:
            key = f"{r.field}: {r.reason.split(' (')[0].split(':')[0]}"
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))
