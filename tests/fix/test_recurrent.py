from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from gradwatch import GradwatchValueError
from gradwatch.fix import recurrent
from gradwatch.fix.recurrent import LSTMAsRNN, LSTMCellAsRNNCell
from tests.fix.zoo import CellNet, RNNNet


@pytest.mark.parametrize("to", ["gru", "lstm"])
def test_rnn_becomes_gated_with_the_same_interface(to: str) -> None:
    rnn = nn.RNN(3, 8, num_layers=2, batch_first=True, bidirectional=True, dropout=0.0)
    model = nn.Sequential(rnn)
    new, changes = recurrent.transform(model, to=to)
    gated = new[0]
    assert isinstance(gated, nn.GRU if to == "gru" else LSTMAsRNN)
    assert (gated.input_size, gated.hidden_size, gated.num_layers) == (3, 8, 2)
    assert gated.batch_first and gated.bidirectional
    x, h0 = torch.randn(4, 5, 3), torch.randn(4, 4, 8)
    out_old, h_old = rnn(x, h0)
    out_new, h_new = gated(x, h0)  # an h_0 tensor in, (output, h_n) out, as nn.RNN
    assert out_new.shape == out_old.shape and h_new.shape == h_old.shape
    assert f"RNN(3, 8) -> {type(gated).__name__}" in changes[0].description


def test_lstm_wrapper_computes_what_nn_lstm_computes() -> None:
    torch.manual_seed(0)
    wrapped = LSTMAsRNN(3, 5, batch_first=True)
    plain = nn.LSTM(3, 5, batch_first=True)
    plain.load_state_dict(wrapped.state_dict())
    x, h0 = torch.randn(2, 4, 3), torch.randn(1, 2, 5)
    out, h = wrapped(x, h0)
    out2, (h2, _) = plain(x, (h0, torch.zeros_like(h0)))
    assert torch.allclose(out, out2) and torch.allclose(h, h2)


def test_cells_are_replaced_and_the_lstm_cell_carries_its_state_through_a_loop() -> None:
    new, changes = recurrent.transform(CellNet(), to="lstm")
    cell = new.cell
    assert isinstance(cell, LSTMCellAsRNNCell) and len(changes) == 1
    plain = nn.LSTMCell(3, 8)
    plain.load_state_dict(cell.state_dict())
    x = torch.randn(2, 6, 3)
    h, hc = None, None
    for t in range(6):
        h = cell(x[:, t], h)
        hc = plain(x[:, t], hc)
    assert hc is not None and h is not None and torch.allclose(h, hc[0], atol=1e-6)
    # a new sequence (h=None) starts from a zero cell state again
    assert torch.allclose(cell(x[:, 0], None), plain(x[:, 0])[0], atol=1e-6)


def test_gru_cell_and_model_output_shape() -> None:
    new, _ = recurrent.transform(CellNet())
    assert isinstance(new.cell, nn.GRUCell)
    assert new(torch.randn(2, 4, 3)).shape == (2, 1)


def test_gated_layers_are_left_alone() -> None:
    for m in (RNNNet(nn.GRU), RNNNet(nn.LSTM)):
        _, changes = recurrent.transform(m)
        assert changes == []


def test_bad_target() -> None:
    with pytest.raises(GradwatchValueError, match="gru, lstm"):
        recurrent.transform(RNNNet(), to="transformer")


def test_a_trained_lstm_cell_model_can_be_copied_and_saved() -> None:
    torch.manual_seed(0)
    new, _ = recurrent.transform(CellNet(), to="lstm")
    x = torch.randn(2, 5, 3)
    new(x).sum().backward()
    h = new.cell(x[:, 0])  # a sequence under way: its h and cell state are alive
    copied = copy.deepcopy(new)
    buffer = io.BytesIO()
    torch.save(new, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    # the original still carries its cell state on from the h it returned
    plain = nn.LSTMCell(3, 8)
    plain.load_state_dict(new.cell.state_dict())
    hc = plain(x[:, 0])
    assert torch.allclose(new.cell(x[:, 1], h), plain(x[:, 1], hc)[0], atol=1e-6)
    for other in (copied, loaded):
        assert other.state_dict().keys() == new.state_dict().keys()
        with torch.no_grad():
            assert torch.allclose(other(x), new(x))


def _tensors_held(cell: nn.Module) -> list[torch.Tensor]:
    """The tensors other than parameters that the module's attributes hold."""
    found, todo = [], list(vars(cell).values())
    while todo:
        v = todo.pop()
        if isinstance(v, dict):
            todo.extend(v.values())
        elif isinstance(v, tuple | list):
            todo.extend(v)
        elif isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter):
            found.append(v)
    return found


def test_the_cell_state_is_held_only_while_its_h_is() -> None:
    cell = LSTMCellAsRNNCell(3, 4)
    h = cell(torch.randn(2, 3))
    h = cell(torch.randn(2, 3), h)
    h.sum().backward()
    assert len(_tensors_held(cell)) == 1  # the cell state that goes with h
    del h  # the sequence is over: its state and autograd graph go with it
    assert _tensors_held(cell) == []
