from __future__ import annotations

import math
import os
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradwatch as gw
from gradwatch.lab.models import mlp


class Functional(nn.Module):
    """A plain chain whose activations are function calls."""

    def __init__(self, depth: int = 6, width: int = 64) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(32 if i == 0 else width, width) for i in range(depth))
        self.head = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16)) for _ in range(3))
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x))
        for b in self.blocks:
            h = h + b(h)
        return self.head(self.norm(h))


class Seq(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 12, batch_first=True)
        self.head = nn.Linear(12, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0][:, -1])


def autograd_norms(model: nn.Module, loss: torch.Tensor) -> dict[str, float]:
    """Per-module gradient norm over its own parameters, by plain autograd (the model's .grad untouched)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    sq: dict[str, float] = {}
    for (n, _), g in zip(named, grads, strict=True):
        owner = n.rsplit(".", 1)[0] if "." in n else "(root)"
        if g is not None:
            sq[owner] = sq.get(owner, 0.0) + float(g.double().pow(2).sum())
    return {k: math.sqrt(v) for k, v in sq.items()}


def test_functional_chain_measured_and_predicted() -> None:
    model = Functional()
    x = torch.randn(64, 32)
    d = gw.inspect(model, x)
    expected = autograd_norms(model, 0.5 * model(x).pow(2).sum())
    by = {r.name: r for r in d.layers}
    for name, norm in expected.items():
        assert by[name].measured_grad_norm == pytest.approx(norm, rel=1e-5)
        assert by[name].extra["activation"] == ("tanh" if name != "head" else None)
    assert by["head"].predicted_grad_norm == pytest.approx(by["head"].measured_grad_norm)
    # theory from the input and output gradient alone: within 0.3 decades of what autograd measured
    for r in d.layers:
        assert r.predicted_grad_norm is not None and r.measured_grad_norm is not None
        assert abs(math.log10(r.predicted_grad_norm / r.measured_grad_norm)) < 0.3, r.name
        assert r.extra["sigma_w2"] > 0
    assert "chi" in by["layers.0"].extra and d.healthy


def test_inspect_leaves_the_model_as_it_was() -> None:
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 2))
    model.eval()
    model[4].train()  # a mixed state must come back as it was
    x = torch.randn(32, 6)
    model(x).sum().backward()  # the user's own accumulated gradients
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    grad_objects = {n: p.grad for n, p in model.named_parameters()}
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    fired: list[int] = []
    model[0].register_forward_hook(lambda m, a, o: fired.append(1))
    rng = torch.get_rng_state()
    gw.inspect(model, x)
    assert fired  # the user's own hook still ran
    assert [m.training for m in model] == [False, False, False, False, True] and not model.training
    for n, p in model.named_parameters():
        assert torch.equal(p, params[n]) and p.grad is grad_objects[n] and torch.equal(p.grad, grads[n])
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n])
    assert torch.equal(torch.get_rng_state(), rng)
    assert [len(m._forward_hooks) for m in model] == [1, 0, 0, 0, 0]
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_residual_model() -> None:
    model = Residual()
    d = gw.inspect(model, torch.randn(16, 8))
    by = {r.name: r for r in d.layers}
    assert by["blocks.0.0"].extra["skip"] and not by["stem"].extra["skip"]
    assert all(r.predicted_grad_norm is None for r in d.layers)
    assert any("no theory prediction" in n for n in d.notes)
    assert all(r.measured_grad_norm and r.measured_grad_norm > 0 for r in d.layers)


def test_lstm_model() -> None:
    model = Seq()
    x = torch.randn(4, 20, 3)
    d = gw.inspect(model, x)
    expected = autograd_norms(model, 0.5 * model(x).pow(2).sum())
    by = {r.name: r for r in d.layers}
    assert by["lstm"].measured_grad_norm == pytest.approx(expected["lstm"], rel=1e-5)
    assert by["lstm"].extra["recurrent"] and by["lstm"].extra["seq_len"] == 20
    # an LSTM over 20 steps is no vanilla RNN; at PyTorch's biases (~0) its forget gate halves
    # the state per step, which `keep_gate_closed` blames (tests/explain/test_causes.py)
    assert [c.kind for c in d.causes] == [gw.CauseKind.KEEP_GATE_CLOSED]


def test_tiny_bert_with_keyword_inputs() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        vocab_size=100, max_position_embeddings=32,
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg)
    batch = {"input_ids": torch.randint(0, 100, (2, 7)), "labels": torch.tensor([0, 1])}
    model.eval()  # as from_pretrained leaves it; the probing pass still runs in training mode
    d = gw.inspect(model, batch)
    assert not model.training
    # inspect restored the RNG state, so a training-mode pass now draws the same dropout masks
    expected = autograd_norms(model.train(), model(**batch).loss)  # output.loss is the default loss
    by = {r.name: r for r in d.layers}
    assert by["classifier"].measured_grad_norm == pytest.approx(expected["classifier"], rel=1e-4)
    assert by["bert.encoder.layer.0.attention.self.query"].extra["skip"]
    assert not by["bert.pooler.dense"].extra["skip"] and by["bert.pooler.dense"].extra["activation"] == "tanh"
    assert any("structure read by trace" in n for n in d.notes)


def test_a_failing_model_names_the_module_and_its_input_shapes() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(5, 2))
    with pytest.raises(gw.ModelError, match=r"in module '2' \(Linear\), which received \(7, 4\) float32") as e:
        gw.inspect(model, torch.randn(7, 3))
    assert isinstance(e.value.__cause__, RuntimeError) and "mat1 and mat2" in str(e.value)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_deep_sigmoid_gets_a_warning_with_causes() -> None:
    model = mlp(16, 4, depth=16, width=32, activation="sigmoid", seed=0)
    x = torch.randn(64, 16)
    d = gw.inspect(model, x)
    (f,) = d.findings
    assert f.kind == gw.Kind.VANISHING_GRADIENT and f.severity == gw.Severity.WARNING
    expected = autograd_norms(model, 0.5 * model(x).pow(2).sum())
    assert f.evidence["ratio"] == pytest.approx(expected["0"] / expected["32"], rel=1e-4)
    assert f.evidence["ratio"] < 1e-6
    # theory saw it coming: its predicted ratio is within a decade of the measured one
    assert abs(math.log10(f.evidence["predicted_ratio"] / f.evidence["ratio"])) < 1
    assert f.causes[0] == "saturating_activations" == str(d.causes[0].kind)
    assert not gw.inspect(mlp(16, 4, depth=16, width=32, activation="relu", init="he", seed=0), x).findings


def test_bad_arguments_say_what_to_do() -> None:
    model = nn.Linear(3, 2)
    with pytest.raises(TypeError, match="example_input must be a tensor, a tuple"):
        gw.inspect(model, "x")
    with pytest.raises(TypeError, match="expects a torch.nn.Module"):
        gw.inspect("model", torch.randn(2, 3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scalar .* reduce it"):
        gw.inspect(model, torch.randn(2, 3), loss_fn=lambda y: y)
    with pytest.raises(ValueError, match="frozen"):
        gw.inspect(nn.Linear(3, 2).requires_grad_(False), torch.randn(2, 3))


def test_jacobian_note_and_custom_loss() -> None:
    model = mlp(5, 3, depth=3, width=16, activation="relu", init="he", seed=0)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    d = gw.inspect(model, (x,), loss_fn=lambda out: F.cross_entropy(out, y), jacobian=True)
    (note,) = [n for n in d.notes if "Jacobian" in n]
    assert "singular values over 4 samples" in note
    expected = autograd_norms(model, F.cross_entropy(model(x), y))
    assert np.isclose(d.layers[0].measured_grad_norm, expected["0"], rtol=1e-5)


def test_a_lazy_model_is_inspected_and_left_lazy() -> None:
    model = nn.Sequential(nn.LazyLinear(8), nn.Tanh(), nn.LazyLinear(8), nn.Tanh(), nn.LazyLinear(2))
    d = gw.inspect(model, torch.randn(4, 6))
    assert [r.name for r in d.layers] == ["0", "2", "4"]
    assert all(r.measured_grad_norm > 0 for r in d.layers)
    assert all(isinstance(model[i], nn.LazyLinear) for i in (0, 2, 4))


class Draws(nn.Module):
    """A model whose training-mode forward draws from every global generator: torch's
    (dropout), NumPy's (a mask, as SpecAugment draws) and Python's `random` (a jitter)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 16)
        self.b = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(torch.relu(self.a(x)), 0.2, self.training)
        if self.training:
            keep = torch.from_numpy(np.random.rand(h.shape[-1]) > 0.1).to(h.dtype)
            h = h * keep * (1.0 + 0.01 * random.random())
        return self.b(h)


