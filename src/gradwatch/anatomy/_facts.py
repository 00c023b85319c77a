"""Per-layer numbers read from a module's own parameters: weight and bias scales, recurrent facts.

`gradwatch.anatomy.structure.analyse` puts them in ``Layer.extra`` (the keys are listed
in its module docstring).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gradwatch.anatomy._graph import is_norm_module
from gradwatch.anatomy.map import LayerFacts, transposed_fan_in

__all__ = ["norm_facts", "recurrent_facts", "weight_facts"]

#: PyTorch's own normalisations, whose forward is ``gain * (x - mean) / sqrt(var + eps) + shift``
#: (RMSNorm: without the mean): their gain is ``weight`` and their floor ``eps``. Other
#: ``*Norm`` classes may scale by something else (Gemma's RMSNorm by ``1 + weight``).
_KNOWN_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def weight_facts(module: nn.Module) -> LayerFacts:
    """sigma_w2, sigma_b2 and, for ReLU-bias checks, the deciles of b_i / ||W_i||."""
    facts: LayerFacts = {"sigma_w2": None, "sigma_b2": None}
    w = getattr(module, "weight", None)
    b = getattr(module, "bias", None)
    if isinstance(module, nn.RNNBase):
        w, b = getattr(module, "weight_ih_l0", None), getattr(module, "bias_ih_l0", None)
    elif isinstance(module, nn.RNNCellBase):
        w, b = getattr(module, "weight_ih", None), getattr(module, "bias_ih", None)
    elif isinstance(module, nn.MultiheadAttention):
        w, b = module.in_proj_weight, module.in_proj_bias
    elif type(module).__name__ == "Conv1D" and isinstance(w, torch.Tensor) and w.dim() == 2:
        w = w.t()  # Hugging Face's Conv1D (GPT-2) stores its weight as (in, out)
    is_weight = isinstance(w, torch.Tensor) and w.dim() >= 2 and not is_norm_module(module)
    with torch.no_grad():
        if is_weight:
            assert isinstance(w, torch.Tensor)
            wf = w.detach().float()
            if isinstance(module, nn.modules.conv._ConvNd) and module.transposed:
                rows = wf.transpose(0, 1).reshape(wf.shape[1], -1)  # (out, in*k) per group
            else:
                rows = wf.reshape(wf.shape[0], -1)
            fan_in = 1 if isinstance(module, nn.Embedding | nn.EmbeddingBag) else rows.shape[1]
            if isinstance(module, nn.modules.conv._ConvNd) and module.transposed:
                fan_in = transposed_fan_in(module)
            facts["sigma_w2"] = float(fan_in * rows.pow(2).mean())
            if isinstance(b, torch.Tensor) and b.dim() == 1 and b.numel() == rows.shape[0]:
                bf = b.detach().float()
                facts["sigma_b2"] = float(bf.pow(2).mean())
                ratio = bf / rows.norm(dim=1).clamp_min(1e-30)
                facts["bias_ratio_q"] = [float(v) for v in torch.quantile(ratio, torch.linspace(0.1, 0.9, 9))]
        elif isinstance(b, torch.Tensor) and b.dim() == 1 and not is_norm_module(module):
            facts["sigma_b2"] = float(b.detach().float().pow(2).mean())
    return facts


def norm_facts(module: nn.Module) -> LayerFacts:
    """For one of PyTorch's normalisations: ``norm_gain``, the root mean square of its gain
    (1 without one), and ``norm_eps``, the constant added to the variance it divides by.
    Empty for any other module."""
    if not isinstance(module, _KNOWN_NORMS):
        return {}
    w = getattr(module, "weight", None)
    eps = getattr(module, "eps", None)
    if eps is None:  # nn.RMSNorm(eps=None): the machine epsilon of the input's dtype
        eps = torch.finfo(w.dtype if isinstance(w, torch.Tensor) else torch.get_default_dtype()).eps
    gain = 1.0
    if isinstance(w, torch.Tensor) and w.numel():
        with torch.no_grad():
            gain = float(w.detach().float().pow(2).mean().sqrt())
    return {"norm_gain": gain, "norm_eps": float(eps)}


def recurrent_facts(module: nn.Module) -> LayerFacts:
    if isinstance(module, nn.LSTM | nn.LSTMCell):
        cell = "lstm"
    elif isinstance(module, nn.GRU | nn.GRUCell):
        cell = "gru"
    else:
        cell = "rnn"
    facts: LayerFacts = {"cell": cell}
    hh = [p for n, p in module.named_parameters() if n.startswith("weight_hh")]
    if cell == "rnn" and hh:
        radius, norm = 0.0, 0.0
        with torch.no_grad():
            for w in hh:
                m = w.detach().double()
                radius = max(radius, float(torch.linalg.eigvals(m).abs().max()))
                norm = max(norm, float(torch.linalg.matrix_norm(m, ord=2)))
        facts["hh_radius"], facts["hh_norm"] = radius, norm
    if cell in ("lstm", "gru"):
        facts["keep_bias_max"] = _keep_bias_max(module, 4 if cell == "lstm" else 3)
    nonlinearity = getattr(module, "nonlinearity", None)
    facts["activation"] = nonlinearity if cell == "rnn" else None
    return facts


def _keep_bias_max(module: nn.Module, gates: int) -> float:
    """The largest keep-gate bias ``b_ih + b_hh`` of a gated layer (0 for a layer without biases).

    PyTorch stacks the gates' rows as (i, f, g, o) for an LSTM and (r, z, n) for a GRU: the
    keep gate is the second block in both (a GRU keeps ``z * h``).
    """
    params = dict(module.named_parameters())
    best = -math.inf
    for name, w in params.items():
        if not name.startswith("weight_hh"):
            continue
        suffix = name[len("weight_hh"):]
        keep = torch.zeros(w.shape[0] // gates, dtype=torch.float64, device=w.device)
        for b in (params.get("bias_ih" + suffix), params.get("bias_hh" + suffix)):
            if b is not None:
                keep = keep + b.detach().double().chunk(gates)[1]
        keep = keep[torch.isfinite(keep)]
        if keep.numel():
            best = max(best, float(keep.max()))
    return best if math.isfinite(best) else 0.0
