"""A griffe extension for the API reference: reads convnn's docstrings as they are written.

convnn's docstrings are Google style with reST inline roles (as Sphinx would read them) and an
``Example:`` section of doctests. Griffe's Google parser knows the section as ``Examples:`` (the
singular is rendered as a plain admonition, so ``>>>`` lines would become Markdown quotes), and
Markdown has no ``:func:`` role. This extension rewrites both before the docstrings are parsed:
``Example:`` becomes ``Examples:`` and ``:func:`~convnn.conv2d``` becomes ```convnn.conv2d```.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_ROLE = re.compile(r":(?:func|class|meth|data|attr|mod|obj|exc):`~?([^`]+)`")


def rewrite(text: str) -> str:
    """Returns ``text`` with ``Example:`` headers and reST roles rewritten for Markdown."""
    return _ROLE.sub(r"`\1`", _EXAMPLE.sub(r"\1Examples:", text))


class ConvnnDocstrings(griffe.Extension):
    """Rewrites every docstring that griffe loads (visited or inspected)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
