"""Every transform over a zoo of small models: the invariants each must keep.

- the output's shape is unchanged, and parameters keep their device and dtype;
- the input model is untouched (unless inplace=True, which returns the same object);
- a second application changes nothing (idempotent);
- what a transform does not claim to change stays as it was.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gradwatch.fix import activations, init, norm, recurrent, residual
from tests.fix.zoo import ZOO

TRANSFORMS = {
    "activations": activations.transform,
    "init": init.transform,
    "norm": norm.transform,
    "residual": residual.transform,
    "recurrent": recurrent.transform,
}


def _state(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _out(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    m.eval()
    with torch.no_grad():
        return m(x)


@pytest.mark.parametrize("traced", [False, True], ids=["static", "traced"])
@pytest.mark.parametrize("tname", list(TRANSFORMS))
@pytest.mark.parametrize("zname", list(ZOO))
def test_transform_invariants(zname: str, tname: str, traced: bool) -> None:
    make, make_input = ZOO[zname]
    model, x = make(), make_input()
    transform = TRANSFORMS[tname]
    before_state, before_text = _state(model), str(model)
    dtypes = {p.dtype for p in model.parameters()}
    devices = {p.device for p in model.parameters()}
    ex = x if traced else None

    new, changes = transform(model, example_input=ex)

    assert new is not model
    assert _same_state(_state(model), before_state) and str(model) == before_text, "input model changed"
    assert _out(new, x).shape == _out(model, x).shape
    assert {p.dtype for p in new.parameters()} <= dtypes
    assert {p.device for p in new.parameters()} <= devices
    assert all(str(c) and "\n" not in str(c) for c in changes)

    again, changes2 = transform(new, example_input=ex)
    assert changes2 == [], f"not idempotent: {[str(c) for c in changes2]}"
    assert _same_state(_state(again), _state(new)) and str(again) == str(new)

    if not changes:  # a model a transform does not apply to is returned as it was
        assert _same_state(_state(new), before_state) and str(new) == before_text


@pytest.mark.parametrize("tname", list(TRANSFORMS))
def test_inplace_returns_the_same_object(tname: str) -> None:
    make, _make_input = ZOO["sigmoid_mlp"]
    model = make()
    new, _ = TRANSFORMS[tname](model, inplace=True)
    assert new is model


@pytest.mark.parametrize("zname", list(ZOO))
def test_each_transform_changes_only_what_it_says(zname: str) -> None:
    make, make_input = ZOO[zname]
    model, x = make(), make_input()
    state = _state(model)

    # activations: parameters and buffers are untouched; only activation modules differ
    new, changes = activations.transform(model, example_input=x)
    assert _same_state(_state(new), state)
    for c in changes:
        assert isinstance(new.get_submodule(c.target), nn.ReLU)

    # init: same names and shapes; values differ only inside the layers it names
    new, changes = init.transform(model, example_input=x)
    touched = {c.target for c in changes}
    after = _state(new)
    assert after.keys() == state.keys()
    for k in state:
        owner = k.rsplit(".", 1)[0]
        assert after[k].shape == state[k].shape
        if owner not in touched:
            assert torch.equal(after[k], state[k]), k

    # norm: every old parameter keeps its name and value; new entries are norm layers
    new, changes = norm.transform(model, example_input=x)
    after = _state(new)
    assert all(torch.equal(after[k], v) for k, v in state.items())
    for c in changes:
        inserted = new.get_submodule(c.target)
        assert isinstance(inserted, nn.Sequential)
        assert isinstance(inserted[0], nn.BatchNorm1d | nn.BatchNorm2d | nn.LayerNorm | nn.GroupNorm)

    # residual: the same parameter values (names shift inside wrapped Sequentials)
    new, _ = residual.transform(model, example_input=x)
    assert sorted(v.sum().item() for v in _state(new).values()) == pytest.approx(
        sorted(v.sum().item() for v in state.values())
    )

    # recurrent: only the replaced layers' parameters change
    new, changes = recurrent.transform(model, example_input=x)
    touched = {c.target for c in changes}
    for k, v in _state(new).items():
        if k.rsplit(".", 1)[0] not in touched:
            assert torch.equal(v, state[k]), k


def test_a_deep_copy_keeps_devices_with_meta_parameters() -> None:
    # Parameters on another device come back on it (meta: no memory, no compute).
    model = nn.Sequential(nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 2))
    model = copy.deepcopy(model).to("meta")
    for transform in (activations.transform, norm.transform, residual.transform):
        new, _ = transform(model)
        assert {p.device.type for p in new.parameters()} == {"meta"}
