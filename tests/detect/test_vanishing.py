from __future__ import annotations

import math

import pytest

from gradwatch import Kind, Severity
from gradwatch.detect import Thresholds, vanishing_gradient
from tests.detect._timelines import build, chain_anatomy, falling_loss, grads, slow_loss, stuck_loss

TH = Thresholds()
AN = chain_anatomy(4)
DEEP = [1e-9, 1e-6, 1e-3, 1.0]  # relative gradients, input side first


def test_fires_as_error_when_the_loss_is_stuck() -> None:
    tl = build(AN, 31, layers=lambda s: grads(4, DEEP), loss=stuck_loss())
    (f,) = vanishing_gradient(tl, AN, TH)
    assert f.kind == Kind.VANISHING_GRADIENT and f.severity == Severity.ERROR
    assert f.layers == ["0", "2"]  # below 1e-3 of the last layer; `4` sits exactly at it
    assert f.step == 0
    assert f.evidence["ratio_min"] == pytest.approx(1e-9)
    assert f.evidence["layers_below"] == 2.0
    # log10 ratios -9, -6, -3 at positions 0..2 and 0 at the reference: 3 decades per layer.
    assert f.evidence["decades_per_layer"] == pytest.approx(3.0)
    assert all(isinstance(v, float) for v in f.evidence.values())
    assert "layer `0` receives 1e-9 of the last layer's (`6`) gradient" in f.message
    assert "(chance for 10 classes)" in f.message


def test_first_step_is_where_it_began_to_hold_persistently() -> None:
    tl = build(AN, 31, layers=lambda s: grads(4, DEEP if s >= 100 else [1, 1, 1, 1]), loss=stuck_loss())
    (f,) = vanishing_gradient(tl, AN, TH)
    assert f.step == 100


def test_only_info_while_the_loss_improves() -> None:
    tl = build(AN, 31, layers=lambda s: grads(4, DEEP), loss=falling_loss())
    (f,) = vanishing_gradient(tl, AN, TH)
    assert f.severity == Severity.INFO
    assert "later layers carry the learning" in f.message


def test_a_warning_while_the_loss_improves_too_slowly_to_finish() -> None:
    tl = build(AN, 31, layers=lambda s: grads(4, DEEP), loss=slow_loss())
    (f,) = vanishing_gradient(tl, AN, TH)
    assert f.severity == Severity.WARNING
    assert "but slowly: at this pace it needs" in f.message and "carry the learning" not in f.message


def test_quiet_for_even_gradients_and_for_a_one_off_dip() -> None:
    even = build(AN, 31, layers=lambda s: grads(4, [0.3, 0.5, 0.8, 1.0]), loss=stuck_loss())
    assert vanishing_gradient(even, AN, TH) == []
    dip = build(AN, 31, layers=lambda s: grads(4, DEEP if s in (100, 110) else [1, 1, 1, 1]), loss=stuck_loss())
    assert vanishing_gradient(dip, AN, TH) == []


def test_zero_gradients_are_not_vanishing_ones() -> None:
    # Dead layers get exactly zero: that is the dead-unit detector's business.
    tl = build(AN, 31, layers=lambda s: grads(4, [0.0, 0.0, 0.0, 1.0]), loss=stuck_loss())
    assert vanishing_gradient(tl, AN, TH) == []


def test_a_sparse_embedding_is_judged_by_the_rows_it_touched() -> None:
    # 0.99 of the first layer's entries are exactly zero: its 1e-4 relative gradient is
    # 1e-3 over the touched rows, which is not below 1e-3.
    layers = grads(4, [1e-4, 1, 1, 1])
    layers["grad_zero_frac"] = [0.99, 0, 0, 0]
    tl = build(AN, 31, layers=lambda s: layers, loss=stuck_loss())
    assert vanishing_gradient(tl, AN, TH) == []


def test_without_losses_only_an_extreme_ratio_warns() -> None:
    extreme = build(AN, 5, layers=lambda s: grads(4, DEEP))
    assert vanishing_gradient(extreme, AN, TH)[0].severity == Severity.WARNING
    mild = build(AN, 5, layers=lambda s: grads(4, [1e-4, 1e-3, 1e-2, 1.0]))
    assert vanishing_gradient(mild, AN, TH)[0].severity == Severity.INFO


