"""Instructions for what surgery cannot reach, in PyTorch terms and in Keras terms.

Surgery replaces modules; it cannot rewrite code. A ``torch.sigmoid(x)`` inside a custom
``forward`` is found either by running one forward pass under a `TorchFunctionMode`
(when an example input is given: exact, and each call comes with its file and line) or,
without an input, by reading every custom ``forward`` with `inspect.getsource` (finds
the calls written there, but not those in helper functions it calls, and cannot tell
a hidden activation from an output one except for ``return torch.sigmoid(...)`` in the
top module). Each instruction names the module, the class, the file and the line.
"""

from __future__ import annotations

from torch import nn

from gradwatch.anatomy.activations import SATURATING_FUNCTIONS
from gradwatch.anatomy.order import Op, Order
from gradwatch.fix._surgery import get_module

KERAS_RELU = (
    "Keras: use `tf.keras.layers.ReLU()` (or `activation='relu'`) and "
    "`kernel_initializer='he_normal'` on the layer before it"
)


def hidden_functional_activations(model: nn.Module, order: Order) -> list[Op]:
    """Functional saturating calls that are not the model's output activation, one per call site."""
    found: list[Op] = []
    output = order.output_activations() if order.traced else set()
    seen: set[tuple[str, str, int]] = set()
    for op in order.functions:
        if op.fn.endswith("@output") or op.fn not in SATURATING_FUNCTIONS or op.gate:
            continue  # a gate (x * sigmoid(s)) is meant to saturate
        if order.traced and f"{op.name}:{op.fn}" in output and (op.returned or _after_last_layer(order, op)):
            continue
        key = (op.name, op.file, op.line)
        if key in seen:
            continue
        seen.add(key)
        found.append(op)
    return found


def _after_last_layer(order: Order, op: Op) -> bool:
    last = order.last_layer_index()
    return any(o is op for o in order.ops[last + 1 :])


def activation_advice(model: nn.Module, sites: list[Op]) -> list[str]:
    """One instruction per functional saturating activation site."""
    out = []
    for op in sites:
        try:
            cls = type(get_module(model, op.name)).__name__
        except AttributeError:
            cls = "?"
        where = f"module `{op.name or '(root)'}` ({cls}.forward, {op.file}:{op.line})"
        code = f" `{op.code}`" if op.code else ""
        out.append(
            f"{where}:{code} calls {op.fn} inside forward(), which surgery cannot replace. "
            f"PyTorch: change it to `torch.relu(...)` and initialise the layer feeding it with "
            f"`nn.init.kaiming_normal_(layer.weight, nonlinearity='relu')` and a zero bias. "
            f"{KERAS_RELU}."
        )
    return out


def norm_advice(cause: str) -> str:
    return (
        f"No Linear/convolution followed by an activation module could be reached ({cause}). "
        "PyTorch: in forward(), put `nn.BatchNorm1d(n)` (`nn.BatchNorm2d(c)` after a Conv2d, "
        "`nn.LayerNorm(n)` for sequences or batch size 1) between each hidden layer and its "
        "activation. Keras: `tf.keras.layers.BatchNormalization()` (or `LayerNormalization()`) "
        "between the `Dense`/`Conv2D` layer (with `activation=None`) and its activation layer."
    )


def residual_advice(cause: str) -> str:
    return (
        f"No run of shape-preserving blocks in an nn.Sequential could be wrapped ({cause}). "
        "PyTorch: in forward(), where a block keeps the shape, write `x = x + block(x)` "
        "(scale the branch by about 1/sqrt(number of blocks) when there is no normalisation). "
        "Keras: `x = tf.keras.layers.Add()([x, block(x)])`."
    )


def recurrent_advice(cause: str) -> str:
    return (
        f"No nn.RNN/nn.RNNCell module was found to replace ({cause}); a recurrence written by "
        "hand cannot be swapped. PyTorch: use `nn.GRU` or `nn.LSTM` (orthogonal recurrent "
        "weights, forget-gate bias 1). Keras: `tf.keras.layers.GRU` or `tf.keras.layers.LSTM` "
        "(`recurrent_initializer='orthogonal'`, `unit_forget_bias=True`) instead of `SimpleRNN`."
    )


def init_advice(cause: str) -> str:
    return (
        f"No layer's initialisation needed changing by surgery ({cause}); if the layers are built "
        "in code the model does not expose as modules, initialise them by hand. PyTorch: "
        "`nn.init.kaiming_normal_(w, nonlinearity='relu')` before ReLU, `nn.init.xavier_normal_(w)` "
        "before tanh/sigmoid, `nn.init.orthogonal_` for recurrent weights. Keras: "
        "`kernel_initializer='he_normal'` / `'glorot_normal'`, `recurrent_initializer='orthogonal'`."
    )
