"""`gw.load`: read a recorded run back from its JSONL log."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gradwatch.anatomy import Anatomy
from gradwatch.detect.thresholds import Thresholds
from gradwatch.record import Timeline, read_log
from gradwatch.types import Diagnosis


class Run:
    """A run read back from a log: its anatomy, its Timeline and its header.

    ``len(run)`` is the number of recording steps in the file.
    """

    def __init__(self, header: dict[str, Any], records: list[dict[str, Any]], path: Path) -> None:
        self.path = path
        self.header = header
        self.anatomy = Anatomy.from_dict(header.get("anatomy", {}))
        settings = header.get("settings", {})
        self.timeline = Timeline(
            layers=list(header.get("columns", [])),
            capacity=int(settings.get("capacity", 1024)),
            loss_capacity=int(settings.get("loss_capacity", 8192)),
        )
        for record in records:
            self.timeline.ingest(record)

    def __len__(self) -> int:
        return self.timeline.recorded

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.header.get("settings", {}))

    def diagnose(self, thresholds: Thresholds | None = None) -> Diagnosis:
        """The same Diagnosis the live watcher gave for the same records (and `thresholds`)."""
        from gradwatch.explain.link import judge

        return judge(self.timeline, self.anatomy, facts=self.header.get("structure"), thresholds=thresholds)

    def __repr__(self) -> str:
        return f"<Run {self.path}: {len(self)} records, {len(self.timeline.layers)} layers>"


def load(path: str | os.PathLike[str]) -> Run:
    """Read a gradwatch JSONL log.

    Raises `FileNotFoundError` if the file is missing and `ValueError` (a `LogFormatError`)
    naming the file and line if it is malformed anywhere but a cut-short last line.
    """
    p = Path(path)
    header, records = read_log(p)
    return Run(header, records, p)
