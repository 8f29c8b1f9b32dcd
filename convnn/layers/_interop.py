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
from convnn.layers._linear import Bilinear, Linear
from convnn.layers._module import Frozen
from convnn.layers._norm import BatchNorm

for _cls in (ConvTranspose1d, ConvTranspose2d, ConvTranspose3d):
    interop._register_layer(
        _cls,
        lambda m: {"weight": ("weight", interop._MlxConvTransposeWeight(int(m.groups)))},
    )
for _cls in (Conv1d, Conv2d, Conv3d):
    interop._register_layer(_cls, lambda m: {"weight": ("weight", interop._MlxConvWeight())})
interop._register_variable_type(Frozen)


class _BilinearWeight(interop._Same):
    """``Bilinear.weight`` ``(out, in2, in1)`` (MLX); ``torch.nn.Bilinear``: ``(out, in1, in2)``."""

    def torch_shape(self, shape):
        return (shape[0], shape[2], shape[1])

    def from_torch(self, a):
        return a.transpose(0, 2, 1)


# The other new layers already have PyTorch's names and layouts (Linear's weight is (out, in)).
interop._register_layer(Bilinear, lambda m: {"weight": ("weight", _BilinearWeight())})
interop._register_layer(BatchNorm, lambda m: {}, batch_norm=True)
interop._register_layer(Linear, lambda m: {}, linear=True)
