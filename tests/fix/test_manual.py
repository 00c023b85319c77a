from __future__ import annotations

import inspect

import torch
from torch import nn

import gradwatch as gw
from gradwatch.anatomy.order import order_of
from gradwatch.fix.manual import hidden_functional_activations
from gradwatch.types import Diagnosis, Finding
from tests.fix.zoo import FunctionalNet


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(x))  # a hidden activation written as a call


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Block()
        self.head = nn.Linear(6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.block(x)))  # the output activation: not advice


def _line_of(cls: type, text: str) -> int:
    lines, start = inspect.getsourcelines(cls.forward)
    return start + next(i for i, line in enumerate(lines) if text in line)


def _vanishing() -> Diagnosis:
    return Diagnosis(findings=[Finding("vanishing_gradient", "error", ["fc1"], 0, {}, "")])


def test_functional_sigmoid_advice_names_module_and_line_static_and_traced() -> None:
    model = FunctionalNet()
    for example in (None, torch.randn(4, 6)):
        manual = gw.fix(model, _vanishing(), example_input=example).advice["manual"]
        assert len(manual) == 2, manual
        first = _line_of(FunctionalNet, "torch.sigmoid(self.fc1(x))")
        assert "module `(root)`" in manual[0] and "FunctionalNet.forward" in manual[0]
        assert f"zoo.py:{first}" in manual[0] and f"zoo.py:{first + 1}" in manual[1]
        assert "torch.relu" in manual[0] and "tf.keras.layers.ReLU" in manual[0] and "he_normal" in manual[0]


def test_the_module_that_calls_is_named_and_the_output_activation_is_not_advice() -> None:
    model = Outer()
    for example in (None, torch.randn(4, 6)):
        sites = hidden_functional_activations(model, order_of(model, example))
        assert [(s.name, s.fn) for s in sites] == [("block", "tanh")]
        assert sites[0].line == _line_of(Block, "torch.tanh(self.fc(x))")


def test_the_traced_order_places_functional_calls_between_modules() -> None:
    order = order_of(FunctionalNet(), torch.randn(3, 6))
    assert [op.name if op.module is not None else op.fn for op in order.ops] == [
        "fc1", "sigmoid", "fc2", "sigmoid", "head",
    ]
    assert order.next_activation("fc1") is not None and order.next_activation("head") is None


class TanhCalls(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


def test_functional_tanh_at_the_wrong_scale_is_reached_by_reinitialising() -> None:
    # tanh has a critical initialisation, so no hand edit is needed: init reaches it
    result = gw.fix(TanhCalls(), _vanishing(), example_input=torch.randn(4, 6))
    assert {c.kind for c in result.changes} == {"init"}
    assert "manual" not in result.advice
    assert "for tanh" in result.changes[0].description
