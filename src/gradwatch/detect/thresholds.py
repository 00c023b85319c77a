"""Every number the detectors decide by, in one place (documented in docs/detectors.md).

Counts of *records* are recording steps (one every `every` training steps); counts of
*steps* are training steps (the loss is kept for every step).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Thresholds:
    #: How many of the most recent recording steps summarise a layer in its report.
    report_window: int = 10

    # -- persistence ----------------------------------------------------------------------
    #: A gradient condition must hold on this many consecutive records to count, and on at
    #: least this many of the last ``2 * persist - 1`` records to be "still holding": one
    #: noisy minibatch neither raises nor clears a finding.
    persist: int = 3

    # -- the loss -------------------------------------------------------------------------
    #: Fewer finite losses than this: no verdict on the loss (the status is "unknown").
    loss_min_steps: int = 30
    #: The starting loss is the median of the first this many losses.
    loss_head: int = 10
    #: The recent loss is the median of the last `loss_tail_frac` of the losses; the trend
    #: compares it with the window of the same length just before it...
    loss_tail_frac: float = 0.2
    #: ...a window of at least this many losses (fewer make a noisy median)...
    loss_tail_min: int = 20
    #: ...and at most this many, so a long run is judged on its recent past.
    loss_tail_max: int = 200
    #: Stuck: the recent loss is within this fraction of the starting loss (it fell by less
    #: than 10% of its value), or within `chance_tolerance` of chance...
    stuck_progress: float = 0.1
    #: ...and has been flat for at least this many steps. Chosen so that a problem present
    #: from the start is called within ~100 steps at the default recording interval.
    flat_min_steps: int = 60
    #: Converged: the recent loss is below this fraction of the starting loss (or of the
    #: chance level): a flat loss there is a finished run, not a stuck one.
    converged_frac: float = 0.05
    #: A starting loss within this fraction of ln(C), for a model whose last layer has C >= 2
    #: outputs, is taken to be the cross-entropy of guessing (C classes).
    chance_tolerance: float = 0.15
    #: Diverging: the recent loss is this fraction above the starting loss...
    diverge_rise: float = 0.25
    #: ...or the run has given back at least this share of the progress it had made.
    diverge_giveback: float = 0.5
    #: An improvement must exceed this many standard errors of the recent window's median
    #: (estimated from the losses' spread) to count as one.
    trend_sigmas: float = 3.0
    #: Slow: a loss that still improves, but whose current pace would need more than this
    #: many times the steps run so far to reach convergence (`converged_frac` of its start
    #: or of chance). Loss curves decelerate, so the current pace is an optimistic guess: a
    #: run it calls slow is slower still.
    slow_pace: float = 10.0
    #: Lost time: a fault that held persistently for more than this share of the recorded
    #: steps and then cleared left the run under half its steps to learn what it blocked;
    #: it is reported (a `warning`) unless the loss converged all the same.
    lost_time_share: float = 0.5

    # -- gradients across depth ---------------------------------------------------------
    #: Vanishing: a layer's gradient relative to its weights is below this fraction of the
    #: last layer's. At 1e-3 a layer learns a thousand times slower than the head under SGD.
    vanish_ratio: float = 1e-3
    #: With no loss to judge by, only a ratio below this is reported above `info`; the
    #: probing pass of `gw.inspect` (one backward pass at initialisation) reports a first-
    #: to-last gap past it, or past its inverse (`detect.probing`).
    vanish_ratio_blind: float = 1e-6
    #: Exploding: a layer's relative gradient is above this multiple of the last layer's.
    explode_ratio: float = 1e2
    #: A growth through depth must be a trend: in at least this share of the chain's layer
    #: pairs the layer nearer the input has the larger relative gradient (one outlier layer,
    #: a tiny-weight embedding, makes about one half).
    depth_trend: float = 0.75
    #: Chaotic phase: a plain chain (no skip, no normalisation) on such a trend whose first
    #: layers receive over this many decades more relative gradient than the last one. In
    #: the ordered or critical phase the ratio stays flat or falls towards the input.
    chaotic_decades: float = 1.0
    #: Dead band: once a vanishing or exploding condition across depth has held
    #: persistently, it clears only when the ratio has moved back by more than this many
    #: decades (an exploding ratio that fell below 100 / 10**0.5 ~ 32), so a ratio near its
    #: threshold does not flicker in and out of a finding.
    release_decades: float = 0.5

    # -- gradients through time (recurrent layers) ----------------------------------------
    #: The share of a sequence, at each end, averaged to compare early and late time steps.
    time_edge_frac: float = 0.1
    #: Temporal vanishing: the gradient reaching the steps farthest from where the loss
    #: enters is below this fraction of the gradient there (the earliest steps against the
    #: latest for an end readout; the same bar as `vanish_ratio`, across time).
    time_reach: float = 1e-3

    # -- updates ----------------------------------------------------------------------------
    #: Stalled: every layer's update is below this fraction of its weights per step; at
    #: 1e-5 the weights need 1e5 steps to change by their own size.
    stall_update_ratio: float = 1e-5
    #: Small: every layer's update is below this fraction of its weights per step, the
    #: bottom of TheDeepChecker's healthy band (10^-4 to 10^-1): the weights need over 1e4
    #: steps to change by their own size. Reported when the loss is not converging either.
    small_update_ratio: float = 1e-4
    #: Set apart: a layer whose update ratio is this many decades below the median of the
    #: other layers'...
    set_apart_decades: float = 3.0
    #: ...while its gradient relative to its weights is within this many decades of theirs:
    #: the optimizer gives it a far smaller step for a gradient like theirs (a parameter
    #: group's learning rate).
    set_apart_grad_decades: float = 1.0
    #: Large: the median layer's update is at least this fraction of its weights per step,
    #: the top of TheDeepChecker's healthy band. Sustained while the loss does not improve,
    #: the step size is too large.
    large_update_ratio: float = 1e-1

    # -- activations (Part 2 metrics) ----------------------------------------------------
    #: Dead: the share of a ReLU site's units that never switch on over a batch.
    dead_frac: float = 0.5
    #: Saturated: the share of a saturating site's outputs whose derivative is below 1% of
    #: its maximum.
    saturated_frac: float = 0.5
    #: Saturated, by the gradient passed: a hidden saturating site whose outputs' mean
    #: derivative, over its peak (sigmoid'(0) = 1/4, tanh'(0) = 1), is below this share: its
    #: units pass on less than a quarter of the gradient that units at their centre would
    #: (pre-activations with a standard deviation of ~3 for tanh, ~7 for sigmoid), however
    #: few outputs sit in the tails. At unit scale the share is 0.6 (tanh), 0.83 (sigmoid).
    saturated_deriv_share: float = 0.25
    #: Lost capacity: a hidden site where at least this share of the units are dead, or of
    #: the outputs saturated, passes (next to) no gradient through nine units in ten: the
    #: layer learns with a tenth of its width, and every layer below it gets at most a tenth
    #: of the gradient. A falling loss does not make that harmless (`warning` unless the run
    #: converged).
    lost_capacity_frac: float = 0.9
    #: Constant output: the across-batch spread of the output, relative to its size.
    output_spread: float = 1e-3
    #: Escape: a measurement that defines a finding (the outputs' spread, the gradient's reach
    #: through time) rising steadily by over this many decades across the last `2 * persist`
    #: records is a run leaving its plateau along the direction that breaks its symmetry,
    #: which grows exponentially (`severity.escaping`): `info` while it rises.
    escape_decades: float = 1.0
