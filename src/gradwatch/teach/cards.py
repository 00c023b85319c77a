"""One card per finding kind (`gw.Kind`) and per cause (`gw.CauseKind`), as data.

A card says what the thing is, where it shows up, the math behind it, its symptoms,
how to fix it in PyTorch (a snippet that runs as written; the tests execute every one)
and in Keras/TensorFlow terms, and which side of the vanishing/exploding divide it is on.
Which causes lie behind a finding is not repeated here: it is `explain.link.RELATED`.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any

from gradwatch.explain.link import RELATED
from gradwatch.types import CauseKind, Diagnosis, Kind

__all__ = ["CARDS", "CONTRAST", "Card", "card", "render"]


@dataclass(frozen=True)
class Card:
    """What a person should know about one finding kind or cause."""

    key: str  # a Kind or CauseKind value
    title: str
    what: str
    where: str
    math: str
    symptoms: tuple[str, ...]
    fix_torch: str  # a self-contained snippet; it runs as written
    fix_keras: str
    side: str  # "vanishing", "exploding" or "both"

    @property
    def is_kind(self) -> bool:
        return self.key in {k.value for k in Kind}

    @property
    def related(self) -> list[str]:
        """For a finding kind, the causes that can produce it; for a cause, the findings it can produce."""
        if self.is_kind:
            return [str(c) for c in RELATED[Kind(self.key)]]
        return [str(k) for k, causes in RELATED.items() if CauseKind(self.key) in causes]


#: Vanishing and exploding gradients side by side: one row per aspect.
CONTRAST: tuple[tuple[str, str, str], ...] = (
    ("per-layer gain", "chi < 1: the gradient shrinks layer after layer", "chi > 1: it grows layer after layer"),
    ("phase (mean field)", "ordered: nearby inputs merge", "chaotic: nearby inputs fly apart"),
    ("what you see", "early layers' gradients tiny, loss flat", "gradient norms huge or inf/NaN, loss spikes"),
    ("typical setting", "deep sigmoid/tanh nets, long plain RNNs", "large init, large step, long RNNs with |W_hh| > 1"),
    ("first remedies", "ReLU + He init, normalisation, skips, LSTM/GRU", "gradient clipping, smaller step, smaller init"),
)

_LINEAR_SNIPPET_HEAD = "import torch\nfrom torch import nn\n"

_K = Kind
_C = CauseKind

_CARDS: list[Card] = [
    Card(
        key=_K.VANISHING_GRADIENT,
        title="Vanishing gradient",
        what="The gradient reaching the layers near the input is orders of magnitude smaller than at the "
        "output, so those layers barely change and the network learns as if it were shallow, or not at all.",
        where="Deep plain stacks of sigmoid or tanh layers; small initial weights; deep nets without "
        "skips or normalisation.",
        math="Backpropagation multiplies one Jacobian per layer: dL/dh_1 = J_2^T ... J_L^T dL/dh_L with "
        "J_l = W_l diag(phi'(h_{l-1})). With weights of variance sigma_w^2/fan_in the squared norm changes "
        "per layer by chi = sigma_w^2 E[phi'(h)^2]; over L layers by about chi^L. Sigmoid's derivative "
        "is at most 1/4, so at PyTorch's default init (sigma_w^2 = 1/3) chi is about 0.02.",
        symptoms=(
            "first-to-last gradient-norm ratio below 1e-3",
            "training loss flat near its starting value; accuracy at chance",
            "the early layers' weights hardly move",
        ),
        fix_torch=_LINEAR_SNIPPET_HEAD
        + "layers = []\n"
        "for _ in range(16):\n"
        "    lin = nn.Linear(64, 64)\n"
        "    nn.init.kaiming_normal_(lin.weight, nonlinearity='relu')  # He init suits ReLU\n"
        "    nn.init.zeros_(lin.bias)\n"
        "    layers += [lin, nn.ReLU()]\n"
        "model = nn.Sequential(*layers, nn.Linear(64, 10))\n",
        fix_keras="Dense(..., activation='relu', kernel_initializer='he_normal'); add "
        "keras.layers.BatchNormalization() between layers; use residual connections (layers.Add()).",
        side="vanishing",
    ),
    Card(
        key=_K.EXPLODING_GRADIENT,
        title="Exploding gradient",
        what="Gradients grow from layer to layer (or step to step in time) until updates throw the "
        "weights far away: the loss jumps, and soon overflows.",
        where="Weights initialised too large, recurrent nets whose recurrent matrix has singular values "
        "above 1, large learning rates, regression targets of a huge scale.",
        math="The same product of Jacobians as for vanishing gradients, with chi = sigma_w^2 E[phi'(h)^2] "
        "above 1: the squared norm grows like chi^L. For a recurrent net the factor per time step is "
        "W_hh^T diag(phi'(h_t)); its largest singular value above 1 lets the gradient grow with the lag.",
        symptoms=(
            "some layers' gradient norms 100x or more the others'",
            "loss spikes, then inf or NaN",
            "update-to-weight ratios far above 1e-1",
        ),
        fix_torch=_LINEAR_SNIPPET_HEAD
        + "model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.01)\n"
        "loss = model(torch.randn(16, 8)).pow(2).mean()\n"
        "loss.backward()\n"
        "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)  # cap the global norm\n"
        "opt.step()\n",
        fix_keras="optimizer = keras.optimizers.SGD(learning_rate=1e-3, clipnorm=1.0); a smaller "
        "kernel_initializer scale (glorot_uniform); standardise the targets.",
        side="exploding",
    ),
    Card(
        key=_K.NONFINITE_GRADIENT,
        title="Non-finite gradient",
        what="A gradient entry is inf or NaN. One optimizer step with it ruins the weights it touches.",
        where="After an explosion; log or division of zero in the loss; fp16 overflow (under a "
        "GradScaler an occasional inf with a skipped step is normal).",
        math="IEEE arithmetic: anything beyond about 3.4e38 (float32) or 65504 (float16) is inf, and "
        "inf - inf, 0 * inf or 0/0 is NaN. A NaN then spreads through every product it enters.",
        symptoms=("loss prints nan", "weights become NaN after one step", "gradient norm inf"),
        fix_torch=_LINEAR_SNIPPET_HEAD
        + "model = nn.Linear(4, 1)\n"
        "loss = model(torch.randn(8, 4)).pow(2).mean()\n"
        "loss.backward()\n"
        "ok = all(torch.isfinite(p.grad).all() for p in model.parameters())\n"
        "if not ok:\n"
        "    model.zero_grad()  # skip this step instead of applying it\n"
        "torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, error_if_nonfinite=False)\n",
        fix_keras="keras.callbacks.TerminateOnNaN(); clipnorm on the optimizer; "
        "keras.mixed_precision.LossScaleOptimizer for float16.",
        side="exploding",
    ),
    Card(
        key=_K.TEMPORAL_VANISHING,
        title="Vanishing gradient through time",
        what="In a recurrent net, the gradient with respect to early time steps is a tiny fraction of "
        "that for recent ones: the model cannot learn dependencies across long lags.",
        where="Vanilla tanh or sigmoid RNNs over long sequences; LSTMs or GRUs whose forget gates are "
        "biased closed.",
        math="dh_T/dh_t = prod_{s=t+1..T} W_hh^T diag(phi'(h_s)). If the largest singular value of W_hh "
        "is below 1/gamma (gamma bounds |phi'|: 1 for tanh, 1/4 for sigmoid), the product shrinks "
        "geometrically with T - t (Pascanu, Mikolov and Bengio 2013). An LSTM's cell adds instead of "
        "multiplying, with a factor of about the forget gate per step.",
        symptoms=(
            "||dL/dx_t|| falls by decades from the last step to the first",
            "loss stays at the baseline of a model that ignores the past (1/6 on the adding problem)",
        ),
        fix_torch=_LINEAR_SNIPPET_HEAD
        + "lstm = nn.LSTM(input_size=2, hidden_size=32, batch_first=True)\n"
        "h = lstm.hidden_size\n"
        "with torch.no_grad():\n"
        "    for name, p in lstm.named_parameters():\n"
        "        if name.startswith('bias_ih'):\n"
        "            p[h:2 * h].fill_(1.0)  # forget-gate bias 1: remember by default\n"
        "out, _ = lstm(torch.randn(4, 50, 2))\n",
        fix_keras="keras.layers.LSTM(32, unit_forget_bias=True) or keras.layers.GRU(32) instead of "
        "SimpleRNN; clipnorm on the optimizer.",
        side="vanishing",
    ),
    Card(
        key=_K.DEAD_UNITS,
        title="Dead units",
        what="ReLU units whose pre-activation is negative for every input: their output is 0, their "
        "gradient is 0, and nothing brings them back.",
        where="Deep narrow ReLU nets (Lu et al. 2019: born dead with probability rising with depth); "
        "large learning rates that push biases negative; strongly negative initial biases.",
        math="ReLU'(h) = 0 for h < 0. A unit with b < -z ||w|| rms(a) is off for all but a tail of the "
        "inputs; once off everywhere, its incoming weights receive exactly zero gradient.",
        symptoms=(
            "a large share of a layer's ReLU outputs exactly 0 across the batch",
            "a share of gradient entries exactly 0",
        ),
        fix_torch=_LINEAR_SNIPPET_HEAD
        + "model = nn.Sequential(nn.Linear(16, 16), nn.LeakyReLU(0.01), nn.Linear(16, 2))\n"
        "nn.init.kaiming_normal_(model[0].weight, a=0.01, nonlinearity='leaky_relu')\n"
        "nn.init.zeros_(model[0].bias)\n"
        "y = model(torch.randn(8, 16))\n",
        fix_keras="layers.LeakyReLU(negative_slope=0.01) or activation='elu'; "
        "bias_initializer='zeros'; a smaller learning_rate.",
        side="vanishing",
    ),
    Card(
        key=_K.SATURATED_UNITS,
        title="Saturated units",
        what="Sigmoid or tanh units driven into their flat tails, where the derivative is nearly 0: they "
        "pass back almost no gradient.",
        where="Unnormalised inputs of a large scale; weights grown large; a sigmoid top layer early in "
        "training (Glorot and Bengio 2010).",
        math="sigmoid'(h) = s(1 - s) <= 1/4 and tanh'(h) = 1 - tanh(h)^2 <= 1; for |h| > 5 sigmoid's is "
        "under 3% of its peak and tanh's under 0.02%, so every such unit multiplies the gradient by "
        "nearly 0.",
        symptoms=(
            "most pre-activations beyond +-5 (DeepDiagnosis' rule of thumb)",
            "outputs pinned at 0/1 (sigmoid) or -1/+1 (tanh)",
        ),
        fix_torch=_LINEAR_SNIPPET_HEAD
        + "x = torch.randn(32, 10) * 100 + 50\n"
        "x = (x - x.mean(0)) / x.std(0)  # standardise the inputs\n"
        "model = nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 1))\n"
        "y = model(x)\n",
        fix_keras="keras.layers.Normalization() on the inputs; BatchNormalization() before the "
        "activation; activation='relu'.",
        side="vanishing",
    ),
    Card(
        key=_K.FLAT_LOSS,
        title="Flat loss",
        what="The training loss does not fall: nothing the optimizer does reaches the outputs in a way "
        "that lowers it.",
        where="Any of the vanishing mechanisms; a learning rate far too small; targets a bounded "
        "output cannot produce. A converged run is flat too, but low.",
        math="The loss changes by about -lr ||g||^2 per SGD step; with ||g|| tiny (vanished) or lr tiny, "
        "the change is lost in the minibatch noise.",
        symptoms=("the smoothed loss stays near its first value", "accuracy at chance"),
        fix_torch=_LINEAR_SNIPPET_HEAD
        + "model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))\n"
        "opt = torch.optim.Adam(model.parameters(), lr=1e-3)  # a step size that adapts per weight\n"
        "x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))\n"
        "for _ in range(5):\n"
        "    loss = nn.functional.cross_entropy(model(x), y)\n"
        "    opt.zero_grad(); loss.backward(); opt.step()\n",
        fix_keras="keras.optimizers.Adam(1e-3); keras.callbacks.ReduceLROnPlateau only once the loss "
        "has fallen; check the output activation matches the targets.",
        side="vanishing",
    ),
    Card(
        key=_K.DIVERGING_LOSS,
        title="Diverging loss",
        what="The training loss rises or overflows instead of falling.",
        where="A learning rate too large for the curvature; exploding gradients; targets of a huge "
        "scale for a regression.",
        math="On a quadratic with curvature lambda, gradient descent converges only for lr < 2/lambda; "
        "beyond it each step multiplies the error by |1 - lr lambda| > 1.",
        symptoms=("loss above its start and climbing", "inf or NaN loss after a spike"),
        fix_torch=_LINEAR_SNIPPET_HEAD
        + "model = nn.Linear(4, 1)\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=100)  # warm-up\n"
        "for g in opt.param_groups:\n"
        "    g['lr'] *= 0.1  # a tenth of the rate that diverged\n",
        fix_keras="keras.optimizers.SGD(learning_rate=lr / 10, clipnorm=1.0); a warm-up schedule "
        "(keras.optimizers.schedules).",
        side="exploding",
    ),
    Card(
        key=_K.STALLED_WEIGHTS,
        title="Stalled weights",
        what="A layer's updates are tiny next to its weights: the optimizer touches it, but it does not "
        "move.",
        where="Layers behind a vanished gradient; learning rates too small; frozen or accidentally "
        "detached layers.",
        math="The update-to-weight ratio ||Delta W|| / ||W|| is about lr ||g|| / ||W|| under SGD; the "
        "healthy band is about 1e-4 to 1e-1 (log10 in [-4, -1], TheDeepChecker).",
        symptoms=("update-to-weight ratio below 1e-4", "weights equal to their initial values"),
        fix_torch=_LINEAR_SNIPPET_HEAD
        + "model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))\n"
        "before = [p.detach().clone() for p in model.parameters()]\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "model(torch.randn(4, 8)).sum().backward(); opt.step()\n"
        "with torch.no_grad():\n"
        "    ratios = [float((p - b).norm() / b.norm()) for p, b in zip(model.parameters(), before)]\n",
        fix_keras="check layer.trainable; a larger learning_rate; remove the cause of the vanished "
        "gradient first.",
        side="vanishing",
    ),
    Card(
        key=_K.CONSTANT_OUTPUT,
        title="Constant output",
        what="The network gives (almost) the same output for every input: it has collapsed to a "
        "constant function, usually the mean target.",
        where="Dead ReLU layers; fully saturated layers; the forward signal vanishing with depth.",
        math="If some layer's outputs no longer depend on the input (all dead, all saturated, or "
        "shrunk by sigma_w^2 E[phi^2] < 1 per layer), the layers after it compute a constant.",
        symptoms=("the output's spread across the batch near 0", "predictions all one class"),
        fix_torch=_LINEAR_SNIPPET_HEAD
        + "model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))\n"
        "spread = model(torch.randn(64, 4)).std(0)  # near 0: collapsed\n"
        "for m in model:\n"
        "    if isinstance(m, nn.Linear):\n"
        "        nn.init.kaiming_normal_(m.weight, nonlinearity='relu'); nn.init.zeros_(m.bias)\n",
        fix_keras="re-create the model with he_normal kernels and zero biases; LeakyReLU; check the "
        "input pipeline feeds varied inputs.",
        side="vanishing",
    ),
    # -- causes ------------------------------------------------------------------------------
    Card(
        key=_C.SATURATING_ACTIVATIONS,
        title="Saturating activations stacked deep",
        what="Many sigmoid or tanh layers in a row, with nothing resetting the signal's scale between "
        "them.",
        where="Classic MLPs and autoencoders from before ReLU; gates used as hidden activations.",
        math="Each such layer multiplies the squared gradient by E[phi'(h)^2], at most 1/16 for sigmoid: "
        "the derivatives alone take at least 1.2 decades of squared norm per layer, 19 over sixteen "
        "layers. Weights large enough to make up for it push the units into saturation instead.",
        symptoms=("vanishing_gradient with the earliest layers hit hardest", "saturated_units"),
        fix_torch=_LINEAR_SNIPPET_HEAD
        + "old = nn.Sequential(nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 2))\n"
        "new = nn.Sequential(*[nn.ReLU() if isinstance(m, nn.Sigmoid) else m for m in old])\n"
        "for m in new:\n"
        "    if isinstance(m, nn.Linear):\n"
        "        nn.init.kaiming_normal_(m.weight, nonlinearity='relu')\n",
        fix_keras="activation='relu' (or 'gelu') in the hidden Dense layers with "
        "kernel_initializer='he_normal'; or BatchNormalization() before each sigmoid.",
        side="vanishing",
    ),
    Card(
        key=_C.DEPTH_WITHOUT_SKIP,
        title="Depth without skip connections",
        what="A long chain of weight layers with no residual path around them.",
        where="Plain deep MLPs and CNNs (VGG-style) beyond about 20 layers.",
        math="Even at a critical init (chi = 1) a plain chain's gradients decorrelate with depth "
        "(like 2^-L for ReLU, Balduzzi et al. 2017); a skip makes each block's Jacobian I + J, so the "
        "gradient has a path that is multiplied by nothing.",
        symptoms=("deep plain nets train worse than shallower ones (He et al. 2016)", "vanishing_gradient"),
        fix_torch=_LINEAR_SNIPPET_HEAD
        + "class Block(nn.Module):\n"
        "    def __init__(self, w):\n"
        "        super().__init__()\n"
        "        self.f = nn.Sequential(nn.Linear(w, w), nn.ReLU(), nn.Linear(w, w))\n"
        "    def forward(self, x):\n"
        "        return torch.relu(x + self.f(x))  # the skip\n"
        "model = nn.Sequential(*[Block(32) for _ in range(10)])\n"
        "y = model(torch.randn(4, 32))\n",
        fix_keras="x = layers.Add()([x, block(x)]) in the functional API.",
        side="both",
    ),
    Card(
        key=_C.INIT_MISMATCH,
        title="Initialisation that does not suit the activation",
        what="Weight scales away from the value at which the activation keeps the gradient's size "
        "from layer to layer.",
        where="PyTorch's default nn.Linear init (sigma_w^2 = 1/3) under ReLU; He init under tanh in a "
        "very deep net; custom inits.",
        math="The critical sigma_w^2 makes chi = 1: 2 for ReLU (He), 2/(1 + a^2) for LeakyReLU(a), 1 "
        "for tanh and linear. Away from it the gradient changes like chi^L; nets train to a depth of "
        "about 6 xi with xi = -1/ln chi (Schoenholz et al. 2017).",
        symptoms=("vanishing_gradient or exploding_gradient growing steadily with depth",),
        fix_torch=_LINEAR_SNIPPET_HEAD
        + "model = nn.Sequential(*[nn.Sequential(nn.Linear(32, 32), nn.ReLU()) for _ in range(20)])\n"
        "for m in model.modules():\n"
        "    if isinstance(m, nn.Linear):\n"
        "        nn.init.kaiming_normal_(m.weight, nonlinearity='relu')  # sigma_w^2 = 2\n"
        "        nn.init.zeros_(m.bias)\n",
        fix_keras="kernel_initializer='he_normal' for ReLU, 'glorot_normal' for tanh, 'lecun_normal' "
        "for SELU.",
        side="both",
    ),
    Card(
        key=_C.NO_NORMALIZATION,
        title="Deep and unnormalised",
        what="A deep net with no BatchNorm or LayerNorm, so nothing holds each layer's input at a "
        "fixed scale.",
        where="Deep MLPs and CNNs; sigmoid nets (Ioffe and Szegedy 2015 trained them with BatchNorm).",
        math="A normalisation resets the pre-activation variance q to 1 at every layer, so the "
        "forward map cannot drift into the saturated or the dead regime and chi stays where q = 1 puts it.",
        symptoms=("saturated_units or vanishing_gradient that appear as depth grows",),
        fix_torch=_LINEAR_SNIPPET_HEAD
        + "model = nn.Sequential(\n"
        "    nn.Linear(16, 64), nn.BatchNorm1d(64), nn.Sigmoid(),\n"
        "    nn.Linear(64, 64), nn.BatchNorm1d(64), nn.Sigmoid(),\n"
        "    nn.Linear(64, 10),\n"
        ")\n"
        "y = model(torch.randn(8, 16))\n",
        fix_keras="layers.BatchNormalization() (or LayerNormalization()) after each Dense/Conv, "
        "before its activation.",
        side="both",
    ),
    Card(
        key=_C.VANILLA_RNN_LONG_SEQUENCE,
        title="A vanilla RNN over long sequences",
        what="An nn.RNN (or a hand-written tanh cell) asked to carry information over many steps.",
        where="Language and time-series models with long contexts; the adding and copy tasks.",
        math="The gradient through time multiplies W_hh^T diag(tanh'(h_t)) per step: it vanishes when "
        "the largest singular value of W_hh is below 1 and may explode above it. Hochreiter and "
        "Schmidhuber (1997): plain BPTT solved no lag-100 task, LSTM all of them.",
        symptoms=("temporal_vanishing", "loss at the baseline of a model without memory"),
        fix_torch=_LINEAR_SNIPPET_HEAD
        + "rnn = nn.GRU(input_size=2, hidden_size=32, batch_first=True)  # instead of nn.RNN\n"
        "out, h = rnn(torch.randn(4, 100, 2))\n"
        "irnn = nn.RNN(2, 32, nonlinearity='relu', batch_first=True)\n"
        "with torch.no_grad():\n"
        "    irnn.weight_hh_l0.copy_(torch.eye(32))  # IRNN (Le, Jaitly and Hinton 2015)\n"
        "    irnn.bias_hh_l0.zero_()\n",
        fix_keras="keras.layers.LSTM or keras.layers.GRU instead of SimpleRNN; clipnorm=1.0 on the "
        "optimizer.",
        side="both",
    ),
    Card(
        key=_C.KEEP_GATE_CLOSED,
        title="Keep gate closed",
        what="An LSTM or GRU whose gate biases make it forget within the sequence, so the cell's "
        "additive path does not carry far.",
        where="LSTMs initialised with zero forget-gate bias (PyTorch's default) on long sequences.",
        math="The cell gradient is multiplied by the forget gate f_t per step; with f about "
        "sigmoid(0) = 0.5 it halves each step: 2^-50 across 50 steps. Chrono init sets the bias to "
        "log(U[1, T-1]) so memories last about T steps (Tallec and Ollivier 2018).",
        symptoms=("temporal_vanishing in an LSTM/GRU", "learns short lags only"),
        fix_torch=_LINEAR_SNIPPET_HEAD
        + "T = 100\n"
        "lstm = nn.LSTM(2, 16, batch_first=True)\n"
        "h = lstm.hidden_size\n"
        "with torch.no_grad():\n"
        "    b = torch.log(torch.empty(h).uniform_(1, T - 1))  # chrono init\n"
        "    lstm.bias_ih_l0[h:2 * h].copy_(b)\n"
        "    lstm.bias_ih_l0[:h].copy_(-b)\n"
        "    lstm.bias_hh_l0.zero_()\n",
        fix_keras="keras.layers.LSTM(units, unit_forget_bias=True); a custom bias_initializer for "
        "chrono init.",
        side="vanishing",
    ),
    Card(
        key=_C.NORM_GAIN_TOO_SMALL,
        title="Normalisation gain too small",
        what="BatchNorm/LayerNorm gains initialised far under 1, so the signal falls under the "
        "normalisations' eps and they stop normalising.",
        where="A config that draws normalisation weights like other weights, from N(0, 0.02) "
        "(Hugging Face's EfficientNet and MobileViT), with eps = 1e-3 or 1e-5.",
        math="A normalisation divides by sqrt(var + eps). Above eps a small gain cancels out along a "
        "chain; below it each layer passes gain * phi'(0) * sqrt(sigma_w^2 / eps) of its input: "
        "0.02 * 0.5 * sqrt(0.005 / 1e-3) = 0.02 per layer, 1e-29 over 20 layers, and the gradient "
        "shrinks by the same factors.",
        symptoms=("vanishing_gradient from the first step", "flat_loss at chance"),
        fix_torch=_LINEAR_SNIPPET_HEAD
        + "model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, eps=1e-3), nn.SiLU())\n"
        "for m in model.modules():\n"
        "    if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):\n"
        "        nn.init.ones_(m.weight)\n"
        "        nn.init.zeros_(m.bias)\n",
        fix_keras="keras.layers.BatchNormalization(gamma_initializer='ones') (the default); "
        "LayerNormalization likewise.",
        side="vanishing",
    ),
    Card(
        key=_C.STEP_SIZE_TOO_LARGE,
        title="Step size too large",
        what="Each update is large next to the weights it changes.",
        where="A learning rate tuned for another model, optimizer or batch size; no warm-up.",
        math="The update-to-weight ratio lr ||g|| / ||W|| above about 1e-1 (TheDeepChecker's band "
        "tops out there) rewrites a layer in a few steps; beyond lr = 2/lambda on the sharpest "
        "direction the loss grows.",
        symptoms=("diverging_loss", "dead_units appearing after large steps", "nonfinite_gradient"),
        fix_torch=_LINEAR_SNIPPET_HEAD
        + "model = nn.Linear(8, 1)\n"
        "opt = torch.optim.SGD(model.parameters(), lr=1.0)\n"
        "for g in opt.param_groups:\n"
        "    g['lr'] = 0.01\n"
        "model(torch.randn(4, 8)).sum().backward()\n"
        "torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n"
        "opt.step()\n",
        fix_keras="a smaller learning_rate; clipnorm or global_clipnorm on the optimizer; a warm-up "
        "schedule.",
        side="exploding",
    ),
    Card(
        key=_C.DEAD_RELU_BIAS,
        title="Biases that switch ReLUs off",
        what="ReLU layers whose biases sit so far below zero that most units never fire.",
        where="Custom bias inits; biases pushed down by large early updates.",
        math="A unit fires for inputs with w.a + b > 0; with b more than 3 standard deviations of w.a "
        "below zero it fires for under 0.14% of the inputs, and its gradient is zero otherwise.",
        symptoms=("dead_units", "constant_output in deep narrow nets"),
        fix_torch=_LINEAR_SNIPPET_HEAD
        + "layer = nn.Linear(16, 16)\n"
        "with torch.no_grad():\n"
        "    layer.bias.fill_(-5.0)  # dead from the start\n"
        "    layer.bias.zero_()      # the fix: zero (or small positive) biases\n"
        "y = torch.relu(layer(torch.randn(8, 16)))\n",
        fix_keras="bias_initializer='zeros' (or a small constant like 0.01); LeakyReLU.",
        side="vanishing",
    ),
    Card(
        key=_C.INPUT_NOT_STANDARDISED,
        title="Inputs not standardised",
        what="Input features far from mean 0 and variance 1: raw pixel values, prices, counts.",
        where="Any model fed raw data; every standard init assumes unit-scale inputs.",
        math="The first layer's pre-activation variance is sigma_w^2 mean(x^2): inputs 100 times too "
        "large put it 1e4 times too high, saturating tanh/sigmoid and making the weight directions "
        "1e4 times stiffer than the biases (LeCun et al. 1998, Efficient BackProp).",
        symptoms=("saturated_units or dead_units in the first layer", "flat_loss"),
        fix_torch=_LINEAR_SNIPPET_HEAD
        + "x = torch.rand(100, 5) * 255  # raw pixel values\n"
        "mean, std = x.mean(0), x.std(0)\n"
        "x = (x - mean) / std.clamp_min(1e-6)  # keep mean and std for the test data\n",
        fix_keras="keras.layers.Normalization(); norm.adapt(train_x) as the model's first layer.",
        side="both",
    ),
    Card(
        key=_C.TARGET_OUT_OF_RANGE,
        title="Targets outside the output's range",
        what="Targets a bounded output activation cannot produce, like 5.0 behind a sigmoid.",
        where="Regression heads ending in sigmoid or tanh; labels in the wrong encoding.",
        math="To approach an unreachable target the output unit is pushed deeper into saturation, "
        "where its derivative, and with it every gradient behind it, goes to 0.",
        symptoms=("saturated output units", "flat_loss well above 0"),
        fix_torch=_LINEAR_SNIPPET_HEAD
        + "y = torch.rand(32, 1) * 10\n"
        "head = nn.Linear(16, 1)  # no bounded activation on a regression output\n"
        "pred = head(torch.randn(32, 16))\n"
        "loss = nn.functional.mse_loss(pred, (y - y.mean()) / y.std())  # scaled targets\n",
        fix_keras="Dense(1) with activation=None for regression; rescale targets into the "
        "activation's range if it must stay.",
        side="vanishing",
    ),
    Card(
        key=_C.TARGET_SCALE,
        title="Regression targets of a huge scale",
        what="Targets orders of magnitude larger than what a freshly initialised output produces.",
        where="Prices, counts, physical quantities in raw units.",
        math="The MSE gradient at the output is 2 (pred - y)/n: targets of scale S make it S times "
        "larger than the step size was chosen for, so SGD overshoots (loss rises) or Adam, whose step "
        "is bounded, needs S times longer.",
        symptoms=("diverging_loss or exploding_gradient on a regression", "loss in the millions"),
        fix_torch=_LINEAR_SNIPPET_HEAD
        + "y = torch.randn(64, 1) * 1e4 + 5e4\n"
        "mu, sd = y.mean(), y.std()\n"
        "y_scaled = (y - mu) / sd  # train on this; predict pred * sd + mu\n",
        fix_keras="scale the targets (sklearn StandardScaler) and invert the scaling on the "
        "predictions.",
        side="exploding",
    ),
]

#: Every card by its key: every `Kind` and `CauseKind` value has one.
CARDS: dict[str, Card] = {str(c.key): c for c in _CARDS}


def card(name: str) -> Card:
    """The card for a Kind or CauseKind value (case, spaces and hyphens forgiven).

    Raises `GradwatchValueError` naming the valid choices.
    """
    from gradwatch._errors import GradwatchValueError

    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    if key in CARDS:
        return CARDS[key]
    raise GradwatchValueError(
        f"no card for {name!r}; choose one of: {', '.join(sorted(CARDS))}"
    )


def _wrap(text: str, indent: str = "  ") -> str:
    return textwrap.fill(text, width=92, initial_indent=indent, subsequent_indent=indent)


def render(c: Card, diagnosis: Diagnosis | None = None, run_name: str = "") -> str:
    """The card as text; with a `diagnosis`, followed by what the user's run shows for it."""
    kind_or_cause = "finding" if c.is_kind else "cause"
    lines = [f"{c.title}  ({kind_or_cause}: {c.key})", ""]
    for label, text in (("What it is", c.what), ("Where it occurs", c.where), ("The math", c.math)):
        lines += [f"{label}:", _wrap(text), ""]
    lines.append("Symptoms:")
    lines += [f"  - {s}" for s in c.symptoms]
    lines += ["", "Caused by:" if c.is_kind else "Can produce these findings:"]
    lines.append(_wrap(", ".join(c.related) or "-"))
    lines += ["", "Fix in PyTorch:"]
    lines += [f"    {line}" for line in c.fix_torch.rstrip().splitlines()]
    lines += ["", "Fix in Keras/TensorFlow:", _wrap(c.fix_keras), ""]
    lines.append(f"Vanishing vs exploding (this card: {c.side}):")
    w = max(len(r[0]) for r in CONTRAST)
    lines.append(f"  {'':<{w}}  {'vanishing':<48}  exploding")
    lines += [f"  {a:<{w}}  {v:<48}  {e}" for a, v, e in CONTRAST]
    if diagnosis is not None:
        lines += ["", *_run_section(c, diagnosis, run_name)]
    return "\n".join(lines)


def _evidence(e: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in e.items())


def _run_section(c: Card, d: Diagnosis, run_name: str) -> list[str]:
    head = f"In your run{f' ({run_name})' if run_name else ''}, {d.steps} steps looked at:"
    out = [head]
    if c.is_kind:
        found = d.by_kind(c.key)
        if not found:
            out.append(f"  no {c.key} finding: {'the run is healthy' if d.healthy else 'other findings only'}")
        for f in found:
            out.append(f"  {f}")
            out.append(f"    layers: {', '.join(f.layers[:8]) or '-'}{' ...' if len(f.layers) > 8 else ''}")
            out.append(f"    evidence: {_evidence(f.evidence)}")
            if f.causes:
                out.append(f"    causes: {', '.join(f.causes)}")
    else:
        causes = [x for x in d.causes if str(x.kind) == c.key]
        if not causes:
            out.append(f"  {c.key} is not among the causes found")
        for x in causes:
            out.append(f"  [{x.score:.2f}] {x}")
            out.append(f"    evidence: {_evidence(x.evidence)}")
            behind = [str(f) for f in d.findings if c.key in f.causes]
            out += [f"    behind: {b}" for b in behind]
    return out
