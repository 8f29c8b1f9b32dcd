"""convnn.models against torchvision: state-dict keys and shapes, and eval-mode logits.

torchvision is used where it imports; otherwise ``torchvision_ref`` supplies PyTorch copies of
its five definitions. Weights are random (nothing is downloaded): torchvision's initialisation,
then BatchNorm's running statistics set from one batch in training mode and the BatchNorm affine
parameters and ConvNeXt's layer scales drawn away from their initial 1/0/1e-6, so that every
layer contributes to the logits.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torchvision_ref
from flax import nnx

from convnn.interop import load_torch_state_dict
from convnn.models import MODELS
from convnn.models._common import run_chain

NAMES = list(MODELS)
FAST = {"resnet18"}  # the others compile for long on a small CPU: slow tier
NUM_CLASSES = 10
# Logits are compared with the PyTorch model run in float64 (the reference): convnn's float32
# logits may be off by at most ERR_FACTOR times PyTorch's own float32 error, or by RTOL of the
# largest logit, whichever is larger (random weights and BatchNorm statistics from one small
# batch make some of these networks ill-conditioned, EfficientNet-B0 most).
ERR_FACTOR = 4.0
RTOL = 2e-5


def _tier(names):
    return [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in names]


def _torch_model(torch, name):
    """A torchvision model in eval mode with random weights that exercise every layer."""
    torch.manual_seed(0)
    model = torchvision_ref.build(torch, name, NUM_CLASSES)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in bns:
            m.weight.uniform_(0.5, 1.5, generator=gen)
            m.bias.normal_(0.0, 0.1, generator=gen)
        for name_, p in model.named_parameters():
            if name_.endswith("layer_scale"):
                p.uniform_(0.5, 1.5, generator=gen)
        model.eval()  # dropout and stochastic depth off while the statistics are gathered
        for m in bns:  # running statistics = those of one batch
            m.momentum = 1.0
            m.train()
        model(torch.randn(8, 3, 32, 32, generator=gen))
        for m in bns:
            m.momentum = 0.1
    return model.eval()


def _abstract_model(name, conv="convnn", dtype=None):
    """The NNX model without drawing its initial parameters (a strict load sets all of them)."""
    model = nnx.eval_shape(lambda: MODELS[name](NUM_CLASSES, rngs=nnx.Rngs(0), conv=conv,
                                                dtype=dtype))
    rng = nnx.state(model, nnx.RngState)
    rng = jax.tree.map(
        lambda s: jax.random.key(0)
        if jnp.issubdtype(s.dtype, jax.dtypes.prng_key) else jnp.zeros(s.shape, s.dtype),
        rng,
    )
    nnx.update(model, rng)
    return model


def _reference_logits(torch, tmodel, x):
    """(float64 logits, PyTorch's float32 logits) for NHWC ``x``."""
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        low = tmodel(xt).numpy()
        tmodel.double()
        try:
            exact = tmodel(xt.double()).numpy()
        finally:
            tmodel.float()
    return exact, low


def _assert_logits_close(actual, exact, torch_low, what):
    scale = float(np.max(np.abs(exact)))
    assert scale > 1e-3, what  # the logits carry signal
    torch_err = float(np.max(np.abs(torch_low - exact)))
    err = float(np.max(np.abs(np.asarray(actual, np.float64) - exact)))
    bound = max(ERR_FACTOR * torch_err, RTOL * scale)
    assert err <= bound, (
        f"{what}: float32 logits off by {err:.3g} from the float64 reference; PyTorch's by "
        f"{torch_err:.3g}; scale {scale:.3g}"
    )


def _logits(model, x):
    graphdef, state = nnx.split(model)
    return jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, x)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_and_shapes_are_torchvisions(torch, name):
    model = _abstract_model(name)
    tmodel = torchvision_ref.build(torch, name, NUM_CLASSES)
    sd = tmodel.state_dict()
    result = load_torch_state_dict(model, sd)  # strict: every key and shape must match
    assert result == ([], [], [])
    n_params = sum(p.numel() for p in tmodel.parameters())
    assert sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) == n_params


