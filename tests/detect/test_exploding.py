from __future__ import annotations

import numpy as np
import pytest
import torch

import gradwatch as gw
from gradwatch import Kind, Severity
from gradwatch.detect import Thresholds, exploding_gradient
from tests.detect._timelines import build, chain_anatomy, falling_loss, grads, stuck_loss

TH = Thresholds()
AN = chain_anatomy(3)


def test_depth_amplification_with_a_stuck_loss_is_an_error() -> None:
    tl = build(AN, 31, layers=lambda s: grads(3, [5e3, 10.0, 1.0]), loss=stuck_loss())
    (f,) = exploding_gradient(tl, AN, TH)
    assert f.kind == Kind.EXPLODING_GRADIENT and f.severity == Severity.ERROR
    assert f.layers == ["0"] and f.step == 0
    assert f.evidence["ratio_max"] == pytest.approx(5e3)
    assert "layer `0` receives 5000 times the last layer's (`4`) gradient" in f.message


def test_warning_while_the_loss_falls_info_once_converged() -> None:
    layers = lambda s: grads(3, [5e3, 10.0, 1.0])  # noqa: E731
    improving = build(AN, 31, layers=layers, loss=falling_loss())
    assert exploding_gradient(improving, AN, TH)[0].severity == Severity.WARNING
    converged = build(AN, 31, layers=layers, loss=falling_loss(rate=0.1, floor=0.001))
    assert exploding_gradient(converged, AN, TH)[0].severity == Severity.INFO


def test_quiet_below_the_ratio_and_for_a_single_spike() -> None:
    assert exploding_gradient(build(AN, 31, layers=lambda s: grads(3, [50.0, 5.0, 1.0]), loss=stuck_loss()), AN, TH) == []
    spike = build(AN, 31, layers=lambda s: grads(3, [5e3 if s == 50 else 1.0, 1.0, 1.0]), loss=stuck_loss())
    assert exploding_gradient(spike, AN, TH) == []