@pytest.mark.parametrize("records", [0, 1, 2])
def test_tolerates_short_or_empty_timelines(records: int) -> None:
    assert vanishing_gradient(build(AN, records, layers=lambda s: grads(4, DEEP)), AN, TH) == []


def test_tolerates_missing_and_nan_metrics() -> None:
    assert vanishing_gradient(build(AN, 10, loss=stuck_loss()), AN, TH) == []
    nan = build(AN, 10, layers=lambda s: grads(4, [math.nan] * 4))
    assert vanishing_gradient(nan, AN, TH) == []


def test_threshold_moves_the_verdict() -> None:
    tl = build(AN, 31, layers=lambda s: grads(4, [1e-4, 1, 1, 1]), loss=stuck_loss())
    assert vanishing_gradient(tl, AN, TH) != []
    assert vanishing_gradient(tl, AN, Thresholds(vanish_ratio=1e-5)) == []


def test_a_ratio_that_recovers_only_into_the_dead_band_stays_reported() -> None:
    # 1e-4 for 5 records, then 2e-3 (above the bar of 1e-3, within half a decade of it)
    tl = build(AN, 31, layers=lambda s: grads(4, [1e-4 if s < 50 else 2e-3, 0.1, 0.5, 1.0]), loss=stuck_loss())
    (f,) = vanishing_gradient(tl, AN, TH)
    assert f.step == 0 and f.layers == ["0"] and f.evidence["ratio_min"] == pytest.approx(2e-3)
    # recovered past 10**-2.5 ~ 3.2e-3: cleared
    tl = build(AN, 31, layers=lambda s: grads(4, [1e-4 if s < 50 else 5e-3, 0.1, 0.5, 1.0]), loss=stuck_loss())
    assert vanishing_gradient(tl, AN, TH) == []


def test_a_weak_layer_behind_a_healthy_earlier_one_is_not_vanishing_through_depth() -> None:
    # layer `2` is weak, but `0`, executed before it, gets a full share: the gradient got past
    tl = build(AN, 31, layers=lambda s: grads(4, [0.5, 1e-6, 0.5, 1.0]), loss=stuck_loss())
    assert vanishing_gradient(tl, AN, TH) == []
    # the layers in front of the first healthy one are named; those behind it are not
    tl = build(AN, 31, layers=lambda s: grads(4, [1e-7, 0.5, 1e-6, 1.0]), loss=stuck_loss())
    (f,) = vanishing_gradient(tl, AN, TH)
    assert f.layers == ["0"] and f.evidence["ratio_min"] == pytest.approx(1e-7)


def test_a_healthy_layer_reading_the_same_input_vouches_for_its_weak_siblings() -> None:
    # `0` and `2` read one tensor (a query and a value projection): the value's full share
    # shows the gradient reached that depth, so the query's weakness is its own
    an = chain_anatomy(4)
    for name in ("0", "2"):
        an[name].extra["input_group"] = 7
    weak_query = lambda s: grads(4, [1e-6, 0.5, 0.5, 1.0])  # noqa: E731
    assert vanishing_gradient(build(an, 31, layers=weak_query, loss=stuck_loss()), an, TH) == []
    # both weak: nothing vouches, the depth finding stands; so it does without the group
    both = build(an, 31, layers=lambda s: grads(4, [1e-6, 1e-6, 0.5, 1.0]), loss=stuck_loss())
    assert vanishing_gradient(both, an, TH)[0].layers == ["0", "2"]
    assert vanishing_gradient(build(AN, 31, layers=weak_query, loss=stuck_loss()), AN, TH)[0].layers == ["0"]


