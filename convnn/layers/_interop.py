"""How convnn's layers map onto MLX weight files and PyTorch state dicts.

``convnn.interop`` walks a model and converts each variable by its layer's rules; this module
registers the rules of convnn's layers (their parameters already have MLX's names and layouts,
so only PyTorch's layouts differ) and the variable types that take part.
"""

from __future__ import annotations

from convnn import interop
from convnn.layers._conv import (
    Conv1d,
    Conv2d,
    Conv3d,
    ConvTranspose1d,
    ConvTranspose2d,
    ConvTranspose3d,
)
from convnn.layers._module import Frozen

for _cls in (ConvTranspose1d, ConvTranspose2d, ConvTranspose3d):
    interop._register_layer(
        _cls,
        lambda m: {"weight": ("weight", interop._MlxConvTransposeWeight(int(m.groups)))},
    )
for _cls in (Conv1d, Conv2d, Conv3d):
    interop._register_layer(_cls, lambda m: {"weight": ("weight", interop._MlxConvWeight())})
interop._register_variable_type(Frozen)
