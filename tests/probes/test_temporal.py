"""The gradient through time, against closed forms and the known behaviour of RNNs and LSTMs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch as gw


class LinearRNN(nn.Module):
    """h_t = W_hh h_{t-1} + W_ih x_t, written by hand as a loop; output c . h_T."""

    def __init__(self, n_in: int = 3, hidden: int = 5) -> None:
        super().__init__()
        self.w_ih = nn.Linear(n_in, hidden, bias=False)
        self.w_hh = nn.Linear(hidden, hidden, bias=False)
        self.out = nn.Linear(hidden, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.new_zeros(x.shape[0], self.w_hh.in_features)
        for t in range(x.shape[1]):
            h = self.w_hh(h) + self.w_ih(x[:, t])
        return self.out(h)


def test_a_hand_written_linear_rnn_matches_powers_of_w_hh_transposed() -> None:
    torch.manual_seed(0)
    model = LinearRNN().double()
    b, t_len = 4, 7
    x = torch.randn(b, t_len, 3, dtype=torch.float64)
    with gw.watch(model, every=1) as w:
        for _ in range(2):  # the loop is recognised in the first forward, measured from the second
            model.zero_grad()
            model(x).sum().backward()
            w.step()
    w_ih, w_hh, c = model.w_ih.weight.detach(), model.w_hh.weight.detach(), model.out.weight.detach()[0]
    # dL/dx_t = W_ih^T (W_hh^T)^(T-1-t) c for every sample (the map is linear), so the norm over
    # the batch is sqrt(B) times it. The input of the w_hh call at step t is h_{t-1}: (W_hh^T)^(T-t) c.
    expected_x = [np.sqrt(b) * float((w_ih.T @ torch.linalg.matrix_power(w_hh.T, t_len - 1 - t) @ c).norm()) for t in range(t_len)]
    expected_h = [np.sqrt(b) * float((torch.linalg.matrix_power(w_hh.T, t_len - t) @ c).norm()) for t in range(t_len)]
    (_, got_x), (_, got_h) = w.timeline.profiles.get("grad_t/w_ih")[-1], w.timeline.profiles.get("grad_t/w_hh")[-1]
    np.testing.assert_allclose(got_x, expected_x, rtol=1e-9)
    np.testing.assert_allclose(got_h, expected_h, rtol=1e-9)


class SeqModel(nn.Module):
    def __init__(self, rnn: nn.RNNBase) -> None:
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def _profile(rnn: nn.RNNBase, t_len: int = 60) -> np.ndarray:
    model = SeqModel(rnn)
    x = torch.randn(16, t_len, 8)
    with gw.watch(model, every=1) as w:
        model(x).pow(2).mean().backward()
        w.step()
    step, profile = w.timeline.profiles.get("grad_t/rnn")[-1]
    assert step == 0 and profile.shape == (t_len,)
    return profile


def test_a_tanh_rnn_forgets_and_an_lstm_with_forget_bias_one_remembers() -> None:
    torch.manual_seed(0)
    rnn = _profile(nn.RNN(8, 32, batch_first=True))
    lstm_module = nn.LSTM(8, 32, batch_first=True)
    with torch.no_grad():
        for name, p in lstm_module.named_parameters():
            if name.startswith("bias"):
                p.zero_()
                if name.startswith("bias_ih"):
                    p[32:64] = 1.0  # forget gate
    lstm = _profile(lstm_module)
    rnn_decay = rnn[0] / rnn[-1]
    lstm_decay = lstm[0] / lstm[-1]
    assert np.all(np.diff(np.log(rnn[-30:])) > 0)  # grows towards the end, step after step
    assert rnn_decay < 1e-6
    assert lstm_decay > 1e3 * rnn_decay


def test_cells_in_a_python_loop_give_a_profile_from_the_first_step() -> None:
    class CellLoop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = nn.GRUCell(3, 6)
            self.head = nn.Linear(6, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = x.new_zeros(x.shape[0], 6)
            for t in range(x.shape[1]):
                h = self.cell(x[:, t], h)
            return self.head(h)

    model = CellLoop()
    with gw.watch(model, every=1) as w:
        model(torch.randn(4, 9, 3)).sum().backward()
        w.step()
    step, profile = w.timeline.profiles.get("grad_t/cell")[0]
    assert step == 0 and profile.shape == (9,) and np.all(profile > 0)


def test_gate_statistics_match_a_step_by_step_recomputation() -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 6, num_layers=2, batch_first=True)
    model = SeqModel(lstm)
    x = torch.randn(5, 7, 4) * 3
    with gw.watch(model, every=1) as w:
        model(x).sum().backward()
        w.step()
    # Recompute every gate of both layers with an explicit loop over time.
    sat = {g: [] for g in ("input_gate", "forget_gate", "cell_gate", "output_gate")}
    deriv = {g: [] for g in sat}
    layer_in = x
    with torch.no_grad():
        for layer in range(2):
            w_ih, w_hh = getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"weight_hh_l{layer}")
            b = getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")
            h, c, outs = torch.zeros(5, 6), torch.zeros(5, 6), []
            for t in range(7):
                i, f, g, o = (layer_in[:, t] @ w_ih.T + h @ w_hh.T + b).chunk(4, dim=-1)
                i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
                for name, d, mx in (("input_gate", i * (1 - i), 0.25), ("forget_gate", f * (1 - f), 0.25), ("cell_gate", 1 - g * g, 1.0), ("output_gate", o * (1 - o), 0.25)):
                    sat[name].append((d < 0.01 * mx).double().reshape(-1))
                    deriv[name].append(d.double().reshape(-1))
                c = f * c + i * g
                h = o * torch.tanh(c)
                outs.append(h)
            layer_in = torch.stack(outs, dim=1)
    for gate in sat:
        assert w.timeline.records.column("act_sat_frac", f"rnn:{gate}")[0] == pytest.approx(float(torch.cat(sat[gate]).mean()), abs=1e-9)
        assert w.timeline.records.column("act_mean_deriv", f"rnn:{gate}")[0] == pytest.approx(float(torch.cat(deriv[gate]).mean()), rel=1e-5)
    assert w.timeline.sites["rnn:forget_gate"]["family"] == "gate"


def test_a_relu_rnns_dead_hidden_units_match_a_step_by_step_recomputation() -> None:
    torch.manual_seed(0)
    rnn = nn.RNN(3, 8, num_layers=2, nonlinearity="relu", batch_first=True)
    with torch.no_grad():
        rnn.bias_hh_l1[:4] = -50.0  # half the second layer's units never switch on
    model = SeqModel(rnn)
    x = torch.randn(6, 9, 3)
    with gw.watch(model, every=1) as w:
        model(x).sum().backward()
        w.step()
    peaks = []
    layer_in = x
    with torch.no_grad():
        for layer in range(2):
            w_ih, w_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
            b = getattr(rnn, f"bias_ih_l{layer}") + getattr(rnn, f"bias_hh_l{layer}")
            h, outs = torch.zeros(6, 8), []
            for t in range(9):
                h = torch.relu(layer_in[:, t] @ w_ih.T + h @ w_hh.T + b)
                outs.append(h)
            layer_in = torch.stack(outs, dim=1)
            peaks.append(layer_in.amax(dim=(0, 1)))
    for layer, peak in enumerate(peaks):
        dead = float((peak <= 0).double().mean())
        assert w.timeline.records.column("act_dead_frac", f"rnn:relu_l{layer}")[0] == pytest.approx(dead)
    assert float((peaks[1] <= 0).double().mean()) >= 0.5
    assert w.timeline.sites["rnn:relu_l1"]["family"] == "relu"  # units, not gates
    assert w.timeline.sites["rnn:relu_l1"]["units"] == 8


def _train(model: nn.Module, data: list[tuple[torch.Tensor, torch.Tensor]], watch: bool) -> list[torch.Tensor]:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    w = gw.watch(model, every=1) if watch else None
    for x, y in data:
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        if w is not None:
            w.step(loss=loss)
        opt.step()
    if w is not None:
        w.close()
        assert w.timeline.sites  # the probes really ran
        assert bool(w.timeline.profiles.names()) == any(isinstance(m, nn.RNNBase) for m in model.modules())
    return [p.detach().clone() for p in model.parameters()]


class EmbedGRU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.rnn = nn.GRU(4, 6, batch_first=True)
        self.head = nn.Linear(6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.rnn(self.emb(x))[0][:, -1]))


@pytest.mark.parametrize("kind", ["lstm on data", "gru after an embedding", "functional mlp"])
def test_weights_are_bit_identical_with_and_without_the_probes(kind: str) -> None:
    torch.manual_seed(0)
    if kind == "lstm on data":
        make = lambda: SeqModel(nn.LSTM(3, 5, batch_first=True))  # noqa: E731
        data = [(torch.randn(4, 6, 3), torch.randn(4, 1)) for _ in range(8)]
    elif kind == "gru after an embedding":
        make = EmbedGRU  # type: ignore[assignment]
        data = [(torch.randint(0, 10, (4, 6)), torch.randn(4, 1)) for _ in range(8)]
    else:
        from tests.probes.test_activations import FunctionalNet

        make = lambda: nn.Sequential(FunctionalNet(), nn.Linear(3, 1))  # noqa: E731
        data = [(torch.randn(4, 6), torch.randn(4, 1)) for _ in range(8)]
    a = make()
    b = make()
    b.load_state_dict(a.state_dict())
    for pa, pb in zip(_train(a, data, watch=False), _train(b, data, watch=True), strict=True):
        assert torch.equal(pa, pb)


def test_no_hook_or_mode_is_left_behind() -> None:
    from torch.nn.modules import module as mm

    before = (len(mm._global_forward_pre_hooks), len(mm._global_forward_hooks))
    model = SeqModel(nn.LSTM(3, 4, batch_first=True))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="stop"), gw.watch(model, every=1, optimizer=opt):
        model(torch.randn(2, 3, 3)).sum().backward()
        opt.step()
        model(torch.randn(2, 3, 3))  # armed for step 1, then the loop dies mid-step
        raise RuntimeError("stop")
    assert (len(mm._global_forward_pre_hooks), len(mm._global_forward_hooks)) == before
    assert torch._C._len_torch_function_stack() == 0
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_a_forward_that_raises_does_not_leave_the_mode_on() -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            torch.relu(self.lin(x))
            raise ValueError("bad forward")

    model = Broken()
    with gw.watch(model, every=1):
        with pytest.raises(ValueError, match="bad forward"):
            model(torch.randn(1, 2))
        assert torch._C._len_torch_function_stack() == 0


def test_an_encoder_applied_to_independent_inputs_has_no_time() -> None:
    # a triplet network calls its encoder three times per forward, on three independent
    # inputs: no call feeds the next, so there is no gradient "through time" to profile
    class Triplet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))

        def forward(self, a: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return self.enc(a), self.enc(p), self.enc(n)

    model = Triplet()
    with gw.watch(model, every=1) as w:
        for _ in range(3):
            a, p, n = torch.randn(3, 5, 8)
            nn.functional.triplet_margin_loss(*model(a, p, n)).backward()
            w.step()
    assert w.timeline.profiles.names() == []
