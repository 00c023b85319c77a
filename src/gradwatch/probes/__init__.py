"""Measurements taken on the training step, kept on the device until one transfer per record."""

from gradwatch.probes.grads import GradientProbe
from gradwatch.probes.transfer import Transfer

__all__ = ["GradientProbe", "Transfer"]
