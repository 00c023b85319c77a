from __future__ import annotations

import pytest
import torch
from torch import nn

from gradwatch import GradwatchValueError
from gradwatch.fix import activations
from tests.fix.zoo import AttrNet, binary_mlp, sigmoid_mlp


def test_hidden_sigmoids_become_relu_and_the_model_computes_relu() -> None:
    model = sigmoid_mlp()
    new, changes = activations.transform(model)
    assert [c.target for c in changes] == ["1", "3", "5"]
    assert all(isinstance(new[i], nn.ReLU) for i in (1, 3, 5))
    # the same weights, now through ReLU: compare with a hand-written forward pass
    x = torch.randn(4, 6)
    h = x
    for i in (0, 2, 4):
        h = torch.relu(model[i](h))
    assert torch.allclose(new(x), model[6](h))


def test_the_output_activation_is_kept() -> None:
    new, changes = activations.transform(binary_mlp())
    assert isinstance(new[5], nn.Sigmoid), "the final sigmoid shapes the prediction: keep it"
    assert {c.target for c in changes} == {"1", "3"}
    assert "Hardtanh" in changes[1].description


def test_named_attributes_of_a_custom_module_are_replaced_and_the_output_kept() -> None:
    new, changes = activations.transform(AttrNet())
    assert isinstance(new.act1, nn.ReLU) and isinstance(new.act2, nn.ReLU)
    assert isinstance(new.out, nn.Sigmoid)
    assert {c.target for c in changes} == {"act1", "act2"}


@pytest.mark.parametrize(("to", "cls"), [("leaky_relu", nn.LeakyReLU), ("gelu", nn.GELU), ("RELU", nn.ReLU)])
def test_replacement_choice(to: str, cls: type[nn.Module]) -> None:
    new, _ = activations.transform(sigmoid_mlp(), to=to)
    assert isinstance(new[1], cls)


def test_keep_leaves_named_modules_alone() -> None:
    new, changes = activations.transform(sigmoid_mlp(), keep={"3"})
    assert isinstance(new[3], nn.Sigmoid)
    assert {c.target for c in changes} == {"1", "5"}


def test_a_shared_activation_instance_is_replaced_everywhere() -> None:
    act = nn.Tanh()
    model = nn.Sequential(nn.Linear(3, 3), act, nn.Linear(3, 3), act, nn.Linear(3, 2))
    new, _ = activations.transform(model)
    assert isinstance(new[1], nn.ReLU) and isinstance(new[3], nn.ReLU)


def test_relu6_is_not_treated_as_saturating() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU6(), nn.Linear(3, 2))
    _, changes = activations.transform(model)
    assert changes == []


def test_bad_choice_lists_the_valid_ones() -> None:
    with pytest.raises(GradwatchValueError, match="relu, leaky_relu, gelu"):
        activations.transform(sigmoid_mlp(), to="swish")


class _FrozenEncoder(nn.Module):
    """A pretrained encoder kept frozen, and a trainable head on top."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(6, 8), nn.Sigmoid(), nn.Linear(8, 8), nn.Sigmoid()).requires_grad_(False)
        self.head = nn.Sequential(nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


@pytest.mark.parametrize("traced", [False, True], ids=["static", "traced"])
def test_activations_next_to_a_frozen_layer_are_kept(traced: bool) -> None:
    x = torch.randn(4, 6)
    new, changes = activations.transform(_FrozenEncoder(), example_input=x if traced else None)
    assert isinstance(new.encoder[1], nn.Sigmoid) and isinstance(new.encoder[3], nn.Sigmoid)
    assert [c.target for c in changes] == ["head.1"]
    # the other side: an activation feeding a frozen layer was what that layer was trained on
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    model[4].requires_grad_(False)
    _, changes = activations.transform(model, example_input=x if traced else None)
    assert [c.target for c in changes] == ["1"]


def test_with_an_example_input_only_activations_that_ran_are_swapped() -> None:
    class Unused(nn.Module):  # registers a Sigmoid but calls torch.sigmoid instead
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.sigmoid, self.fc2 = nn.Linear(6, 8), nn.Sigmoid(), nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.sigmoid(self.fc1(x)))

    new, changes = activations.transform(Unused(), example_input=torch.randn(4, 6))
    assert changes == [] and isinstance(new.sigmoid, nn.Sigmoid)
    # without one, registration order is all there is: the module looks hidden
    _, changes = activations.transform(Unused())
    assert [c.target for c in changes] == ["sigmoid"]


class _SqueezeExcite(nn.Module):
    """Tanh convolutions with a squeeze-and-excitation gate, and a SiLU written by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.act1 = nn.Conv2d(3, 8, 3, padding=1), nn.Tanh()
        self.conv2, self.act2 = nn.Conv2d(8, 8, 3, padding=1), nn.Tanh()
        self.squeeze, self.relu = nn.Linear(8, 2), nn.ReLU()
        self.excite, self.gate = nn.Linear(2, 8), nn.Sigmoid()
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        w = self.gate(self.excite(self.relu(self.squeeze(h.mean((2, 3))))))
        h = h * w[:, :, None, None]  # the gate scales each channel
        z = self.mix(h.mean((2, 3)))
        return self.head(z * torch.sigmoid(z))  # SiLU by hand: a gate too


