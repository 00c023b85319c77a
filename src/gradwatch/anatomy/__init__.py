"""The model's map: its layers (modules that own parameters) in execution order, and its structure.

`map` lists the layers, `structure` what follows and bypasses each one, `order` the leaf
modules and functional activations in the order they run (what model surgery reads).
"""

from gradwatch.anatomy.map import Anatomy, Layer, fan_in_of
from gradwatch.anatomy.structure import Structure, analyse

__all__ = ["Anatomy", "Layer", "Structure", "analyse", "fan_in_of"]
