"""gradwatch: find out why a PyTorch network is not learning when the cause is its gradients.

    import gradwatch as gw

    with gw.watch(model) as w:
        ...                       # your training loop, calling w.step(loss=loss) after backward
    print(w.diagnose())

`gw.report(w, html="report.html")` draws what it found (matplotlib and rich, the ``report``
extra). `import gradwatch` needs only torch and numpy. `w.diagnose(thresholds=gw.Thresholds(...))`
judges with other numbers than the defaults (docs/detectors.md lists them).
"""

from gradwatch._errors import (
    GradwatchError,
    GradwatchTypeError,
    GradwatchValueError,
    LogFormatError,
    ModelError,
    UsageError,
)
from gradwatch._version import __version__
from gradwatch.anatomy import Anatomy, Layer
from gradwatch.detect.thresholds import Thresholds
from gradwatch.explain import inspect
from gradwatch.fix import RepairResult, fix, repair
from gradwatch.record import Timeline
from gradwatch.recorder import Recorder
from gradwatch.report import Report, report
from gradwatch.run import Run, load
from gradwatch.types import (
    Cause,
    CauseKind,
    Change,
    Diagnosis,
    Finding,
    FixResult,
    Kind,
    LayerReport,
    Severity,
)
from gradwatch.watch import DEFAULT_EVERY, Watcher, every_n, watch

__all__ = [
    "DEFAULT_EVERY",
    "Anatomy",
    "Cause",
    "CauseKind",
    "Change",
    "Diagnosis",
    "Finding",
    "FixResult",
    "GradwatchError",
    "GradwatchTypeError",
    "GradwatchValueError",
    "Kind",
    "Layer",
    "LayerReport",
    "LogFormatError",
    "ModelError",
    "Recorder",
    "RepairResult",
    "Report",
    "Run",
    "Severity",
    "Thresholds",
    "Timeline",
    "UsageError",
    "Watcher",
    "__version__",
    "every_n",
    "fix",
    "inspect",
    "load",
    "repair",
    "report",
    "watch",
]