def test_a_ratio_hovering_around_the_threshold_stays_reported_until_it_clearly_falls() -> None:
    # in the chaotic phase the ratio of a deep tanh net wanders around the bar: 150, 60, 150, ...
    def hovering(cut: int) -> object:
        return lambda s: grads(3, [(150.0 if (s // 10) % 2 == 0 or s < 30 else 60.0) if s < cut else 20.0, 5.0, 1.0])

    (f,) = exploding_gradient(build(AN, 30, layers=hovering(10**6), loss=stuck_loss()), AN, TH)
    assert f.step == 0 and f.layers == ["0"] and f.severity == Severity.ERROR
    # below 100 / 10**0.5 = 32 for good: cleared
    assert exploding_gradient(build(AN, 30, layers=hovering(200), loss=stuck_loss()), AN, TH) == []
    # the same values without an episode of 3 records above 100 first: never entered
    low = build(AN, 30, layers=lambda s: grads(3, [60.0, 5.0, 1.0]), loss=stuck_loss())
    assert exploding_gradient(low, AN, TH) == []
    # no dead band: the hovering ratio is not reported
    assert exploding_gradient(build(AN, 30, layers=hovering(10**6), loss=stuck_loss()), AN, Thresholds(release_decades=0.0)) == []


def test_through_time_from_the_gradient_profile() -> None:
    vec = [1e4] * 3 + [10.0] * 24 + [1.0] * 3  # the first steps get 1e4 x the last
    tl = build(AN, 31, layers=lambda s: grads(3, [1, 1, 1]), loss=stuck_loss(0.4),
               profiles=lambda s: {"grad_t/rnn": vec})  # fmt: skip
    (f,) = exploding_gradient(tl, AN, TH)
    assert f.layers == ["rnn"] and f.evidence["time_reach"] == pytest.approx(1e4)
    assert "back through time" in f.message


@pytest.mark.parametrize("records", [0, 1, 2])
def test_tolerates_short_timelines(records: int) -> None:
    assert exploding_gradient(build(AN, records, layers=lambda s: grads(3, [1e4, 1, 1])), AN, TH) == []


def test_a_layer_tied_to_the_head_is_not_evidence_of_growth_through_depth() -> None:
    # `0` shares its weight with the output head, so it also gets the head's gradient
    an = chain_anatomy(3)
    an["0"].tied.append("head.weight")
    tl = build(an, 31, layers=lambda s: grads(3, [5e3, 10.0, 1.0]), loss=stuck_loss())
    assert exploding_gradient(tl, an, TH) == []
    tl = build(an, 31, layers=lambda s: grads(3, [5e3, 5e3, 1.0]), loss=stuck_loss())  # `2` is not tied
    (f,) = exploding_gradient(tl, an, TH)
    assert f.layers == ["2"]


def test_one_outlier_layer_is_not_growth_through_depth() -> None:
    # an embedding initialised at std 1e-4 in front of a LayerNorm: its relative gradient is
    # 159x the head's because its weight is tiny; the layers between show no growth at all
    an = chain_anatomy(8)
    outlier = build(an, 31, layers=lambda s: grads(8, [159.0, 1.0, 1.2, 0.9, 1.1, 1.0, 0.8, 1.0]), loss=stuck_loss())
    assert exploding_gradient(outlier, an, TH) == []
    steady = build(an, 31, layers=lambda s: grads(8, [10 ** (2.2 - 0.3 * i) for i in range(7)] + [1.0]), loss=stuck_loss())
    assert exploding_gradient(steady, an, TH)[0].severity == Severity.ERROR


def _plain(n: int, skip: bool = False) -> object:
    an = chain_anatomy(n)
    for layer in an.layers:
        layer.extra.update(skip=skip, norm=None)
    return an


def test_a_plain_chain_growing_a_decade_from_initialisation_is_the_chaotic_phase() -> None:
    an = _plain(8)
    chaotic = [10 ** (0.25 * (6 - i)) * 0.5 for i in range(7)] + [1.0]  # 1.5 decades over the hidden layers
    (f,) = exploding_gradient(build(an, 31, layers=lambda s: grads(8, chaotic), loss=falling_loss()), an, TH)
    assert f.severity == Severity.WARNING and f.evidence["chaotic"] == 1.0
    assert f.evidence["gain_per_layer"] == pytest.approx(10**0.25) and f.layers[0] == "0"
    assert "the chaotic phase" in f.message and "1.78x per layer" in f.message
    converged = build(an, 31, layers=lambda s: grads(8, chaotic), loss=falling_loss(rate=0.1, floor=0.001))
    assert exploding_gradient(converged, an, TH)[0].severity == Severity.INFO
    # not from initialisation (a trend grown while learning), with skips, or under a decade: quiet
    later = build(an, 31, layers=lambda s: grads(8, chaotic if s >= 30 else [1.0] * 8), loss=falling_loss())
    assert exploding_gradient(later, an, TH) == []
    skips = _plain(8, skip=True)
    assert exploding_gradient(build(skips, 31, layers=lambda s: grads(8, chaotic), loss=falling_loss()), skips, TH) == []
    mild = [10 ** (0.1 * (6 - i)) for i in range(7)] + [1.0]
    assert exploding_gradient(build(an, 31, layers=lambda s: grads(8, mild), loss=falling_loss()), an, TH) == []


def test_rwkvs_tiny_embedding_is_not_read_as_an_explosion() -> None:
    # RWKV draws its embedding at std 1e-4 in front of a LayerNorm: relative to that weight the
    # embedding's gradient is ~100x the head's, with no growth along the layers between
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.RwkvConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, attention_hidden_size=32,
                                  intermediate_size=64, context_length=64)  # fmt: skip
    model = transformers.RwkvForCausalLM(cfg)
    assert float(model.rwkv.embeddings.weight.detach().std()) < 1e-3
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with gw.watch(model, every=4) as w:
        for _ in range(60):
            ids = 4 + (torch.randint(0, 24, (16, 1), generator=g) + torch.arange(16)) % 24  # a counting pattern
            loss = model(input_ids=ids, labels=ids).loss
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    d = w.diagnose()
    rel = w.timeline.layer_metric("grad_norm") / w.timeline.layer_metric("weight_norm")
    emb = w.timeline.layers.index("rwkv.embeddings")
    assert float(np.nanmedian(rel[:, emb] / rel[:, -1])) > 30  # the outlier is there...
    assert d.by_kind(Kind.EXPLODING_GRADIENT) == [] and d.healthy  # ...and is no explosion
