"""Strict JAX settings, the test tiers and the optional second opinions (MLX, PyTorch).

Two CPU devices are simulated so that ``stream=`` placement can be checked without a GPU.

Tiers (markers registered in ``pyproject.toml``): a plain ``pytest`` runs the fast tier (every
test not marked ``slow``); ``pytest -m slow`` runs the rest and ``pytest -m "slow or not slow"``
everything. MLX and PyTorch are second opinions (``references.py``): tests that need them take the
``mx``/``mnn``/``torch``/``tnn``/``F`` fixtures (or call :func:`require`), are marked
``mlx``/``torch`` automatically, and skip with a reason where the library is missing, unless
``CONVNN_REQUIRE_REFERENCES=1`` (set by ``.ci/run``) makes a missing reference an error.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402
from references import FIXTURES, require, versions  # noqa: E402, F401 (require: re-exported)

# CI replays a fixed sequence of examples (a verdict that cannot change between runs of the same
# commit); elsewhere the property tests explore new examples on every run.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


def _reference_fixture(module):
    @pytest.fixture(scope="session")
    def fixture():
        return require(module)

    fixture.__doc__ = f"{module}, or a skip (a failure under CONVNN_REQUIRE_REFERENCES)."
    return fixture


for _name, (_module, _marker) in FIXTURES.items():
    globals()[_name] = _reference_fixture(_module)


@pytest.fixture(autouse=True)
def _references_seeded(request):
    """Every test that builds MLX or PyTorch layers starts from the library's random generator
    seeded at 0, so that their initial weights, and a comparison's verdict, are the same in
    every run and whatever ran before (unseeded, a float32 comparison failed once)."""
    used = set(request.fixturenames)
    if used & {"mx", "mnn"}:
        require("mlx.core").random.seed(0)
    if used & {"torch", "tnn", "F"}:
        require("torch").manual_seed(0)


def pytest_report_header(config):
    return versions()


def pytest_collection_modifyitems(config, items):
    for item in items:
        for name in getattr(item, "fixturenames", ()):
            if name in FIXTURES:
                item.add_marker(getattr(pytest.mark, FIXTURES[name][1]))