def test_gates_are_kept_with_an_example_input() -> None:
    from gradwatch.anatomy.order import traced_order
    from gradwatch.fix import manual, norm

    torch.manual_seed(0)
    model, x = _SqueezeExcite(), torch.randn(2, 3, 6, 6)
    order = traced_order(model, x)
    assert order.gates() == {id(model.gate)}
    assert [op.fn for op in order.functions if op.gate] == ["sigmoid"]
    new, changes = activations.transform(model, example_input=x)
    assert sorted(c.target for c in changes) == ["act1", "act2"]  # the channel activations, not the gate
    assert isinstance(new.gate, nn.Sigmoid)
    assert manual.hidden_functional_activations(model, order) == []  # z * sigmoid(z) needs no swap
    _, norms = norm.transform(model, example_input=x)
    assert "gate" not in {c.target for c in norms}
    # without an example input the data flow is unknown: registration order decides (keep= exists for this)
    _, blind = activations.transform(model)
    assert "gate" in {c.target for c in blind}
    assert "gate" not in {c.target for c in activations.transform(model, keep={"gate"})[1]}


def test_a_shifted_tanh_gate_is_a_gate_and_a_tanh_times_a_gate_is_not() -> None:
    from gradwatch.anatomy.order import traced_order

    class Cell(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
            self.shifted, self.content, self.open = nn.Tanh(), nn.Tanh(), nn.Sigmoid()
            self.head = nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            g = 0.5 * (1 + self.shifted(self.a(x)))  # GELU's tanh form: a gate in [0, 1]
            h = self.open(self.c(x)) * self.content(self.b(x))  # an LSTM's o * tanh(c)
            return self.head(x * g + h)

    m = Cell()
    order = traced_order(m, torch.randn(3, 4))
    assert order.gates() == {id(m.shifted), id(m.open)}


def test_an_output_activation_returned_before_the_last_head_is_kept() -> None:
    from gradwatch.anatomy.order import traced_order
    from gradwatch.fix import manual

    class TwoHeads(nn.Module):
        """A trunk, an objectness head with a sigmoid, then a class head (a detector's layout)."""

        def __init__(self, functional: bool) -> None:
            super().__init__()
            self.trunk, self.hidden = nn.Linear(6, 8), nn.Sigmoid()
            self.obj, self.obj_act = nn.Linear(8, 1), nn.Sigmoid()
            self.cls = nn.Linear(8, 3)
            self.functional = functional

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            f = self.hidden(self.trunk(x))
            p = torch.sigmoid(self.obj(f)) if self.functional else self.obj_act(self.obj(f))
            return self.cls(f), p.squeeze(-1)  # returned through a view

    x = torch.randn(4, 6)
    model = TwoHeads(functional=False)
    new, changes = activations.transform(model, example_input=x)
    assert [c.target for c in changes] == ["hidden"]  # the objectness sigmoid stays: it is an output
    with torch.no_grad():
        p = new(x)[1]
    assert float(p.min()) >= 0 and float(p.max()) <= 1
    # without an example input only registration order is known: the sigmoid before the last head looks hidden
    assert "obj_act" in {c.target for c in activations.transform(model)[1]}
    functional = TwoHeads(functional=True)
    sites = manual.hidden_functional_activations(functional, traced_order(functional, x))
    assert sites == []  # the returned torch.sigmoid is an output, not a hidden activation to swap
