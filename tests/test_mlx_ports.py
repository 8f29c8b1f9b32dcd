"""MLX model code runs unchanged on convnn: four MLX models, ported by renaming the imports.

Each file in ``tests/mlx_models/`` is an MLX program. The port changes only

* ``import mlx.core as mx`` -> ``import jax.numpy as jnp``,
* ``import mlx.nn as nn`` -> ``import convnn.layers as nn``,
* ``mx.<function>`` -> ``jnp.<function>``;

the test checks with ``difflib`` that nothing else differs, then builds both models, loads the
MLX weights into the convnn model strictly (from a ``.safetensors`` file that MLX wrote), and
compares outputs in training and evaluation mode, the gradients of every parameter, and the
parameters and BatchNorm running statistics after several SGD steps, to 1e-5 relative (float32).

The transformer's comparison is in the fast tier; the three convolutional models (about a minute
each on two CPU cores, mostly compilation) are marked ``slow``. The tests run JAX with its
default promotion rules (the suite's strict rank and dtype promotion would refuse MLX's implicit
broadcasting, ``x + bias``), as a user's program would.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import types
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from mlx_compare import assert_rel, mlx_flat, nnx_flat

import convnn.layers as cnn

MODELS = Path(__file__).parent / "mlx_models"
NAMES = ["resnet", "unet", "audio", "transformer"]
RTOL = 1e-5
STEPS = 3
LR = 0.05

_IMPORTS = {
    "import mlx.core as mx": "import jax.numpy as jnp",
    "import mlx.nn as nn": "import convnn.layers as nn",
}


def port(source: str) -> str:
    """The convnn version of an MLX program: the two imports and ``mx.`` -> ``jnp.``."""
    for old, new in _IMPORTS.items():
        source = source.replace(old, new)
    return re.sub(r"\bmx\.", "jnp.", source)


def changed_lines(old: str, new: str) -> list[tuple[str, str]]:
    """The pairs of lines that differ; fails on inserted or deleted lines."""
    a, b = old.splitlines(), new.splitlines()
    pairs = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        assert tag == "replace" and i2 - i1 == j2 - j1, f"lines added or removed: {a[i1:i2]}"
        pairs.extend(zip(a[i1:i2], b[j1:j2], strict=True))
    return pairs


def _load(source: str, name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__file__ = str(MODELS / f"{name}.py")
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


@contextlib.contextmanager
def _default_promotion():
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        yield


def _loss_mlx(out, target):
    return ((out - target) ** 2).mean()


def _target(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("name", NAMES)
def test_port_changes_only_imports_and_mx_calls(name):
    source = (MODELS / f"{name}_mlx.py").read_text()
    ported = port(source)
    pairs = changed_lines(source, ported)
    assert pairs, "the model uses MLX"
    for old, new in pairs:
        if old in _IMPORTS:
            assert new == _IMPORTS[old]
        else:
            assert "mx." in old and new == re.sub(r"\bmx\.", "jnp.", old), (old, new)
    # what a port must not need: rngs plumbing, NNX containers, argument fixes
    for word in ("rngs", "nnx", "Rngs", "momentum", "epsilon"):
        assert word not in ported
    lines = len(source.splitlines())
    print(f"{name}: {len(pairs)} of {lines} lines changed")


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_port_matches_mlx(mx, mnn, name, tmp_path):
    optim = pytest.importorskip("mlx.optimizers")
    source = (MODELS / f"{name}_mlx.py").read_text()
    mlx_module = _load(source, f"{name}_mlx")
    rng = np.random.default_rng(0)
    inputs = mlx_module.example_inputs(rng)

    # MLX: build, run once (a first BatchNorm update), save; then a training-mode output and
    # STEPS steps of SGD, keeping the first step's gradients; then an evaluation-mode output
    mx.random.seed(0)
    mlx_model = mlx_module.build()
    m_inputs = [mx.array(a) for a in inputs]
    target = _target(rng, mlx_model(*m_inputs).shape)
    path = os.fspath(tmp_path / "weights.safetensors")
    mlx_model.save_weights(path)
    out_train_m = np.array(mlx_model(*m_inputs))
    opt_m = optim.SGD(learning_rate=LR)
    step_m = mnn.value_and_grad(mlx_model, lambda *a: _loss_mlx(mlx_model(*a), target))
    for i in range(STEPS):
        loss, grads = step_m(*m_inputs)
        if i == 0:
            loss_m, grads_m = loss.item(), mlx_flat(grads)
        opt_m.update(mlx_model, grads)
        mx.eval(mlx_model.parameters(), opt_m.state)
    params_m = mlx_flat(mlx_model.parameters())
    mlx_model.eval()
    out_eval_m = np.array(mlx_model(*m_inputs))

    # convnn: the same from the ported source, loading the weights MLX saved
    with _default_promotion():
        module = _load(port(source), f"{name}_convnn")
        cnn.seed(1)  # other initial weights: everything below comes from the file
        model = module.build()
        model.load_weights(path)  # strict: every key, every shape
        j_inputs = [jax.numpy.asarray(a) for a in inputs]
        optimizer = nnx.Optimizer(model, optax.sgd(LR), wrt=nnx.Param)
        forward = nnx.jit(lambda model, *args: model(*args))

        @nnx.jit
        def step(model, optimizer, *args):
            def loss_fn(model):
                return ((model(*args) - target) ** 2).mean()

            loss, grads = nnx.value_and_grad(loss_fn)(model)
            optimizer.update(model, grads)
            return loss, grads

        out_train = forward(model, *j_inputs)
        for i in range(STEPS):
            loss, grads = step(model, optimizer, *j_inputs)
            if i == 0:
                loss0, grads0 = float(loss), nnx_flat(grads)
        params = mlx_flat(model.parameters())
        model.eval()
        out_eval = forward(model, *j_inputs)

    assert_rel(out_train, out_train_m, RTOL, "output (train)")
    assert_rel(loss0, loss_m, RTOL, "loss")
    assert sorted(grads0) == sorted(grads_m)
    # a gradient array below 1e-3 of the model's largest gradient is judged at that scale: one
    # that vanishes in exact arithmetic (a key projection's bias under softmax) is rounding noise
    zero = 1e-3 * max(float(np.abs(g).max()) for g in grads_m.values())
    for key in grads_m:
        assert_rel(grads0[key], grads_m[key], RTOL, f"gradient {key}", floor=zero)
    assert sorted(params) == sorted(params_m)  # parameters and BatchNorm statistics
    for key in params_m:
        assert_rel(params[key], params_m[key], RTOL, f"after {STEPS} steps: {key}")
    assert_rel(out_eval, out_eval_m, RTOL, "output (eval)")
