from __future__ import annotations

import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.anatomy import Anatomy, fan_in_of


class Backwards(nn.Module):
    """Registered a, b, c; runs c, a, b."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 2)
        self.c = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(self.c(x))))


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.Linear(3, 3), nn.ReLU()))
        self.scale = nn.Parameter(torch.ones(3))  # owned by the root itself

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) * self.scale


def test_layers_are_modules_that_own_parameters() -> None:
    a = Anatomy.from_module(Nested())
    assert a.names == ["(root)", "block.0", "block.1.0"]
    assert a["block.1.0"].param_names == ["block.1.0.weight", "block.1.0.bias"]
    assert a["(root)"].param_names == ["scale"]
    assert a["block.0"].n_params == 2 * 3 + 3


def test_execution_order_comes_from_the_first_forward_pass() -> None:
    model = Backwards()
    assert Anatomy.from_module(model).names == ["a", "b", "c"]
    with gw.watch(model, every=1) as w:
        model(torch.randn(5, 3)).sum().backward()
        w.step()
    assert w.anatomy.names == ["c", "a", "b"]
    assert w.timeline.layers == ["c", "a", "b"]
    assert [layer.order for layer in w.anatomy.layers] == [0, 1, 2]


def test_layers_never_run_keep_registration_order_at_the_end() -> None:
    a = Anatomy.from_module(Backwards())
    a.reorder(["b"])
    assert a.names == ["b", "a", "c"]
    assert a["a"].order is None


def test_shared_parameters_are_measured_once_at_their_first_owner() -> None:
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = nn.Sequential(emb, head)
    a = Anatomy.from_module(model)
    assert a.names == ["0"]
    assert a["0"].tied == ["1.weight"]
    assert len(a.parameters_of("0")) == 1


def test_a_tied_head_that_runs_last_gives_the_models_outputs() -> None:
    import torch

    import gradwatch as gw
    from gradwatch.detect.loss import output_classes

    class TiedLM(nn.Module):  # an embedding whose weight the output head shares, as in GPT-2
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(50, 8)
            self.body = nn.Linear(8, 8)
            self.head = nn.Linear(8, 50, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.tanh(self.body(self.emb(x))))

    model = TiedLM()
    a = Anatomy.from_module(model)
    assert a["emb"].extra["tied_uses"] == {"head": 50}
    assert output_classes(a) == 8  # before a forward: the last own layer, `body`
    with gw.watch(model) as w:
        loss = nn.functional.cross_entropy(model(torch.randint(0, 50, (4, 6))).flatten(0, 1), torch.randint(0, 50, (24,)))
        loss.backward()
        w.step(loss=loss)
        assert w.anatomy["emb"].extra["tied_head"] == 50
        assert output_classes(w.anatomy) == 50
        # the same from the log's anatomy
        assert output_classes(Anatomy.from_dict(w.anatomy.to_dict())) == 50
    # a tied use that does not run last (weight sharing inside the body) is no head
    a = Anatomy.from_module(model)
    a.reorder(["(root)", "emb", "head", "body"])
    assert "tied_head" not in a["emb"].extra and output_classes(a) == 8


def test_frozen_layers_are_marked_and_not_measured() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    model[0].requires_grad_(False)
    a = Anatomy.from_module(model)
    assert a["0"].frozen and not a["1"].frozen
    assert a.parameters_of("0") == []
    assert [layer.name for layer in a.trainable] == ["1"]


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (nn.Linear(7, 3), 7),
        (nn.Conv2d(4, 8, kernel_size=3), 4 * 9),
        (nn.Conv2d(4, 8, kernel_size=(3, 5), groups=2), 2 * 15),
        (nn.Conv1d(6, 2, kernel_size=4), 24),
        (nn.ConvTranspose2d(4, 6, kernel_size=3), 4 * 9),
        (nn.ConvTranspose2d(4, 6, kernel_size=4, stride=2), 4 * 4),  # (4 / 2)^2 positions per channel
        (nn.LSTM(5, 9), 5),
        (nn.Embedding(100, 16), 1),
        (nn.LayerNorm(8), None),
    ],
)
def test_fan_in(module: nn.Module, expected: int | None) -> None:
    assert fan_in_of(module) == expected


def test_a_model_without_parameters_is_refused() -> None:
    with pytest.raises(ValueError, match="no parameters"):
        Anatomy.from_module(nn.Sequential(nn.ReLU(), nn.Tanh()))


def test_a_non_module_is_refused_with_its_type() -> None:
    with pytest.raises(TypeError, match="expected a torch.nn.Module, got builtins.dict"):
        Anatomy.from_module({"not": "a model"})  # type: ignore[arg-type]


def test_round_trip_through_a_dict() -> None:
    a = Anatomy.from_module(Nested())
    b = Anatomy.from_dict(a.to_dict())
    assert b.names == a.names
    assert [layer.to_dict() for layer in b.layers] == [layer.to_dict() for layer in a.layers]


def test_a_layer_its_parent_uses_directly_follows_the_parent() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(8, 8)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.unused = nn.Linear(8, 8)
            self.out = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.inp(x)
            return self.out(self.attn(h, h, h)[0])

    model = Block()
    with gw.watch(model, every=1) as w:
        model(torch.randn(2, 3, 8)).sum().backward()
        w.step()
    # out_proj's weights are used inside MultiheadAttention's forward; it never runs itself.
    assert w.anatomy.names == ["inp", "attn", "attn.out_proj", "out", "unused"]
    assert w.anatomy["unused"].order is None and w.anatomy["attn.out_proj"].order == 2


def test_fan_in_of_hugging_face_conv1d_reads_its_transposed_weight() -> None:
    from transformers.pytorch_utils import Conv1D

    layer = Conv1D(12, 5)  # 5 inputs, 12 outputs; weight stored as (5, 12)
    a = Anatomy.from_module(nn.Sequential(layer))
    assert (a["0"].fan_in, a["0"].fan_out) == (5, 12)


def test_every_fact_the_map_writes_is_a_declared_layer_fact() -> None:
    """`LayerFacts` lists every key the map puts in `Layer.extra` (a fact written under a key
    it does not declare would escape the type check), with the type it declares."""
    from typing import get_type_hints

    from gradwatch.anatomy.map import LayerFacts
    from gradwatch.anatomy.structure import analyse

    class Net(nn.Module):  # a bit of everything: tied head, two layers reading one tensor, LSTM, RNN, norm
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(20, 8)
            self.q = nn.Linear(8, 8)
            self.k = nn.Linear(8, 8)
            self.norm = nn.LayerNorm(8)
            self.lstm = nn.LSTM(8, 8)
            self.rnn = nn.RNN(8, 8)
            self.head = nn.Linear(8, 20, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.emb(x)
            h = self.norm(h + self.q(h) * self.k(h))
            return self.head(torch.relu(self.rnn(self.lstm(h)[0])[0]))

    model = Net()
    x = torch.randint(0, 20, (5, 3))
    with gw.watch(model) as w:
        loss = model(x).pow(2).mean()
        loss.backward()
        w.step(loss=loss)
    structure = analyse(model, x, anatomy=w.anatomy)
    declared = get_type_hints(LayerFacts)
    written = {k: v for layer in structure.anatomy for k, v in layer.extra.items()}
    assert {"tied_head", "tied_uses", "input_group", "hh_radius", "keep_bias_max", "bias_ratio_q"} <= set(written)
    assert set(written) <= set(declared), set(written) - set(declared)


def test_weight_scale_reads_sigma_w2_and_names_a_layer_without_one() -> None:
    from gradwatch.anatomy.map import weight_scale
    from gradwatch.anatomy.structure import analyse

    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    anatomy = analyse(model).anatomy
    w = model[0].weight.detach().double()
    assert weight_scale(anatomy["0"]) == pytest.approx(4 * float(w.pow(2).mean()), rel=1e-6)
    with pytest.raises(gw.GradwatchValueError, match="layer '1' has no weight scale"):
        weight_scale(anatomy["1"])
