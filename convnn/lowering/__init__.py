"""How each convolution is computed.

The functional API canonicalises its arguments into a :class:`ConvSpec` (non-negative padding,
channels-last input ``(N, *spatial, C_in)``, weight ``(C_out, *kernel, C_in // groups)``) and
calls :func:`dispatch`, which picks a strategy.
"""

from convnn.lowering._spec import ConvSpec
from convnn.lowering._xla import conv_xla


def dispatch(x, w, spec: ConvSpec):
    """Computes the convolution described by ``spec`` with the strategy in force."""
    return conv_xla(x, w, spec)


__all__ = ["ConvSpec", "dispatch", "conv_xla"]
