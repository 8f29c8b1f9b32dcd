"""MLX and PyTorch, the optional second opinions.

Outside CI they may be missing: a test that needs one skips with a reason. ``.ci/run`` sets
``CONVNN_REQUIRE_REFERENCES=1``, which turns a missing library into a failure, so CI can never
skip them silently.

Tests take them as fixtures (``mx``, ``mnn``, ``torch``, ``tnn``, ``F``; see ``conftest.py``).
A module entirely about one of them (named ``*_mlx.py`` / ``*_torch.py``) imports it at its top
with :func:`require` and marks itself::

    mx = require("mlx.core")
    pytestmark = pytest.mark.mlx
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os

import pytest

REQUIRED = os.environ.get("CONVNN_REQUIRE_REFERENCES", "") not in ("", "0")

#: Fixture name -> (module, marker). A test that uses the fixture gets the marker.
FIXTURES = {
    "mx": ("mlx.core", "mlx"),
    "mnn": ("mlx.nn", "mlx"),
    "torch": ("torch", "torch"),
    "tnn": ("torch.nn", "torch"),
    "F": ("torch.nn.functional", "torch"),
}

#: Marker -> the distribution that provides it (for the report header).
DISTRIBUTIONS = {"mlx": "mlx", "torch": "torch"}


def require(module: str):
    """Imports an optional reference library, or skips (fails under CONVNN_REQUIRE_REFERENCES).

    Works in a test, a fixture and at the top of a module.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        message = f"reference library {module!r} is not installed ({err})"
        if REQUIRED:
            pytest.fail(f"{message}; CONVNN_REQUIRE_REFERENCES is set", pytrace=False)
        pytest.skip(message, allow_module_level=True)


def versions() -> str:
    """One line for pytest's header: each reference's version or "missing"."""
    parts = []
    for dist in DISTRIBUTIONS.values():
        try:
            parts.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{dist} missing")
    mode = "required (CONVNN_REQUIRE_REFERENCES)" if REQUIRED else "optional"
    return f"references: {', '.join(parts)}; {mode}"
