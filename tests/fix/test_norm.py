from __future__ import annotations

import pytest
import torch
from torch import nn

from gradwatch import GradwatchValueError
from gradwatch.fix import norm
from tests.fix.zoo import AttrNet, SeqMLP, binary_mlp, conv_net, sigmoid_mlp


def test_batchnorm_between_linear_and_activation_with_a_batch_input() -> None:
    model = sigmoid_mlp()
    new, changes = norm.transform(model, example_input=torch.randn(8, 6))
    assert [c.target for c in changes] == ["1", "3", "5"]
    for i in (1, 3, 5):
        bn, act = new[i]
        assert isinstance(bn, nn.BatchNorm1d) and bn.num_features == 8 and isinstance(act, nn.Sigmoid)
    # parametric layers keep their names
    assert new[0] is not model[0] and torch.equal(new[0].weight, model[0].weight)


def test_without_an_example_input_a_linear_gets_layernorm() -> None:
    new, _ = norm.transform(sigmoid_mlp())
    assert isinstance(new[1][0], nn.LayerNorm)


def test_sequences_and_batch_of_one_get_layernorm() -> None:
    new, changes = norm.transform(SeqMLP(), example_input=torch.randn(4, 7, 4))
    assert len(changes) == 2
    assert isinstance(new.body[1][0], nn.LayerNorm)
    new, _ = norm.transform(sigmoid_mlp(), example_input=torch.randn(1, 6))
    assert isinstance(new[1][0], nn.LayerNorm)


def test_conv_gets_batchnorm2d_or_groupnorm() -> None:
    new, changes = norm.transform(conv_net(), example_input=torch.randn(4, 1, 6, 6))
    assert len(changes) == 3 and isinstance(new[1][0], nn.BatchNorm2d)
    new, _ = norm.transform(conv_net(), kind="layer")
    assert isinstance(new[1][0], nn.GroupNorm) and new[1][0].num_groups == 1


def test_output_activation_gets_no_norm() -> None:
    new, changes = norm.transform(binary_mlp(), example_input=torch.randn(4, 6))
    assert {c.target for c in changes} == {"1", "3"}
    assert isinstance(new[5], nn.Sigmoid)


def test_custom_modules_need_a_forward_pass() -> None:
    _, changes = norm.transform(AttrNet())
    assert changes == []  # order of attributes alone is not trusted for insertion
    new, changes = norm.transform(AttrNet(), example_input=torch.randn(4, 6))
    assert {c.target for c in changes} == {"act1", "act2"}
    assert isinstance(new.act1[0], nn.BatchNorm1d)


def test_an_activation_used_twice_is_not_wrapped() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.act = nn.Linear(3, 4), nn.Linear(4, 5), nn.Tanh()
            self.head = nn.Linear(5, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.act(self.b(self.act(self.a(x)))))

    _, changes = norm.transform(Twice(), example_input=torch.randn(4, 3))
    assert changes == []


def test_bad_kind() -> None:
    with pytest.raises(GradwatchValueError, match="auto, batch, layer"):
        norm.transform(sigmoid_mlp(), kind="instance")


class _Reshaped(nn.Module):
    """A Linear whose output is reshaped, or joined to another tensor, before its activation."""

    def __init__(self, between: str) -> None:
        super().__init__()
        self.between = between
        self.fc, self.act, self.head = nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.between == "view":
            h = self.conv(self.act(h.view(-1, 4, 2, 2))).flatten(1)
        elif self.between == "cat":
            h = self.act(torch.cat([h[:, :8], h[:, 8:] * 2], dim=1))
        else:
            h = self.act(h)
        return self.head(h)


@pytest.mark.parametrize("between", ["view", "cat"])
def test_no_norm_where_the_activation_does_not_take_the_layers_output(between: str) -> None:
    x = torch.randn(4, 6)
    new, changes = norm.transform(_Reshaped(between), example_input=x)
    assert changes == []
    assert new(x).shape == (4, 2)


def test_a_norm_goes_where_the_activation_takes_the_layers_output() -> None:
    x = torch.randn(4, 6)
    new, changes = norm.transform(_Reshaped("direct"), example_input=x)
    assert [c.target for c in changes] == ["act"]
    assert isinstance(new.act[0], nn.BatchNorm1d) and new.act[0].num_features == 16
    assert new(x).shape == (4, 2)


def test_an_unbatched_convolution_gets_no_norm() -> None:
    model = nn.Sequential(nn.Conv1d(3, 4, 3, padding=1), nn.Tanh(), nn.Conv1d(4, 4, 3, padding=1), nn.Tanh(), nn.Flatten(0))
    x = torch.randn(3, 5)  # (channels, length): no batch dimension, which no norm layer accepts
    new, changes = norm.transform(model, example_input=x)
    assert changes == []
    assert new(x).shape == (20,)


def test_a_block_reused_across_depth_gets_a_per_sample_norm() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Sequential(nn.Linear(8, 8), nn.Tanh())
            self.head = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for _ in range(4):
                x = self.block(x)  # one set of weights at four depths
            return self.head(x)

    x = torch.randn(16, 8)
    new, changes = norm.transform(Shared(), example_input=x)
    assert new(x).shape == (16, 2)
    assert [c.description for c in changes] == ["block.1: inserted LayerNorm(8) between block.0 and its Tanh"]
    # used once, the same block gets BatchNorm
    once, _ = norm.transform(nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2)), example_input=x)
    assert isinstance(once[1][0], nn.BatchNorm1d)
