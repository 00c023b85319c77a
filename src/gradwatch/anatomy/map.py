"""Which modules own parameters, in what order they run, and their basic shape facts.

A *layer* is a module that owns at least one parameter directly (not through a child).
A shared (tied) parameter belongs to the first module that registers it, and is
measured there once; that layer lists the other names of the parameter under `tied`.
Frozen parameters (``requires_grad=False``) are never measured: a layer with only
frozen parameters is marked ``frozen`` and reported as such.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict, cast

import torch
from torch import nn

from gradwatch._errors import GradwatchTypeError, GradwatchValueError

#: The layer name of the root module's own parameters.
ROOT = "(root)"


def encloses(outer: str, inner: str) -> bool:
    """Whether layer `outer`'s module contains layer `inner`'s (by module path)."""
    return outer != inner and (outer == ROOT or inner.startswith(outer + "."))


class LayerFacts(TypedDict, total=False):
    """The per-layer facts of the map, each under a fixed, type-checked key (a key is absent
    until the analysis that finds it has run). They travel in logs as a plain JSON object.

    From `Anatomy.from_module` and `Anatomy.reorder`: ``tied_uses`` (module -> its output
    size, for the other modules that hold a tied parameter), ``tied_head`` (the output size
    of a tied use that runs last: the model's head), ``input_group`` (an id shared by the
    layers that read one tensor). From `gradwatch.anatomy.structure.analyse`, the rest —
    its module docstring says what each one means.
    """

    activation: str | None
    norm: str | None
    skip: bool
    is_norm: bool
    sigma_w2: float | None
    sigma_b2: float | None
    bias_ratio_q: list[float]
    recurrent: bool
    seq_len: int | None
    cell: str
    hh_radius: float
    hh_norm: float
    keep_bias_max: float
    norm_gain: float
    norm_eps: float
    tied_uses: dict[str, int | None]
    tied_head: int
    input_group: int


@dataclass
class Layer:
    """One module that owns parameters."""

    name: str
    type: str
    fan_in: int | None
    fan_out: int | None
    n_params: int
    param_names: list[str]
    trainable: bool
    tied: list[str] = field(default_factory=list)
    order: int | None = None  # position in the first forward pass; None if never seen running
    extra: LayerFacts = field(default_factory=lambda: LayerFacts())

    @property
    def frozen(self) -> bool:
        return not self.trainable

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "fan_in": self.fan_in,
            "fan_out": self.fan_out,
            "n_params": self.n_params,
            "param_names": list(self.param_names),
            "trainable": self.trainable,
            "tied": list(self.tied),
            "order": self.order,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Layer:
        return cls(
            name=str(d["name"]),
            type=str(d.get("type", "?")),
            fan_in=d.get("fan_in"),
            fan_out=d.get("fan_out"),
            n_params=int(d.get("n_params", 0)),
            param_names=list(d.get("param_names", [])),
            trainable=bool(d.get("trainable", True)),
            tied=list(d.get("tied", [])),
            order=d.get("order"),
            extra=cast(LayerFacts, dict(d.get("extra", {}))),
        )


def weight_scale(layer: Layer) -> float:
    """The layer's ``sigma_w2`` (``fan_in * E[W^2]``, `gradwatch.anatomy.structure.analyse`).

    Raises `GradwatchValueError` for a layer that has none: not a weight layer, or not analysed.
    """
    value = layer.extra.get("sigma_w2")
    if value is None:
        raise GradwatchValueError(
            f"layer '{layer.name}' has no weight scale (sigma_w2): it is not a weight layer, or the "
            "anatomy was not analysed (gradwatch.anatomy.structure.analyse)"
        )
    return float(value)


def fan_in_of(module: nn.Module) -> int | None:
    """The number of inputs feeding one output unit, for the layer types where it is defined."""
    if isinstance(module, nn.Linear | nn.Bilinear):
        return int(module.in_features) if isinstance(module, nn.Linear) else None
    if isinstance(module, nn.modules.conv._ConvNd):
        k = math.prod(module.kernel_size)
        if module.transposed:
            return transposed_fan_in(module)
        return int(module.in_channels // module.groups * k)
    if isinstance(module, nn.RNNBase):
        return int(module.input_size)
    if isinstance(module, nn.Embedding | nn.EmbeddingBag):
        return 1
    w = getattr(module, "weight", None)
    if is_hf_conv1d(module) and isinstance(w, torch.Tensor):
        return int(w.shape[0])
    if isinstance(w, torch.Tensor) and w.dim() >= 2:
        return int(math.prod(w.shape[1:]))
    return None


def transposed_fan_in(module: nn.modules.conv._ConvNd) -> int:
    """Inputs summed into one output of a transposed convolution, on average.

    Each input position scatters its kernel over the output, whose positions are `stride`
    apart: an output receives ``prod(kernel / stride)`` positions of each of the
    ``in_channels / groups`` input channels. (PyTorch's own initialisers use
    ``out_channels * prod(kernel)``, the count for the adjoint convolution; with it, He's
    gain of 2 comes out at 1 for a kernel 4, stride 2 up-sampling layer.)
    """
    per_channel = math.prod(k / s for k, s in zip(module.kernel_size, module.stride, strict=True))
    return max(1, round(module.in_channels // module.groups * per_channel))


def type_name(module: nn.Module) -> str:
    """The name of the module's class, seen through FSDP2: `fully_shard` swaps the class of
    the module it shards for ``FSDP<Class>(FSDPModule, Class)``, and gradwatch's rules know
    layers by their own class names."""
    cls = type(module)
    bases = cls.__bases__
    if len(bases) == 2 and bases[0].__name__ == "FSDPModule" and cls.__name__ == f"FSDP{bases[1].__name__}":
        cls = bases[1]
    return cls.__name__


def is_hf_conv1d(module: nn.Module) -> bool:
    """Hugging Face's `Conv1D` (GPT-2): a linear layer that stores its weight as (in, out)."""
    return type_name(module) == "Conv1D" and hasattr(module, "nf")


