from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradwatch.anatomy import Anatomy
from gradwatch.anatomy.activations import family, function_spec, module_spec, parse_spec
from gradwatch.anatomy.structure import Structure, analyse
from gradwatch.explain.theory import bias_dead_share
from gradwatch.lab.models import mlp


class Functional(nn.Module):
    """Activations as function calls and tensor methods, not modules."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(8, 8)
        self.c = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.b(F.leaky_relu(self.a(x), 0.2)).sigmoid())


class Residual(nn.Module):
    def __init__(self, blocks: int = 3, width: int = 8, branchy: bool = False) -> None:
        super().__init__()
        self.stem = nn.Linear(4, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width)) for _ in range(blocks)
        )
        self.head = nn.Linear(width, 2)
        self.branchy = branchy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        if self.branchy and bool(x.sum() > 1e9):  # data-dependent: torch.fx cannot trace this
            h = h * 2
        for block in self.blocks:
            h = torch.relu(h + block(h))
        return self.head(h)


class Attention(nn.Module):
    """Scores plus a broadcast mask: an addition that is not a skip connection."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(8, 8)
        self.k = nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.q(x) @ self.k(x).transpose(-1, -2) + mask[:, None, :]
        return self.out(scores.softmax(-1) @ x)


def test_mlp_facts_against_the_weights() -> None:
    model = mlp(5, 3, depth=3, width=16, activation="tanh", init="xavier", batchnorm=True, seed=0)
    s = analyse(model)
    assert s.method == "fx"
    first = s.anatomy["0"].extra
    assert first["activation"] == "tanh" and first["norm"] == "BatchNorm1d" and first["skip"] is False
    w, b = model[0].weight.detach().double(), model[0].bias.detach().double()
    assert first["sigma_w2"] == pytest.approx(5 * float(w.pow(2).mean()), rel=1e-5)
    # for zero-mean initialisations this is fan_in * Var(W)
    assert first["sigma_w2"] == pytest.approx(5 * float(w.var()), rel=0.15)
    assert first["sigma_b2"] == pytest.approx(float(b.pow(2).mean()), abs=1e-12)
    assert s.anatomy["9"].extra["activation"] is None  # the head
    assert s.anatomy["1"].extra["is_norm"] and s.anatomy["1"].extra["sigma_w2"] is None
    assert s.longest_plain_chain == 4 and s.chain == ["0", "3", "6", "9"]
    assert s.normalizations == ["1", "4", "7"]
    assert s.successors["0"] == ["3"]


def test_functional_activations_are_seen() -> None:
    s = analyse(Functional())
    assert s.anatomy["a"].extra["activation"] == "leaky_relu(negative_slope=0.2)"
    assert s.anatomy["b"].extra["activation"] == "sigmoid"
    assert s.anatomy["c"].extra["activation"] is None
    assert s.chain == ["a", "b", "c"]


@pytest.mark.parametrize("via_trace", [False, True])
def test_residual_blocks_are_bypassed_and_shorten_the_chain(via_trace: bool) -> None:
    model = Residual(blocks=4, branchy=via_trace)
    s = analyse(model, torch.randn(3, 4))
    assert s.method == ("trace" if via_trace else "fx")
    a = s.anatomy
    assert [a[f"blocks.{i}.{j}"].extra["skip"] for i in range(4) for j in (0, 2)] == [True] * 8
    assert not a["stem"].extra["skip"] and not a["head"].extra["skip"]
    assert s.skip_connections == 4
    # 9 weight layers in a row, but the gradient reaches any of them through at most 3
    assert s.longest_plain_chain == 3 and s.chain[-1] == "head" and len(s.chain) == 3
    assert a["blocks.0.0"].extra["activation"] == "relu"
    assert a["blocks.0.2"].extra["activation"] == "relu"  # through the addition: relu(h + f(h))


def test_untraceable_model_without_input_falls_back_and_says_so() -> None:
    s = analyse(Residual(branchy=True))
    assert s.method == "modules" and not s.sees_skips
    assert any("torch.fx could not trace" in n for n in s.notes)
    assert any("registration order" in n for n in s.notes)


def test_a_broadcast_mask_is_not_a_skip() -> None:
    s = analyse(Attention(), (torch.randn(2, 5, 8), torch.zeros(2, 5)))
    assert s.skip_connections == 0
    assert not any(layer.extra["skip"] for layer in s.anatomy.layers)


def test_recurrent_layers_and_their_sequence_length() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(3, 6, batch_first=True)
            self.cell = nn.GRUCell(6, 4)
            self.head = nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            o, _ = self.rnn(x)
            h = torch.zeros(x.shape[0], 4)
            for t in range(7):
                h = self.cell(o[:, t], h)
            return self.head(h)

    model = Net()
    s = analyse(model, torch.randn(2, 30, 3))
    rnn, cell = s.anatomy["rnn"].extra, s.anatomy["cell"].extra
    assert rnn["recurrent"] and rnn["seq_len"] == 30 and rnn["cell"] == "rnn" and rnn["activation"] == "tanh"
    assert cell["recurrent"] and cell["seq_len"] == 7 and cell["cell"] == "gru"
    w = model.rnn.weight_hh_l0.detach().double()
    assert rnn["hh_radius"] == pytest.approx(float(torch.linalg.eigvals(w).abs().max()), rel=1e-9)
    assert rnn["hh_norm"] == pytest.approx(float(torch.linalg.svdvals(w)[0]), rel=1e-9)
    assert s.recurrent == {"rnn": 30, "cell": 7}
    assert not s.anatomy["head"].extra["recurrent"] and s.anatomy["head"].extra["seq_len"] is None


