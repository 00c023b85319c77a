"""The result types every stage shares: kinds, severities, findings, diagnoses, fixes.

They sit at the bottom of the package (nothing here imports another gradwatch module
but the errors), so detectors, explainers, the fixer and the reports can all use them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from gradwatch._errors import GradwatchValueError

__all__ = [
    "Cause",
    "CauseKind",
    "Change",
    "Diagnosis",
    "Finding",
    "FixResult",
    "Kind",
    "LayerReport",
    "Severity",
]


class _StrEnum(str, Enum):
    """`enum.StrEnum` for Python 3.10: members compare and print as their value."""

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def parse(cls, value: str | _StrEnum) -> Any:
        """Return the member for `value`, or raise an error that lists the valid choices."""
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise GradwatchValueError(
                f"{value!r} is not a valid {cls.__name__}; choose one of: {choices}"
            ) from None


class Kind(_StrEnum):
    """What a finding is about. The values are part of the public contract."""

    VANISHING_GRADIENT = "vanishing_gradient"
    EXPLODING_GRADIENT = "exploding_gradient"
    NONFINITE_GRADIENT = "nonfinite_gradient"
    TEMPORAL_VANISHING = "temporal_vanishing"
    DEAD_UNITS = "dead_units"
    SATURATED_UNITS = "saturated_units"
    FLAT_LOSS = "flat_loss"
    DIVERGING_LOSS = "diverging_loss"
    STALLED_WEIGHTS = "stalled_weights"
    CONSTANT_OUTPUT = "constant_output"


class Severity(_StrEnum):
    """How much a finding matters: `info` < `warning` < `error`."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return self.rank < other.rank

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return self.rank <= other.rank

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return self.rank > other.rank

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return self.rank >= other.rank


_SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.ERROR: 2}


def _json_number(x: float | None) -> float | str | None:
    """Finite floats stay numbers; NaN and infinities become strings so the result is strict JSON."""
    if x is None:
        return None
    x = float(x)
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


class CauseKind(_StrEnum):
    """Why gradients misbehave, as `gradwatch.explain` names it (ranked causes in a Diagnosis)."""

    SATURATING_ACTIVATIONS = "saturating_activations"  # sigmoid/tanh stacked deep
    DEPTH_WITHOUT_SKIP = "depth_without_skip"  # a long chain of layers with no residual path
    INIT_MISMATCH = "init_mismatch"  # the initialisation's gain does not suit the activation
    NO_NORMALIZATION = "no_normalization"  # deep and no BatchNorm/LayerNorm
    VANILLA_RNN_LONG_SEQUENCE = "vanilla_rnn_long_sequence"  # nn.RNN (or a tanh cell) over many steps
    KEEP_GATE_CLOSED = "keep_gate_closed"  # an LSTM/GRU whose keep-gate biases forget within the sequence
    STEP_SIZE_TOO_LARGE = "step_size_too_large"  # updates large next to the weights
    DEAD_RELU_BIAS = "dead_relu_bias"  # biases that switch ReLUs off from the start
    INPUT_NOT_STANDARDISED = "input_not_standardised"  # inputs far from mean 0, variance 1
    TARGET_OUT_OF_RANGE = "target_out_of_range"  # targets a bounded output activation cannot produce
    TARGET_SCALE = "target_scale"  # regression targets orders of magnitude beyond the output's scale
    NORM_GAIN_TOO_SMALL = "norm_gain_too_small"  # normalisation gains that leave the signal under their eps


@dataclass
class Cause:
    """A reason, read from the model's structure or from theory, behind one or more findings."""

    kind: CauseKind
    score: float  # how strongly it is implicated, 0..1; causes are listed best first
    layers: list[str]
    evidence: dict[str, float]
    message: str
    remedy: str = ""

    def __post_init__(self) -> None:
        self.kind = CauseKind.parse(self.kind)

    def __str__(self) -> str:
        message = self.message.rstrip()
        if self.remedy:
            end = "" if message.endswith((".", "!", "?")) else "."
            return f"{self.kind}: {message}{end} Fix: {self.remedy}"
        return f"{self.kind}: {message}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": str(self.kind),
            "score": self.score,
            "layers": list(self.layers),
            "evidence": {k: _json_number(v) for k, v in self.evidence.items()},
            "message": self.message,
            "remedy": self.remedy,
        }


@dataclass
class Finding:
    """One thing a detector found, with the evidence a person needs to check it."""

    kind: Kind
    severity: Severity
    layers: list[str]
    step: int | None
    evidence: dict[str, float]
    message: str
    causes: list[str] = field(default_factory=list)  # CauseKind values of the causes behind it

    def __post_init__(self) -> None:
        self.kind = Kind.parse(self.kind)
        self.severity = Severity.parse(self.severity)

    def __str__(self) -> str:
        where = f" at step {self.step}" if self.step is not None else ""
        return f"[{self.severity}] {self.kind}{where}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": str(self.kind),
            "severity": str(self.severity),
            "layers": list(self.layers),
            "step": self.step,
            "evidence": {k: _json_number(v) for k, v in self.evidence.items()},
            "message": self.message,
            "causes": list(self.causes),
        }


