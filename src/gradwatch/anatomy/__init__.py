"""The model's map: its layers (modules that own parameters) in execution order."""

from gradwatch.anatomy.map import Anatomy, Layer, fan_in_of

__all__ = ["Anatomy", "Layer", "fan_in_of"]