@pytest.mark.parametrize("name", _tier(NAMES))
def test_eval_logits_equal_torchvisions(torch, name):
    tmodel = _torch_model(torch, name)
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    exact, torch_low = _reference_logits(torch, tmodel, x)
    model = _abstract_model(name)
    load_torch_state_dict(model, tmodel)
    model.eval()
    _assert_logits_close(_logits(model, jnp.asarray(x)), exact, torch_low, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_nnx_conv_variant_equals_torchvision_and_bf16_is_as_close_as_autocast(torch, name):
    """The benchmark's baseline (``conv="nnx"``) computes the same model; bf16 compute is as
    close to the float32 logits as PyTorch's bf16 autocast (random BatchNorm statistics from a
    small batch make these models sensitive to rounding, in both libraries)."""
    tmodel = _torch_model(torch, name)
    x = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype(np.float32)
    exact, torch_low = _reference_logits(torch, tmodel, x)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch_bf16 = tmodel(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).float().numpy()
    torch_bf16_err = float(np.max(np.abs(torch_bf16 - exact)))
    scale = float(np.max(np.abs(exact)))
    model = _abstract_model(name, conv="nnx")
    load_torch_state_dict(model, tmodel)
    model.eval()
    _assert_logits_close(_logits(model, jnp.asarray(x)), exact, torch_low, f"{name}, nnx.Conv")
    model = _abstract_model(name, dtype=jnp.bfloat16)
    load_torch_state_dict(model, tmodel)
    model.eval()
    # Flax's LayerNorm mixes bf16 and float32 inside, which the suite's strict promotion rejects
    # (nnx.LayerNorm itself, not this model); users run with JAX's standard promotion.
    with jax.numpy_dtype_promotion("standard"):
        low = _logits(model, jnp.asarray(x))
    assert low.dtype == jnp.bfloat16
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    err = float(np.max(np.abs(np.asarray(low, np.float64) - exact)))
    assert err < 2 * torch_bf16_err + 0.05 * scale, (
        f"{name}: bf16 logits off by {err}; PyTorch's autocast by {torch_bf16_err} (scale {scale})"
    )


@pytest.mark.slow
def test_train_mode_is_random_and_eval_mode_deterministic():
    model = _abstract_model("mobilenet_v2")
    params = nnx.state(model, nnx.Param)
    params = jax.tree.map(lambda s: jnp.full(s.shape, 0.05, s.dtype), params)
    nnx.update(model, params)
    nnx.update(model, jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype),
                                   nnx.state(model, nnx.BatchStat)))
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 32, 32, 3)), jnp.float32)
    model.train()
    features = jnp.ones((2, 1280), jnp.float32)
    a, b = np.asarray(model.classifier(features)), np.asarray(model.classifier(features))
    assert not np.array_equal(a, b)  # dropout draws a new mask per call
    model.eval()
    np.testing.assert_array_equal(np.asarray(_logits(model, x)), np.asarray(_logits(model, x)))


def test_bad_conv_name_is_a_value_error():
    with pytest.raises(ValueError, match=r"\[ResNet\] conv must be one of"):
        MODELS["resnet18"](rngs=nnx.Rngs(0), conv="lax")


@pytest.mark.parametrize("conv", ["convnn", "nnx"])
def test_train_mode_batch_statistics_follow_pytorch(torch, conv):
    """Train mode normalises with the batch statistics and moves the running statistics as
    PyTorch does (momentum 0.1). The ``nnx`` form's running variance differs by design: PyTorch
    (and convnn's BatchNorm) store the unbiased batch variance, Flax's BatchNorm the biased one."""
    tmodel = _torch_model(torch, "resnet18")
    model = _abstract_model("resnet18", conv)
    load_torch_state_dict(model, tmodel)
    x = np.random.default_rng(3).standard_normal((4, 32, 32, 3)).astype(np.float32)
    tmodel.train()
    with torch.no_grad():
        expected = tmodel(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    model.train()
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, x):
        model = nnx.merge(graphdef, state)
        return model(x), nnx.state(model)

    actual, state = forward(state, jnp.asarray(x))
    nnx.update(model, state)
    scale = float(np.max(np.abs(expected)))
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-4, atol=1e-4 * scale)
    names = ["running_mean", "running_var"] if conv == "convnn" else ["mean"]
    for ours, theirs in [(model.bn1, tmodel.bn1),
                         (model.layer4.layers[1].bn2, tmodel.layer4[1].bn2)]:
        for name in names:
            want = getattr(theirs, name if name != "mean" else "running_mean").numpy()
            got = np.asarray(getattr(ours, name)[...])
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_loaded_parameters_do_not_share_memory_with_the_torch_tensors(torch):
    model = nnx.Sequential(nnx.Linear(64, 64, rngs=nnx.Rngs(0)))
    sd = {"0.weight": torch.zeros(64, 64), "0.bias": torch.zeros(64)}
    load_torch_state_dict(model, sd)
    sd["0.bias"].add_(1.0)  # PyTorch updates in place (optimizers, BatchNorm statistics)
    assert float(jnp.abs(model.layers[0].bias[...]).max()) == 0.0


@pytest.mark.slow
def test_fused_batchnorms_train_like_pytorch(torch):
    """MobileNetV2's BatchNorms that feed depthwise convolutions run as their prologues
    (``run_chain``): in train mode the features and the running statistics of such a
    BatchNorm follow PyTorch's (the classifier's dropout is left out: it draws its own mask)."""
    tmodel = _torch_model(torch, "mobilenet_v2")
    model = _abstract_model("mobilenet_v2")
    load_torch_state_dict(model, tmodel)
    x = np.random.default_rng(4).standard_normal((4, 32, 32, 3)).astype(np.float32)
    tmodel.train()
    once = copy.deepcopy(tmodel)  # _reference_logits runs the model twice (float32, float64)
    with torch.no_grad():
        once.features(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    exact, low = (a.transpose(0, 2, 3, 1) for a in _reference_logits(torch, tmodel.features, x))
    model.train()
    graphdef, state = nnx.split(model)

    @jax.jit
    def features(state, x):
        model = nnx.merge(graphdef, state)
        return run_chain(model.features.layers, x), nnx.state(model)

    actual, state = features(state, jnp.asarray(x))
    nnx.update(model, state)
    # Four images: the last blocks' batch statistics (of 4 values per channel) magnify
    # rounding, PyTorch's float32 as much as ours; both against PyTorch's float64.
    _assert_logits_close(actual, exact, low, "mobilenet_v2 features, train mode")
    ours = model.features.layers[2].conv.layers[0].layers[1]  # the expansion's, fed to the dw
    theirs = once.features[2].conv[0][1]
    for name in ("running_mean", "running_var"):
        np.testing.assert_allclose(np.asarray(getattr(ours, name)[...]),
                                   getattr(theirs, name).numpy(), rtol=1e-4, atol=1e-5)