@dataclass
class LayerReport:
    """What is known about one layer (a module that owns parameters)."""

    name: str
    type: str
    measured_grad_norm: float | None = None
    predicted_grad_norm: float | None = None
    weight_norm: float | None = None
    update_ratio: float | None = None
    grad_zero_frac: float | None = None
    frozen: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float):
                d[k] = _json_number(v)
        d["extra"] = {
            k: (_json_number(v) if isinstance(v, float) else v) for k, v in self.extra.items()
        }
        return d


@dataclass
class Diagnosis:
    """The verdict on a model or a run: findings, per-layer reports, and whether it is healthy."""

    findings: list[Finding] = field(default_factory=list)
    layers: list[LayerReport] = field(default_factory=list)
    steps: int = 0
    notes: list[str] = field(default_factory=list)
    causes: list[Cause] = field(default_factory=list)
    #: Singular values of the input-output Jacobian (``gw.inspect(..., jacobian=True)``).
    jacobian: list[float] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """True when no finding is above `info`."""
        return all(f.severity <= Severity.INFO for f in self.findings)

    def by_kind(self, kind: Kind | str) -> list[Finding]:
        k = Kind.parse(kind)
        return [f for f in self.findings if f.kind == k]

    def __iter__(self) -> Iterator[Finding]:
        return iter(self.findings)

    def _repr_html_(self) -> str:
        """Jupyter's view: the HTML report's body with the gradient-flow figure."""
        from gradwatch.report.notebook import diagnosis_html  # the report stage, loaded on use

        return diagnosis_html(self)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "healthy": self.healthy,
            "steps": self.steps,
            "findings": [f.to_dict() for f in self.findings],
            "layers": [layer.to_dict() for layer in self.layers],
            "notes": list(self.notes),
            "causes": [c.to_dict() for c in self.causes],
        }
        if self.jacobian:
            d["jacobian"] = [_json_number(v) for v in self.jacobian]
        return d

    def __str__(self) -> str:
        lines: list[str] = []
        shown = [f for f in self.findings if f.severity > Severity.INFO]
        quiet = [f for f in self.findings if f.severity <= Severity.INFO]
        if self.healthy:
            lines.append(f"healthy: no gradient problem found ({self.steps} steps looked at)")
        else:
            lines.append(
                f"{len(shown)} problem{'s' if len(shown) != 1 else ''} found "
                f"({self.steps} steps looked at):"
            )
        for f in sorted(shown, key=lambda f: -f.severity.rank):
            lines.append(f"  {f}")
        for f in quiet:
            lines.append(f"  {f}")
        if self.causes:
            lines.append(
                "  risks in the model's structure:" if self.healthy else "  likely causes, most likely first:"
            )
            lines.extend(f"    - {c}" for c in self.causes[:3])
        measured = [r for r in self.layers if r.measured_grad_norm is not None]
        if measured:
            first, last = measured[0], measured[-1]
            lines.append(
                f"  gradient norm: {_fmt(first.measured_grad_norm)} at the first layer "
                f"({first.name}), {_fmt(last.measured_grad_norm)} at the last ({last.name})"
            )
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2e}"


@dataclass(frozen=True)
class Change:
    """One edit made to a model, printed as a single line a person understands."""

    kind: str
    target: str
    description: str
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.description}" + (f" ({self.reason})" if self.reason else "")

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class FixResult:
    """A repaired model, the changes made to it, and advice for what cannot live in the model.

    `advice` may hold `clip_grad_norm` (float) and `lr_scale` (float), and free-text
    `manual` instructions for causes that model surgery cannot reach.
    """

    model: Any
    changes: list[Change] = field(default_factory=list)
    advice: dict[str, Any] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def _repr_html_(self) -> str:
        """Jupyter's view: the changes and advice as a list."""
        from gradwatch.report.notebook import fix_html  # the report stage, loaded on use

        return fix_html(self)

    def __str__(self) -> str:
        """One line per change; a change repeated on many layers for the same reason is one line."""
        if not self.changes and not self.advice:
            return "no change needed"
        groups: dict[tuple[str, str, str], list[Change]] = {}
        for c in self.changes:
            # The same edit on another layer: same kind and reason, and the same words once
            # the layer's name and the numbers are taken out of the description.
            what = re.sub(r"[-+]?\d[\d.e+-]*", "#", c.description.replace(c.target, "", 1))
            groups.setdefault((c.kind, c.reason, what), []).append(c)
        lines: list[str] = []
        for group in groups.values():
            first = group[0]
            if len(group) <= 3:
                lines.extend(f"- {c}" for c in group)
                continue
            others = [c.target for c in group[1:]]
            shown = ", ".join(others[:6]) + (f", ... ({len(group)} layers in all)" if len(others) > 6 else "")
            reason = f" ({first.reason})" if first.reason else ""
            lines.append(f"- {first.description}{reason}; likewise on {shown}")
        for k, v in self.advice.items():
            if isinstance(v, list):
                lines.extend(f"- by hand: {item}" for item in v)
            else:
                lines.append(f"- advice: {k} = {v}")
        return "\n".join(lines)


def as_float_dict(values: Mapping[str, Any]) -> dict[str, float]:
    """Coerce evidence values to plain floats (numpy scalars and tensors included)."""
    return {k: float(v) for k, v in values.items()}