def test_sequence_length_of_a_packed_sequence_and_of_a_cell_called_once() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(3, 5)
            self.cell = nn.RNNCell(5, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            packed = nn.utils.rnn.pack_padded_sequence(x, [9, 4], enforce_sorted=True)
            _, (h, _) = self.lstm(packed)
            return self.cell(h[0])

    s = analyse(Net(), torch.randn(9, 2, 3))  # time first; the longest of the two sequences is 9
    assert s.recurrent == {"lstm": 9, "cell": 1}
    assert analyse(nn.GRU(3, 4), torch.randn(11, 3)).recurrent == {"(root)": 11}  # unbatched


def test_analyse_leaves_the_model_as_it_was() -> None:
    class Branchy(nn.Sequential):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) if bool(x.sum() != 0) else x  # fx cannot trace this

    model = Branchy(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 2))
    model.train()
    stats = model[1].running_mean.clone(), model[1].running_var.clone()
    x = torch.randn(16, 4) + 3.0
    rng = torch.get_rng_state()
    assert analyse(model, x).method == "trace"  # a recorded forward pass on x
    assert model.training and all(m.training for m in model)
    assert torch.equal(model[1].running_mean, stats[0]) and torch.equal(model[1].running_var, stats[1])
    assert torch.equal(torch.get_rng_state(), rng)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_structure_round_trips_through_a_dict() -> None:
    model = Residual()
    a = Anatomy.from_module(model)
    s = analyse(model, anatomy=a)
    back = Structure.from_anatomy(Anatomy.from_dict(a.to_dict()), s.to_dict())
    assert back.to_dict() == s.to_dict()
    assert back.anatomy["blocks.1.0"].extra == a["blocks.1.0"].extra
    # without the model-level facts: a chain only where no layer is bypassed
    assert Structure.from_anatomy(Anatomy.from_dict(a.to_dict())).method == "none"
    plain = analyse(mlp(3, 2, depth=4, width=5)).anatomy
    rebuilt = Structure.from_anatomy(Anatomy.from_dict(plain.to_dict()))
    assert rebuilt.method == "anatomy" and rebuilt.chain == ["0", "2", "4", "6", "8"]


def test_analyse_rejects_what_is_not_a_module() -> None:
    with pytest.raises(TypeError, match="expects a torch.nn.Module"):
        analyse(lambda x: x)  # type: ignore[arg-type]


def test_bias_dead_share_reads_the_deciles() -> None:
    q = [-5.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]  # b/||W|| deciles 10%..90%
    assert bias_dead_share(q, 1.0, 3.0) == pytest.approx(0.3)  # b/||W|| < -3
    assert bias_dead_share(q, 0.5, 3.0) == pytest.approx(0.45)  # b/||W|| < -1.5
    assert bias_dead_share(q, 10.0, 3.0) == 0.0
    assert bias_dead_share([-9.0] * 9, 1.0, 3.0) == 1.0


def test_activation_specs() -> None:
    assert module_spec(nn.LeakyReLU(0.3)) == "leaky_relu(negative_slope=0.3)"
    assert module_spec(nn.GELU(approximate="tanh")) == "gelu(approximate=tanh)"
    assert module_spec(nn.GELU()) == "gelu" and module_spec(nn.Linear(2, 2)) is None
    assert function_spec("leaky_relu", (0.2,)) == "leaky_relu(negative_slope=0.2)"
    assert function_spec("sigmoid_") == "sigmoid" and function_spec("matmul") is None
    assert function_spec("elu", (), {"alpha": 0.5}) == "elu(alpha=0.5)"
    assert parse_spec("elu(alpha=0.5)") == ("elu", {"alpha": 0.5})
    assert family("tanh") == "saturating" and family("relu6") == "relu" and family(None) == "linear"
    with pytest.raises(ValueError, match="not an activation spec"):
        parse_spec("relu(")
    assert math.isclose(parse_spec(module_spec(nn.Softplus(beta=2.0)) or "")[1]["beta"], 2.0)


def test_a_hardtanh_from_0_is_a_clipped_relu() -> None:
    # ReLU6 written any way is one spec, of the relu family (the activation probes measure
    # dead units for it, not saturation: tests/probes/test_activations.py)
    assert module_spec(nn.ReLU6()) == module_spec(nn.Hardtanh(0, 6)) == function_spec("hardtanh", (0.0, 6.0)) == "relu6"
    assert function_spec("hardtanh", (), {"min_val": 0, "max_val": 6}) == "relu6"
    assert family(function_spec("hardtanh", (0.0, 1.0))) == "relu"
    assert function_spec("hardtanh") == "hardtanh" and family("hardtanh") == "saturating"
    assert family(function_spec("hardtanh", (-2.0, 2.0))) == "saturating"
