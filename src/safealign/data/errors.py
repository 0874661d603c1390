"""Errors and accounting for reading data: every problem names file, line, field and reason."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field

SURROGATE = re.compile("[\ud800-\udfff]")
"""Any lone surrogate: what surrogateescape makes of invalid UTF-8, or a decoded JSON "\\ud800" escape."""


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
    raw: str | bytes  # the line's bytes, or text that may hold surrogates (`surrogateescape`)

    def raw_record(self) -> dict[str, str]:
        """`{"raw": text}`; where the raw bytes are not valid UTF-8, also `raw_base64` with them exactly.

        `raw` is then the text with U+FFFD for each invalid byte, for reading; `raw_base64`
        restores the bytes as the file had them (a lone surrogate from a JSON escape that was
        already decoded comes back as its UTF-8 form, `surrogatepass`).
        """
        data = self.raw if isinstance(self.raw, bytes) else exact_bytes(self.raw)
        try:
            return {"raw": data.decode("utf-8")}
        except UnicodeDecodeError:
            return {"raw": data.decode("utf-8", "replace"), "raw_base64": base64.b64encode(data).decode("ascii")}

    def describe(self) -> str:
        """`file:line: field 'x': reason`, the one-line form used in messages."""
        where = f"{self.location}:{self.line}"
        if self.field == "-":
            return f"{where}: {self.reason}"
        return f"{where}: field {self.field!r}: {self.reason}"


def exact_bytes(text: str) -> bytes:
    """The bytes a text decoded with `surrogateescape` came from; other lone surrogates as `surrogatepass`."""
    if not SURROGATE.search(text):
        return text.encode("utf-8")
    out = bytearray()
    last = 0
    for match in SURROGATE.finditer(text):
        out += text[last : match.start()].encode("utf-8")
        code = ord(match.group())
        out += bytes([code - 0xDC00]) if 0xDC80 <= code <= 0xDCFF else match.group().encode("utf-8", "surrogatepass")
        last = match.end()
    out += text[last:].encode("utf-8")
    return bytes(out)


def printable(text: str) -> str:
    """`text` with any lone surrogate written as a `\\udXXX` escape, safe to encode as UTF-8."""
    return text if not SURROGATE.search(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(slots=True)
class LoadReport:
    """How many records were read, kept and rejected; read == kept + rejected + other_side always.

    `other_side`: valid records on the other side of a `%train=` / `%test=` split (not
    rejected, only not asked for); 0 for a whole source.
    """

    read: int = 0
    kept: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    duplicates: int = 0  # duplicates found (rejected only when de-duplicating)
    other_side: int = 0
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
        self.other_side += other.other_side
        self.formats.update(other.formats)

    def reasons(self) -> dict[str, int]:
        """Rejections counted by field and reason class (the text before any detail)."""
        counts: dict[str, int] = {}
        for r in self.rejections:
            key = f"{r.field}: {r.reason.split(' (')[0].split(':')[0]}"
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))