def _fan_out_of(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return int(module.out_features)
    if isinstance(module, nn.modules.conv._ConvNd):
        return int(module.out_channels)
    if isinstance(module, nn.RNNBase):
        return int(module.hidden_size)
    if isinstance(module, nn.Embedding | nn.EmbeddingBag):
        return int(module.embedding_dim)
    if is_hf_conv1d(module):
        return int(getattr(module, "nf"))  # noqa: B009 - nf is not in nn.Module's type
    w = getattr(module, "weight", None)
    if isinstance(w, torch.Tensor) and w.dim() >= 1:
        return int(w.shape[0])
    return None


class Anatomy:
    """The ordered list of layers of a model, and the parameters each one owns.

    Build it with `Anatomy.from_module(model)`; `reorder()` puts the layers in the order
    a forward pass ran them. An anatomy read back from a log has no module attached.
    """

    def __init__(self, layers: Sequence[Layer], model_type: str = "?") -> None:
        self.layers: list[Layer] = list(layers)
        self.model_type = model_type
        self._by_name = {layer.name: layer for layer in self.layers}
        self._params: dict[str, list[nn.Parameter]] = {}

    # -- construction ---------------------------------------------------------------
    @classmethod
    def from_module(cls, model: nn.Module) -> Anatomy:
        if not isinstance(model, nn.Module):
            raise GradwatchTypeError(
                f"expected a torch.nn.Module, got {type(model).__module__}.{type(model).__qualname__}"
            )
        owner: dict[int, Layer] = {}  # id(param) -> the layer that owns it (its first module)
        layers: list[Layer] = []
        params: dict[str, list[nn.Parameter]] = {}
        for mod_name, module in model.named_modules():
            own: list[tuple[str, nn.Parameter]] = []
            for p_name, p in module.named_parameters(recurse=False):
                qual = f"{mod_name}.{p_name}" if mod_name else p_name
                if id(p) in owner:  # shared (tied) parameter: measured once, at its owner
                    owner[id(p)].tied.append(qual)
                    # where else it is used, and that module's outputs: an input embedding
                    # tied to the output head is also the model's last layer (see `reorder`)
                    owner[id(p)].extra.setdefault("tied_uses", {})[mod_name] = _fan_out_of(module)
                else:
                    own.append((qual, p))
            if not own:
                continue
            name = mod_name or ROOT
            trainable = [p for _, p in own if p.requires_grad]
            layer = Layer(
                name=name,
                type=type_name(module),
                fan_in=fan_in_of(module),
                fan_out=_fan_out_of(module),
                n_params=sum(p.numel() for _, p in own),
                param_names=[q for q, _ in own],
                trainable=bool(trainable),
            )
            for _, p in own:
                owner[id(p)] = layer
            layers.append(layer)
            params[name] = trainable
        if not layers:
            raise GradwatchValueError(
                f"the model ({type(model).__name__}) has no parameters, so there are no "
                "gradients to watch; pass the module that holds the trainable layers"
            )
        anatomy = cls(layers, model_type=type_name(model))
        anatomy._params = params
        return anatomy

    # -- queries --------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __getitem__(self, name: str) -> Layer:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def trainable(self) -> list[Layer]:
        """The layers with at least one trainable parameter, in order."""
        return [layer for layer in self.layers if layer.trainable]

    def parameters_of(self, name: str) -> list[nn.Parameter]:
        """The trainable parameters a layer owns (empty for an anatomy read from a log)."""
        return self._params.get(name, [])

    # -- ordering -------------------------------------------------------------------
    def reorder(self, executed: Sequence[str], input_groups: Mapping[str, int] | None = None) -> None:
        """Put layers in the order their modules first ran (`executed`: module names, in call order).

        `input_groups` (module name -> an id of the tensor it first read) marks layers that
        read the same tensor — the query, key and value projections of one attention block:
        they sit at one depth, and each layer of a group of two or more gets the group under
        ``extra["input_group"]``.

        A layer that never ran itself, but whose parent (or nearer ancestor) did, goes right
        after that ancestor: its parent used its parameters directly, as
        ``nn.MultiheadAttention`` does with ``out_proj``. Other layers that did not run (the
        top module does not count as an ancestor: it runs whatever happens) keep their
        registration order at the end, with ``order`` None.
        """
        first = {name: i for i, name in enumerate(dict.fromkeys(executed))}

        def position(name: str) -> float | None:
            if name in first:
                return float(first[name])
            parts = name.split(".")
            for k in range(len(parts) - 1, 0, -1):
                ancestor = ".".join(parts[:k])
                if ancestor in first:
                    return first[ancestor] + 0.5
            return None

        keyed = [(position(layer.name), i, layer) for i, layer in enumerate(self.layers)]
        keyed.sort(key=lambda t: (t[0] is None, t[0] or 0.0, t[1]))
        self.layers = [layer for _, _, layer in keyed]
        for order, (pos, _, layer) in enumerate(keyed):
            layer.order = order if pos is not None else None
        # A tied use that ran after every layer is the model's head (GPT-2's lm_head, which
        # shares the input embedding's weight): its owner records the head's outputs.
        last = max((pos for pos, _, _ in keyed if pos is not None), default=-1.0)
        head: tuple[float, Layer, int] | None = None
        for layer in self.layers:
            layer.extra.pop("tied_head", None)
            for mod, fan_out in layer.extra.get("tied_uses", {}).items():
                if mod in first and first[mod] > last and fan_out and (head is None or first[mod] > head[0]):
                    head = (float(first[mod]), layer, int(fan_out))
        if head is not None:
            head[1].extra["tied_head"] = head[2]
        groups = input_groups or {}
        sizes: dict[int, int] = {}
        for layer in self.layers:
            if layer.name in groups:
                sizes[groups[layer.name]] = sizes.get(groups[layer.name], 0) + 1
        for layer in self.layers:
            layer.extra.pop("input_group", None)
            g = groups.get(layer.name)
            if g is not None and sizes[g] > 1:
                layer.extra["input_group"] = g

    # -- serialisation --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"model_type": self.model_type, "layers": [layer.to_dict() for layer in self.layers]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Anatomy:
        return cls([Layer.from_dict(x) for x in d.get("layers", [])], str(d.get("model_type", "?")))

    def __repr__(self) -> str:
        return f"Anatomy({self.model_type}, {len(self.layers)} layers)"
