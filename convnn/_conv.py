"""Former home of the private general convolution, kept for code that imports its names.

The checks and derived sizes of a call are in :mod:`convnn._plan` (one pure function), and
running it, with the one cache of eager calls, is in :mod:`convnn._dispatch`.
"""

from __future__ import annotations

from convnn._dispatch import EAGER, clear_caches
from convnn._dispatch import conv as _conv
from convnn._plan import _check_operands, resolve_stream

__all__ = ["conv", "resolve_stream", "clear_caches", "EAGER", "EAGER_CACHE"]


def conv(fn, input, weight, *, n=None, stride=1, padding=0, kernel_dilation=1, input_dilation=1,
         groups=1, flip=False, output_padding=0, stream=None, precision=None,
         preferred_element_type=None):
    """The convolution named ``fn`` (``n`` is implied by ``fn`` and ignored)."""
    del n
    return _conv(fn, input, weight, stride, padding, kernel_dilation, input_dilation, groups,
                 flip, output_padding, stream, precision, preferred_element_type)


class _EagerCacheView:
    """The eager calls' cache under its former name: its size, and :func:`clear_caches`."""

    def clear(self) -> None:
        clear_caches()

    def __len__(self) -> int:
        return EAGER._cache_size()


EAGER_CACHE = _EagerCacheView()
_ = _check_operands
