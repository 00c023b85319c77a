"""Probes that watch the forward pass (and the backward through recurrent inputs) on recording steps.

`ForwardProbe.arm()` installs, until `disarm()`:

- two process-wide module hooks (``register_module_forward_pre_hook`` and
  ``register_module_forward_hook(always_call=True)``) that keep a stack of which of *this*
  model's modules is running, ignore every other module, and push a `TorchFunctionMode`
  for the length of the model's own forward;
- that mode sees every activation call — ``nn.ReLU`` modules and ``F.relu`` /
  ``torch.sigmoid`` / ``x.tanh()`` written inside a custom ``forward`` alike — and adds its
  output to the statistics of its *site* (see `docs/metrics.md` for site names);
- at the start of the model's forward, its input's statistics (`probes.inputs`); at the
  end, the output's spread and scale;
- for recurrent layers and cells, the gradient-through-time hooks of `probes.temporal`
  and the gate statistics of `probes.gates`.

Nothing is armed on other steps, so they pay nothing. A failure inside a probe never
reaches the training loop: the probe switches itself off and says why once.
"""

from __future__ import annotations

import itertools
import os
import sys
import warnings
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from gradwatch.anatomy._graph import iter_tensors
from gradwatch.anatomy._mode import AFFINE, PRODUCTS, CallObserver, is_constant
from gradwatch.anatomy.map import ROOT
from gradwatch.probes import gates, temporal
from gradwatch.probes.activations import (
    ACTIVATIONS,
    Activation,
    DeadCarry,
    SiteStats,
    classify,
    unit_dim,
)
from gradwatch.probes.inputs import InputStats
from gradwatch.probes.output import OutputSample, first_tensor, scale, spread
from gradwatch.probes.transfer import Transfer

_TORCH_DIR = os.path.dirname(torch.__file__)
_OWN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CHANNELS_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.GroupNorm)
#: A module with parameters called this many times in one forward pass is treated as a
#: recurrent cell applied step by step.
LOOP_CALLS = 3


def _caller_frame() -> Any:
    """The innermost frame outside torch and gradwatch (the user's code), or None."""
    f = sys._getframe(2)
    while f is not None:
        name = f.f_code.co_filename
        if not (name.startswith(_TORCH_DIR) or name.startswith(_OWN_DIR)):
            return f
        f = f.f_back  # type: ignore[assignment]
    return None


def _line(frame: Any) -> str:
    return "?" if frame is None else f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"


def _is_activation_module(module: nn.Module) -> bool:
    """A module that is its own activation site: torch's activation modules, and any leaf
    module without parameters (``GELUActivation`` in Hugging Face models, a custom ``Swish``)."""
    if type(module).__module__ == "torch.nn.modules.activation":
        return True
    return next(module.children(), None) is None and next(module.parameters(recurse=False), None) is None




def _grad_fns(args: Any) -> list[Any]:
    """The autograd nodes of the tensors among a call's arguments (nested ones included)."""
    return [t.grad_fn for t in iter_tensors(args) if t.grad_fn is not None]


def _reaches(starts: list[Any], target: Any, budget: int = 512) -> bool:
    """Whether `target` is among the autograd ancestors of `starts` (at most `budget` nodes)."""
    seen: set[int] = set()
    todo = list(starts)
    while todo and len(seen) < budget:
        node = todo.pop()
        if node is target:
            return True
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        todo.extend(n for n, _ in getattr(node, "next_functions", ()))
    return False


def _chained(calls: list[list[Any]]) -> bool:
    """Some call of a module takes, through its inputs, the output of its previous call."""
    return any(
        prev[1] is not None and _reaches(cur[0], prev[1]) for prev, cur in itertools.pairwise(calls)
    )


