"""Plain against residual nets as depth grows: the degradation problem (He et al. 2016).

Both nets are the same stack of two-layer blocks (He-initialised Linear + BatchNorm,
ReLU); the residual one adds an identity shortcut around each block. Past some depth the
plain net trains worse, on its own training set, than a shallower one; the residual
net does not.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gradwatch.lab.data import accuracy, digits
from gradwatch.lab.demo import watched_digits
from gradwatch.lab.models import resnet_mlp
from gradwatch.lab.spec import TRAINS_ACC, Experiment, Observation, Setting, problems, steps

__all__ = ["DEGRADED_ACC", "RESIDUAL"]

#: Training accuracy below which a net has "degraded" (at or above TRAINS_ACC it "trains").
DEGRADED_ACC = 0.5


def _run(p: dict[str, Any], seed: int, quick: bool) -> Observation:
    data = digits(seed=seed)
    model = resnet_mlp(data.n_features, data.n_classes, blocks=p["blocks"], width=32,
                       residual=p["residual"], seed=seed)
    n = steps(p, quick, 200, 300)
    w = watched_digits(model, data, lr=0.01, steps=n, seed=seed)
    train_acc = accuracy(model, data.x_train, data.y_train)
    outcome = "trains" if train_acc >= TRAINS_ACC else "degrades" if train_acc < DEGRADED_ACC else "partial"
    d = w.diagnose()
    profile = [float(r.measured_grad_norm) if r.measured_grad_norm is not None else float("nan")
               for r in d.layers if r.type == "Linear"]
    ratio = profile[0] / profile[-1] if profile and np.isfinite(profile[0]) and profile[-1] else float("nan")
    return Observation(
        outcome=outcome,
        observed={"train_accuracy": train_acc, "test_accuracy": accuracy(model, data.x_test, data.y_test),
                  "weight_layers": 2 * p["blocks"] + 2, "first_to_last_grad": ratio, "steps": n},
        verdict=problems(d),
        series={"grad_norm": profile},
    )


_FAILS = ("vanishing_gradient", "flat_loss")
_VANISH = ("vanishing_gradient",)

RESIDUAL = Experiment(
    name="residual",
    title="Plain against residual nets as depth grows (MLP blocks of width 32 with BatchNorm, digits, SGD momentum 0.9)",
    citation="He, Zhang, Ren & Sun 2016; Balduzzi et al. 2017",
    claim="Adding layers to a plain net eventually makes it train worse, on its own training "
    "set, than a shallower one (degradation); the same net with identity shortcuts keeps training.",
    judge=f"training accuracy >= {TRAINS_ACC} is 'trains', < {DEGRADED_ACC} 'degrades'. gradwatch "
    "must report a problem (vanishing_gradient or flat_loss) for the degraded plain net and no "
    "vanishing_gradient for the nets that train.",
    settings=(
        Setting({"blocks": 2, "residual": False}, "trains", verdict_not=_VANISH, quick=True),
        Setting({"blocks": 24, "residual": False}, "degrades", verdict_has=_FAILS, quick=True),
        Setting({"blocks": 24, "residual": True}, "trains", verdict_not=_VANISH, quick=True),
        Setting({"blocks": 2, "residual": True}, "trains", verdict_not=_VANISH),
        Setting({"blocks": 8, "residual": False}, "trains", verdict_not=_VANISH),
        Setting({"blocks": 8, "residual": True}, "trains", verdict_not=_VANISH),
    ),
    run=_run,
    tiny={"steps": 5, "blocks": 2},
)