def _random_states() -> tuple[torch.Tensor, tuple[object, ...], object]:
    """torch's, NumPy's (keys as a list, so that == compares them) and Python's generator states."""
    name, keys, *rest = np.random.get_state()
    return torch.get_rng_state(), (name, keys.tolist(), *rest), random.getstate()


def test_inspect_leaves_every_global_random_generator_as_found() -> None:
    # regression (zoo, Wav2Vec2): inspect restored torch's generator only, so a model drawing
    # from NumPy's or Python's advanced them, and trained differently after inspect
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    model, x = Draws(), torch.randn(8, 6)
    torch_state, numpy_state, python_state = _random_states()
    gw.inspect(model, x)
    after = _random_states()
    assert torch.equal(after[0], torch_state)
    assert after[1] == numpy_state
    assert after[2] == python_state


def _wav2vec2_losses(inspect_first: bool, steps: int = 3) -> list[float]:
    """A few AdamW steps of a small Wav2Vec2 classifier, SpecAugment on (it draws its masks
    from NumPy's global generator), from the same seeds."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    cfg = transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3), num_feat_extract_layers=2,
        num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, classifier_proj_size=8,
        num_labels=2, mask_time_prob=0.2, mask_time_length=4,
    )  # fmt: skip
    model = transformers.Wav2Vec2ForSequenceClassification(cfg)
    g = torch.Generator().manual_seed(1)
    batch = {"input_values": torch.randn(4, 800, generator=g), "labels": torch.tensor([0, 1, 0, 1])}
    if inspect_first:
        gw.inspect(model, batch)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_wav2vec2_trains_bit_identically_after_inspect() -> None:
    assert _wav2vec2_losses(inspect_first=True) == _wav2vec2_losses(inspect_first=False)