def test_the_watcher_groups_the_layers_that_read_one_tensor() -> None:
    import torch
    from torch import nn

    import gradwatch as gw

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(8, 8) for _ in range(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2), dim=-1)
            return self.o(a @ self.v(x))

    model = nn.Sequential(nn.Linear(4, 8), Attention(), nn.Linear(8, 2))
    with gw.watch(model, every=1) as w:
        model(torch.randn(3, 5, 4)).sum().backward()
        w.step()
    groups = {layer.name: layer.extra.get("input_group") for layer in w.anatomy.layers}
    assert groups["1.q"] == groups["1.k"] == groups["1.v"] is not None
    assert groups["0"] is None and groups["1.o"] is None and groups["2"] is None


def test_attention_at_initialisation_on_random_labels_is_a_flat_loss_not_vanishing() -> None:
    # Separate query/key projections (as in Hugging Face models) get gradients ~1e-5 of the
    # head's at initialisation: each is proportional to the other's small output. With a
    # loss stuck at chance (random labels), that must not read as vanishing through depth:
    # the embeddings, executed first, get a full share.
    transformers = pytest.importorskip("transformers")
    import torch

    import gradwatch as gw

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64, num_labels=4)
    model = transformers.DistilBertForSequenceClassification(cfg)
    ids, labels = torch.randint(0, 100, (512, 16)), torch.randint(0, 4, (512,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    with gw.watch(model, every=10) as w:
        for _ in range(150):
            j = torch.randint(0, 512, (32,))
            out = model(input_ids=ids[j], labels=labels[j])
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            w.step(loss=out.loss)
        d = w.diagnose()
        tl = w.timeline
        kinds = {f.kind for f in d.findings}
        assert Kind.FLAT_LOSS in kinds and Kind.VANISHING_GRADIENT not in kinds
        # the premise: a q/k projection really is below the bar, relative to its weights
        r = tl.layer_metric("grad_norm")[-1] / tl.layer_metric("weight_norm")[-1]
        share = {name: r[i] / r[tl.layers.index("classifier")] for i, name in enumerate(tl.layers)}
        assert min(v for n, v in share.items() if n.endswith(("q_lin", "k_lin"))) < TH.vanish_ratio
        assert share["distilbert.embeddings.word_embeddings"] > TH.vanish_ratio


def test_a_layer_tied_to_the_head_vouches_for_nothing() -> None:
    # `0` shares its weight with a later use (an input embedding tied to the output head):
    # its healthy share may come from the head's end, so the weak layer behind it counts
    an = chain_anatomy(4)
    an["0"].tied.append("head.weight")
    tl = build(an, 31, layers=lambda s: grads(4, [0.5, 1e-6, 0.5, 1.0]), loss=stuck_loss())
    (f,) = vanishing_gradient(tl, an, TH)
    assert f.layers == ["2"] and f.severity == Severity.ERROR
    # untied, the same numbers say the gradient got past `2`
    assert vanishing_gradient(build(AN, 31, layers=lambda s: grads(4, [0.5, 1e-6, 0.5, 1.0]), loss=stuck_loss()), AN, TH) == []


def test_a_vanishing_that_held_for_most_of_the_run_is_lost_time() -> None:
    # starved from step 0 to 190 of 300 (the episode ends where it no longer holds: 210), then the share recovers; the loss still falls slowly
    def early(s: int) -> dict[str, list[float]]:
        return grads(4, DEEP if s < 200 else [0.3, 0.5, 0.8, 1.0])

    (f,) = vanishing_gradient(build(AN, 31, layers=early, loss=falling_loss(rate=0.002)), AN, TH)
    assert f.severity == Severity.WARNING and f.layers == ["0", "2"] and f.step == 0
    assert f.evidence["ratio_during"] == pytest.approx(1e-9) and f.evidence["lost_share"] > 0.6
    assert "from step 0 to 210 (70% of the run)" in f.message and "before the gradient got through again" in f.message
    # cleared early (under half the run): nothing; a run that converged all the same: nothing
    short = lambda s: grads(4, DEEP if s < 100 else [0.3, 0.5, 0.8, 1.0])  # noqa: E731
    assert vanishing_gradient(build(AN, 31, layers=short, loss=falling_loss(rate=0.002)), AN, TH) == []
    assert vanishing_gradient(build(AN, 31, layers=early, loss=falling_loss(rate=0.1, floor=0.001)), AN, TH) == []
