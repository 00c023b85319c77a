"""Explaining: causes from the model's structure, the theory of gradient gain, and `inspect`.

- `causes.find_causes(anatomy, structure, timeline)`: ranked `Cause`s, one rule per `CauseKind`.
- `link(diagnosis, anatomy, structure, timeline)`: fills ``diagnosis.causes`` and each
  ``finding.causes``; `explain` is the never-raising form the watcher and runs use.
- `theory`: mean-field forward map, per-layer gain chi, predicted gradient norms,
  Jacobian spectra.
- `inspect(model, example_input, loss_fn=None)`: all of it before training.
"""

from gradwatch.explain.causes import CAUSES, find_causes
from gradwatch.explain.inspect import inspect
from gradwatch.explain.link import RELATED, explain, link, structure_facts

__all__ = ["CAUSES", "RELATED", "explain", "find_causes", "inspect", "link", "structure_facts"]
