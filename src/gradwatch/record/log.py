"""The JSONL log: one header line, then one line per recording step, each flushed.

Strict JSON throughout: NaN and infinities are written as the strings ``"nan"``,
``"inf"`` and ``"-inf"`` and read back as floats. A process killed mid-write leaves at
most its last line cut short; `read_log` drops such a line and rejects any other damage
with an error that names the file and line. The schema is in docs/log-format.md.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from gradwatch._errors import LogFormatError

_orjson: Any
try:  # optional (the `report` extra): parses a log's lines ~6x faster than the json module
    import orjson as _orjson
except ImportError:  # tests/record/test_log.py reads every log both ways
    _orjson = None

LOG_FORMAT = "gradwatch-log"
LOG_VERSION = 1

#: A value (after ``[``, ``,`` or ``:``; before ``,``, ``]`` or ``}``, so never a key) that is
#: exactly the string "nan", "inf" or "-inf": rewritten to the literal Python's json reads
#: as that float, so a line needs no second walk over its numbers after parsing.
_NONFINITE_VALUE = re.compile(r'([\[,:]\s*)"(nan|inf|-inf)"(?=\s*[,\]}])')
_LITERAL = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def log_header(
    settings: dict[str, Any], columns: list[str], anatomy: dict[str, Any], structure: dict[str, Any] | None
) -> dict[str, Any]:
    """The header line of a log (docs/log-format.md): format, versions, settings, the model."""
    import platform
    import time

    import torch

    from gradwatch._version import __version__

    return {
        "type": "header",
        "format": LOG_FORMAT,
        "version": LOG_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {"gradwatch": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "settings": settings,
        "columns": columns,
        "anatomy": anatomy,
        "structure": structure,
    }


def _encode(x: Any) -> Any:
    if isinstance(x, float):
        if math.isfinite(x):
            return x
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: _encode(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_encode(v) for v in x]
    return x


class JsonlLog:
    """Appends records to a file, one JSON object per line, flushed after each line.

    Flushing hands each line to the operating system, so a killed process loses at
    most the line it was writing (not an fsync: a power cut can lose more).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise IsADirectoryError(f"log path {str(self.path)!r} is a directory; give a file name")
        if not self.path.parent.exists():
            raise FileNotFoundError(
                f"cannot create log {str(self.path)!r}: folder {str(self.path.parent)!r} does not exist"
            )
        self._file: IO[str] | None = open(self.path, "w", encoding="utf-8")
        self.lines = 0

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            raise ValueError(f"log {str(self.path)!r} is closed")
        self._file.write(json.dumps(_encode(record), separators=(",", ":")) + "\n")
        self._file.flush()
        self.lines += 1

    @property
    def closed(self) -> bool:
        return self._file is None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _parse(line: str) -> Any:
    """One line as Python objects, the strings "nan", "inf" and "-inf" in value position read
    as floats. Lines holding none of them (nearly all) go to orjson when it is installed."""
    if _orjson is not None and '"nan"' not in line and 'inf"' not in line:
        try:
            return _orjson.loads(line)
        except _orjson.JSONDecodeError:
            pass  # the json module's parse below names what is wrong
    return json.loads(_NONFINITE_VALUE.sub(lambda m: m.group(1) + _LITERAL[m.group(2)], line))


def iter_log(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, record)`` for every complete line of a log."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such gradwatch log: {str(p)!r}")
    with open(p, encoding="utf-8") as f:
        lines = f.readlines()
    for i, line in enumerate(lines, start=1):
        last = i == len(lines)
        if not line.strip():
            continue
        try:
            obj = _parse(line)
        except json.JSONDecodeError as e:
            if last and not line.endswith("\n"):
                return  # cut short by a killed process: everything before it stands
            raise LogFormatError(f"{p}:{i}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or "type" not in obj:
            raise LogFormatError(f"{p}:{i}: expected a JSON object with a 'type' field")
        yield i, obj


def read_log(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read a log: its header and its records (in file order)."""
    header: dict[str, Any] | None = None
    records: list[dict[str, Any]] = []
    for i, obj in iter_log(path):
        if header is None:
            if obj.get("type") != "header" or obj.get("format") != LOG_FORMAT:
                raise LogFormatError(
                    f"{path}:{i}: the first line is not a gradwatch log header "
                    f"(expected type 'header' and format {LOG_FORMAT!r})"
                )
            if int(obj.get("version", 0)) > LOG_VERSION:
                raise LogFormatError(
                    f"{path}:{i}: log format version {obj.get('version')} is newer than this "
                    f"gradwatch reads ({LOG_VERSION}); upgrade gradwatch"
                )
            header = obj
            continue
        kind = obj.get("type")
        if kind not in ("record", "losses", "note"):
            raise LogFormatError(f"{path}:{i}: unknown record type {kind!r}")
        if kind == "record" and not isinstance(obj.get("step"), int):
            raise LogFormatError(f"{path}:{i}: a 'record' line needs an integer 'step'")
        records.append(obj)
    if header is None:
        raise LogFormatError(
            f"{path}: no header line; the file is empty or the run stopped before its "
            "first recording step"
        )
    return header, records
