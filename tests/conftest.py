"""Strict JAX settings, the test tiers and the optional second opinions (MLX, PyTorch).

Two CPU devices are simulated so that ``stream=`` placement can be checked without a GPU.

Tiers (markers registered in ``pyproject.toml``): a plain ``pytest`` runs the fast tier (every
test not marked ``slow``); ``pytest -m "slow or not slow"`` runs everything. MLX and PyTorch are
second opinions: tests that need them take the ``mx``/``mnn``/``torch`` fixtures (or call
:func:`require`), are marked ``mlx``/``torch`` automatically, and skip with a reason where the
library is missing, unless ``CONVNN_REQUIRE_REFERENCES=1`` (set by ``.ci/run``) makes a missing
reference an error.
"""

import importlib
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

REQUIRE_REFERENCES = os.environ.get("CONVNN_REQUIRE_REFERENCES", "") not in ("", "0")

#: Fixture name -> (module, marker). A test that uses the fixture gets the marker.
_REFERENCES = {
    "mx": ("mlx.core", "mlx"),
    "mnn": ("mlx.nn", "mlx"),
    "torch": ("torch", "torch"),
    "tnn": ("torch.nn", "torch"),
    "F": ("torch.nn.functional", "torch"),
}


def require(module: str):
    """Imports an optional reference library, or skips (fails under CONVNN_REQUIRE_REFERENCES)."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        message = f"reference library {module!r} is not installed ({err})"
        if REQUIRE_REFERENCES:
            pytest.fail(f"{message}; CONVNN_REQUIRE_REFERENCES is set", pytrace=False)
        pytest.skip(message)


def _reference_fixture(module):
    @pytest.fixture(scope="session")
    def fixture():
        return require(module)

    return fixture


for _name, (_module, _marker) in _REFERENCES.items():
    globals()[_name] = _reference_fixture(_module)


def pytest_collection_modifyitems(config, items):
    for item in items:
        for name in getattr(item, "fixturenames", ()):
            if name in _REFERENCES:
                item.add_marker(getattr(pytest.mark, _REFERENCES[name][1]))
