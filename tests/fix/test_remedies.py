"""The remedies as an enum, and the Plan that collects them (fix/remedies.py)."""

from __future__ import annotations

import pytest

from gradwatch._errors import GradwatchValueError
from gradwatch.fix.remedies import APPLY_ORDER, PREFERENCE, TRANSFORMS, Plan, Remedy


def test_every_remedy_is_ranked_and_every_transform_is_applied():
    assert set(PREFERENCE) == set(Remedy)
    # lr is advice only: every other remedy has a transform, applied in one place of the order
    assert set(TRANSFORMS) == set(Remedy) - {Remedy.LR}
    assert set(APPLY_ORDER) == set(TRANSFORMS)


def test_plan_parses_names_into_remedies():
    plan = Plan()
    plan.add("activations", "vanishing_gradient: saturating activations", to="leaky_relu")
    # a swapped activation brings a forced re-initialisation with it
    assert plan.remedies == [Remedy.ACTIVATIONS, Remedy.INIT]
    assert all(type(r) is Remedy for r in plan.remedies)
    assert plan.options[Remedy.INIT] == {"force": True}
    assert plan.options[Remedy.ACTIVATIONS] == {"to": "leaky_relu"}
    assert "+".join(plan.remedies) == "activations+init"  # names print as their value


def test_plan_rejects_an_unknown_remedy_with_the_valid_ones():
    with pytest.raises(GradwatchValueError, match=r"'inits' is not a valid Remedy; choose one of: lr, init, activations"):
        Plan().add("inits", "a typo")


def test_lr_keeps_one_direction():
    plan = Plan()
    plan.add(Remedy.LR, "stalled_weights: updates too small", up=True)
    plan.add(Remedy.LR, "exploding_gradient: the step is too large")
    assert plan.options[Remedy.LR] == {}  # down wins over up
    plan.add(Remedy.LR, "stalled_weights: again", up=True)
    assert plan.reasons[Remedy.LR] == "exploding_gradient: the step is too large"