class _Mode(CallObserver):
    """Shows each activation call (and each constant shift or scaling of a saturating output)
    of the model's forward to the probe."""

    def __init__(self, probe: ForwardProbe) -> None:
        super().__init__()
        self.probe = probe

    def seen(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        if torch.compiler.is_compiling():  # traced into a compiled graph: observe nothing
            return
        try:
            act = classify(func, args, kwargs)
            affine = act is None and bool(self.probe._outputs) and func in AFFINE
        except TypeError:  # an unhashable callable: not an activation
            act, affine = None, False
        if act is not None:
            self.probe._on_activation(act, out, args, kwargs)
        elif affine:
            self.probe._follow(func, args, out)


class ForwardProbe:
    """Activation, output-spread and gradient-through-time statistics for one model."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.names = {id(m): (n or ROOT) for n, m in model.named_modules()}
        self._leaves = {id(m) for m in model.modules() if next(m.children(), None) is None}
        self.armed = False
        self.enabled = True
        self._handles: list[RemovableHandle] = []
        self._stack: list[nn.Module] = []
        self._mode = _Mode(self)
        self._mode_on = False
        self._busy = False
        self._last_leaf: nn.Module | None = None
        # activation sites: (base, line, units) -> name; name -> stats for the current record
        self._site_keys: dict[tuple[str, str, int], str] = {}
        self._bases: dict[str, int] = defaultdict(int)
        self.site_info: dict[str, dict[str, Any]] = {}
        self._new_sites: dict[str, dict[str, Any]] = {}
        self._stats: dict[str, SiteStats] = {}
        # per relu-family site: unit peaks carried across recording steps with too few outputs
        self._dead_carry: dict[str, DeadCarry] = {}
        self._spread: list[torch.Tensor] = []
        # the model's input (pooled over every recorded batch) and its output's scale
        first = next((m for m in model.modules() if next(m.parameters(recurse=False), None) is not None), None)
        self._inputs = InputStats(channels_first=isinstance(first, nn.modules.conv._ConvNd))
        self._out_scale: list[torch.Tensor] = []
        self._out_numel = 0
        self._targets = OutputSample()  # the output and its gradient, for the targets a squared error holds
        # id of a saturating site's output (or of a constant shift/scaling of it) -> the site,
        # during one forward pass: to see whether it is used as a gate (`_follow`)
        self._outputs: dict[int, str] = {}
        # id of every activation site's output in one forward pass -> (site, the tensor): to
        # see which site the model returns as it is (its output activation)
        self._act_out: dict[int, tuple[str, torch.Tensor]] = {}
        self._model_code: dict[Any, bool] = {}  # code object -> runs in this model's forward
        # recurrent layers and cells
        self._calls: dict[int, int] = defaultdict(int)
        self.loops: set[int] = {id(m) for m in model.modules() if isinstance(m, nn.RNNCellBase)}
        # modules with parameters of their own, the candidates for a hand-written loop; per
        # call in one forward: the autograd nodes of its inputs and of its output (`_chained`)
        self._param_mods = {id(m) for m in model.modules() if next(m.parameters(recurse=False), None) is not None}
        self._flow: dict[int, list[list[Any]]] = defaultdict(list)
        self._not_loops: set[int] = set()
        self._seq_profiles: dict[str, temporal.SequenceProfile] = {}
        self._call_profiles: dict[str, temporal.CallProfile] = {}

    # -- arming -------------------------------------------------------------------------
    def arm(self) -> None:
        if self.armed or not self.enabled:
            return
        mm = nn.modules.module
        self._handles = [
            mm.register_module_forward_pre_hook(self._pre),
            mm.register_module_forward_hook(self._post, always_call=True),
        ]
        self.armed = True

    def disarm(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._stop_mode()
        self._stack.clear()
        self.armed = False

    def _start_mode(self) -> None:
        if not self._mode_on:
            self._mode.__enter__()
            self._mode_on = True

    def _stop_mode(self) -> None:
        if self._mode_on:
            self._mode_on = False
            self._mode.__exit__(None, None, None)

    def _fail(self, e: BaseException) -> None:
        # Only mark it: this may run inside the mode's own handler, where the mode cannot be
        # popped. The hooks pass through from now on; the root's post-hook pops the mode and
        # the watcher's next disarm removes the hooks.
        if not self.enabled:
            return
        self.enabled = False
        warnings.warn(
            f"gradwatch switched its forward probes off after an internal error ({type(e).__name__}: {e}); "
            "gradient statistics continue",
            RuntimeWarning,
            stacklevel=3,
        )

    # -- module hooks (process-wide; everything outside this model is ignored) ---------------
    def _pre(self, module: nn.Module, args: tuple[Any, ...]) -> Any:
        if torch.compiler.is_compiling():
            # These hooks are process-wide, so torch.compile traces them into the graphs of
            # the modules it compiles; the check is a constant there, and the hook vanishes.
            return None
        name = self.names.get(id(module))
        if name is None and getattr(module, "_orig_mod", None) is self.model:
            # torch.compile(model) is what runs: our hooks vanish inside its graph, so the
            # probes would see nothing; off for good (the gradient statistics carry on)
            self.enabled = False
            return None
        if name is None or self._busy or not self.enabled:
            return None
        try:
            if module is self.model:
                self._stack.clear()
                self._calls.clear()
                if torch.is_grad_enabled() and args and isinstance(args[0], torch.Tensor):
                    self._inputs.add(args[0])  # before the mode: its reductions are not the model's
                self._start_mode()
            self._stack.append(module)
            self._calls[id(module)] += 1
            if id(module) in self._param_mods and id(module) not in self.loops and id(module) not in self._not_loops:
                self._flow[id(module)].append([_grad_fns(args), None])
            if id(module) in self._leaves:
                self._last_leaf = module
            if not torch.is_grad_enabled() or not args or not isinstance(args[0], torch.Tensor):
                return None
            x = args[0]
            if isinstance(module, nn.RNNBase) and x.is_floating_point():
                prof = self._seq_profiles.setdefault(name, temporal.SequenceProfile())
                x2 = temporal.stand_in(x)
                x2.register_hook(prof.hook(temporal.time_dim(module, x)))
                return (x2, *args[1:])
            if id(module) in self.loops and x.is_floating_point():
                cp = self._call_profiles.setdefault(name, temporal.CallProfile())
                x2 = temporal.stand_in(x)
                x2.register_hook(cp.hook(self._calls[id(module)] - 1))
                return (x2, *args[1:])
        except Exception as e:
            self._fail(e)
        return None

    def _post(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if torch.compiler.is_compiling():
            return
        name = self.names.get(id(module))
        if module is self.model:
            self._stop_mode()  # always, even after a failure
        if name is None or self._busy or not self.enabled:
            return
        try:
            if self._stack and self._stack[-1] is module:
                self._stack.pop()
            calls = self._flow.get(id(module))
            if calls and calls[-1][1] is None:
                y = first_tensor(output)
                calls[-1][1] = y.grad_fn if y is not None else None
            if module is self.model:
                self._end_of_forward(output)
            elif torch.is_grad_enabled() and args and gates.supported(module, args[0]):
                self._gate_stats(name, module, args, output)  # type: ignore[arg-type]
        except Exception as e:
            self._fail(e)

    def _end_of_forward(self, output: Any) -> None:
        self._outputs.clear()
        for t in iter_tensors(output):
            entry = self._act_out.get(id(t))
            if entry is not None and entry[1] is t and not self.site_info[entry[0]].get("output"):
                # the model returns this activation's output: a unit that never switches on
                # there is an output stuck at 0, not one hidden unit among many
                self._register_again(entry[0], {**self.site_info[entry[0]], "output": True})
        self._act_out.clear()
        candidates = [
            m for m, n in self._calls.items()
            if n >= LOOP_CALLS and m in self._param_mods and m not in self.loops and m not in self._not_loops
        ]  # fmt: skip
        if candidates:
            # A recurrence feeds one call's output into the next call of some module (an RNN
            # cell, or the hidden-to-hidden layer of a hand-written loop); then every module
            # called once per step is in its body (the input projection too: its per-call
            # input gradient is the gradient through time). Without one — a siamese or
            # triplet encoder applied to independent inputs — there is no time.
            recurrent = bool(self.loops) or any(_chained(self._flow.get(m, [])) for m in candidates)
            (self.loops if recurrent else self._not_loops).update(candidates)  # hooked from the next record
        self._flow.clear()
        if not torch.is_grad_enabled():
            return
        y = first_tensor(output)
        if y is not None:
            s = spread(y)
            if s is not None:
                self._spread.append(s)
            r = scale(y)
            if r is not None:
                self._out_scale.append(r)
                self._out_numel = max(self._out_numel, y.numel())
            self._targets.watch(y)

    def _gate_stats(self, name: str, module: nn.RNNBase, args: tuple[Any, ...], output: Any) -> None:
        self._busy = True
        try:
            with torch.no_grad():
                for gate, act_name, values in gates.gate_values(module, args, output):
                    act = next(a for a in ACTIVATIONS.values() if a.name == act_name)
                    site = f"{name}:{gate}"
                    st = self._stats.get(site)
                    if st is None:
                        st = self._stats[site] = SiteStats(act, values.shape[-1])
                        # a plain RNN's hidden units are units (they die or saturate), not gates
                        plain = isinstance(module, nn.RNN)
                        info = {"fn": act_name, "module": name, "family": act.family if plain else "gate"}
                        self._register(site, {**info, "units": values.shape[-1]} if plain else info)
                    st.add(values, values.dim() - 1, (), {})
        finally:
            self._busy = False

    # -- activations (called from the TorchFunctionMode) ------------------------------------
    def _on_activation(self, act: Activation, out: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not self.enabled or self._busy or not self._stack or not torch.is_grad_enabled() or not isinstance(out, torch.Tensor):
            return
        try:
            module = self._stack[-1]
            mod_name = self.names[id(module)]
            channels_first = isinstance(self._last_leaf, _CHANNELS_FIRST)
            dim = unit_dim(out, channels_first)
            units = 1 if dim is None else int(out.shape[dim])
            as_module = _is_activation_module(module)
            base = mod_name if as_module else f"{mod_name}:{act.name}"
            frame = _caller_frame()
            line = _line(frame)
            # An activation module called by a container (`nn.Sequential`) has no call site
            # in the model's code: the nearest user frame is the training loop, which may call
            # the model from several lines (a GAN's generator); that is still one site.
            where = line if not as_module or self._in_model_code(frame) else ""
            key = (base, where, units)
            site = self._site_keys.get(key)
            if site is None:
                k = self._bases[base]
                self._bases[base] += 1
                site = base if as_module and k == 0 else f"{base}#{k}"
                self._site_keys[key] = site
                self._register(site, {"fn": act.name, "module": mod_name, "family": act.family, "line": line, "units": units})
            st = self._stats.get(site)
            if st is None:
                st = self._stats[site] = SiteStats(act, units)
            st.add(out, dim, args, kwargs)
            if act.family == "saturating" and self.site_info[site].get("family") != "gate":
                self._outputs[id(out)] = site
            self._act_out[id(out)] = (site, out)
        except Exception as e:
            self._fail(e)

    def _follow(self, func: Any, args: tuple[Any, ...], out: Any) -> None:
        """A saturating site's output in an elementwise product with another tensor is a gate;
        shifted or scaled by a constant it is still that output (followed to the next op)."""
        try:
            at = [(i, self._outputs[id(a)]) for i, a in enumerate(args) if isinstance(a, torch.Tensor) and id(a) in self._outputs]
            if not at:
                return
            if func in PRODUCTS:
                gated = {site for i, site in at if any(not is_constant(b) for j, b in enumerate(args) if j != i)}
                for site in gated:
                    self._register_again(site, {**self.site_info[site], "family": "gate"})
                if gated:
                    self._outputs = {k: v for k, v in self._outputs.items() if v not in gated}
                    return
            tracked = {i for i, _ in at}
            if all(is_constant(a) for j, a in enumerate(args) if j not in tracked) and isinstance(out, torch.Tensor):
                self._outputs[id(out)] = at[0][1]
        except Exception as e:
            self._fail(e)

    def _register_again(self, site: str, info: dict[str, Any]) -> None:
        self.site_info[site] = info
        self._new_sites[site] = info

    def _in_model_code(self, frame: Any) -> bool:
        """Whether `frame` runs inside the forward of one of this model's modules (decided
        once per code object: reading a frame's locals is the costly part)."""
        if frame is None:
            return False
        code = frame.f_code
        known = self._model_code.get(code)
        if known is None:
            owner = frame.f_locals.get("self")
            known = self._model_code[code] = owner is not None and id(owner) in self.names
        return known

    def _register(self, site: str, info: dict[str, Any]) -> None:
        if site not in self.site_info:
            self.site_info[site] = info
            self._new_sites[site] = info

    # -- results ------------------------------------------------------------------------
    def measure(self, transfer: Transfer) -> list[tuple[str, str, str]]:
        """Queue this recording step's results; returns how to read them back."""
        layout: list[tuple[str, str, str]] = []  # (transfer name, kind, metric or profile name)
        for site, st in self._stats.items():
            for metric, value in st.results(self._dead_carry.setdefault(site, DeadCarry())).items():
                key = f"fp.{len(layout)}"
                transfer.put(key, value)
                layout.append((key, metric, site))
        if self._spread:
            key = f"fp.{len(layout)}"
            transfer.put(key, torch.stack(self._spread).mean().reshape(1))
            layout.append((key, "output_spread", "output"))
        if self._out_scale:
            key = f"fp.{len(layout)}"
            transfer.put(key, torch.stack(self._out_scale).mean().reshape(1))
            layout.append((key, "output_rms", "output"))
            key = f"fp.{len(layout)}"
            transfer.put(key, float(self._out_numel))
            layout.append((key, "output_numel", "output"))
        for metric, value in self._targets.results().items():
            key = f"fp.{len(layout)}"
            transfer.put(key, value)
            vector = metric in ("output_sample", "output_grad_sample")
            layout.append((key, "features", metric) if vector else (key, metric, "output"))
        if self._inputs.fresh:
            for metric, value in self._inputs.results().items():
                key = f"fp.{len(layout)}"
                transfer.put(key, value)
                vector = metric in ("input_mean", "input_std")
                layout.append((key, "features", metric) if vector else (key, metric, "input"))
        profiles: dict[str, temporal.SequenceProfile | temporal.CallProfile] = {
            **self._seq_profiles,
            **self._call_profiles,
        }
        for name, prof in profiles.items():
            vec = prof.result()
            if vec is not None:
                key = f"fp.{len(layout)}"
                transfer.put(key, vec)
                layout.append((key, "profile", f"grad_t/{name}"))
        self._stats = {}
        self._spread = []
        self._out_scale = []
        self._out_numel = 0
        self._seq_profiles = {}
        self._call_profiles = {}
        return layout

    def summarise(self, host: dict[str, np.ndarray], layout: list[tuple[str, str, str]]) -> dict[str, Any]:
        """Record fields (`values`, `profiles`, `sites`) from the transferred numbers."""
        values: dict[str, dict[str, float]] = {}
        profiles: dict[str, list[float]] = {}
        for key, kind, name in layout:
            data = host[key]
            if kind == "profile":
                profiles[name] = [float(v) for v in data]
            elif kind == "features":  # one column per input feature: "0", "1", ...
                values[name] = {str(i): float(v) for i, v in enumerate(data)}
            else:
                values.setdefault(kind, {})[name] = float(data[0])
        out: dict[str, Any] = {}
        if values:
            out["values"] = values
        if profiles:
            out["profiles"] = profiles
        if self._new_sites:
            out["sites"] = self._new_sites
            self._new_sites = {}
        return out
