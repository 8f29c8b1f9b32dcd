"""Weight interop: PyTorch state dicts and MLX weight files into NNX models, and back to MLX.

Tiers:
  1. layouts: each PyTorch/Flax/MLX weight layout conversion checked through the computation it
     feeds (a convolution or matmul computed by PyTorch or MLX against convnn's functional API);
  2. whole models: a PyTorch CNN (residual blocks, batch norm, grouped and strided transposed
     convolutions, max pooling, linear head) and MLX models give the same outputs after porting;
  3. contracts: strict-mode errors list every problem and leave the model unchanged; strict=False;
     round trips, dtypes, shared modules, num_batches_tracked, bad arguments.

The PyTorch modules are built in float32 explicitly (another test module changes torch's default
dtype). BatchNorm statistics are set to random values first so that they matter.
"""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tolerances import assert_close

from convnn import layers
from convnn._flax_compat import List, get_value, set_value
from convnn.interop import LoadResult, load_mlx_weights, load_torch_state_dict, save_mlx_weights

pytestmark = pytest.mark.floor  # runs again at the version floor in CI


F32 = np.float32


def _nchw(x):
    return np.ascontiguousarray(np.moveaxis(x, -1, 1))


def _nhwc(x):
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))


def _build(make, seed=0):
    """``make()`` with seeded NumPy values in every parameter and statistic.

    The model is traced abstractly (``nnx.eval_shape``) and filled directly: JAX's eager random
    initialisers compile per shape, which costs seconds per layer on a small CPU.
    """
    model = nnx.eval_shape(make)
    rng = np.random.default_rng(seed)
    for path, node in nnx.iter_graph(model):
        if isinstance(node, (nnx.Param, nnx.BatchStat)):
            sds = get_value(node)
            if path[-1] == "var":
                value = rng.uniform(0.5, 2.0, sds.shape)
            else:
                value = rng.uniform(-0.5, 0.5, sds.shape)
            set_value(node, jnp.asarray(value, sds.dtype))
    return model


def _snapshot(model):
    state = nnx.state(model, (nnx.Param, nnx.BatchStat))
    return {k: np.array(get_value(v)) for k, v in nnx.to_flat_state(state)}


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))


def _randomize_torch(torch, module, seed):
    """Random affine parameters and running statistics for every norm layer."""
    tnn = torch.nn
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (tnn.BatchNorm1d, tnn.BatchNorm2d, tnn.LayerNorm, tnn.GroupNorm)):
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)
            if isinstance(m, (tnn.BatchNorm1d, tnn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


# ---------------------------------------------------------------------------------------------
# Tier 1: layouts, through the computations they feed
# ---------------------------------------------------------------------------------------------

# (n, in, out, kernel, stride, padding, output_padding, groups)
TRANSPOSE_CASES = [
    (1, 4, 6, (3,), 2, 1, 1, 1),
    (1, 6, 4, (2,), 3, 0, 2, 2),
    (2, 4, 6, (3, 2), 2, 1, 1, 2),
    (2, 6, 9, (3, 3), (2, 1), 1, (1, 0), 3),
    (3, 4, 4, (2, 3, 1), 2, 0, 1, 2),
]


@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=str)
def test_torch_conv_transpose_layer_matches_pytorch(case, torch, tnn):
    """A ConvTranspose layer loaded from PyTorch computes PyTorch's transposed convolution."""
    n, cin, cout, k, stride, padding, output_padding, groups = case
    tmod = getattr(tnn, f"ConvTranspose{n}d")(
        cin, cout, k, stride=stride, padding=padding, output_padding=output_padding,
        groups=groups).float()
    model = _build(lambda: getattr(layers, f"ConvTranspose{n}d")(
        cin, cout, k, stride=stride, padding=padding, output_padding=output_padding,
        groups=groups, rngs=nnx.Rngs(0)))
    load_torch_state_dict(model, tmod.state_dict())
    x = np.random.default_rng(n).standard_normal((2, cin, *(4,) * n)).astype(F32)
    expected = tmod(torch.from_numpy(x)).detach().numpy()
    assert_close(model(jnp.asarray(_nhwc(x))), _nhwc(expected), F32, what=str(case))


# (n, in, out, kernel, stride, padding, dilation, groups)
CONV_CASES = [
    (1, 4, 6, (3,), 1, 1, 1, 2),
    (2, 6, 4, (3, 2), 2, 1, (1, 2), 2),
    (2, 3, 6, (1, 1), 1, 0, 1, 3),
    (3, 4, 2, (2, 3, 2), 1, (1, 0, 1), 1, 1),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
@pytest.mark.parametrize("flavour", ["convnn", "flax"])
def test_torch_conv_layers_match_pytorch(case, flavour, torch, tnn):
    """convnn's Conv (MLX layout) and nnx.Conv (Flax layout) loaded from PyTorch's ConvNd."""
    n, cin, cout, k, stride, padding, dilation, groups = case
    tmod = getattr(tnn, f"Conv{n}d")(cin, cout, k, stride=stride, padding=padding,
                                     dilation=dilation, groups=groups).float()
    if flavour == "convnn":
        model = _build(lambda: getattr(layers, f"Conv{n}d")(
            cin, cout, k, stride=stride, padding=padding, dilation=dilation, groups=groups,
            rngs=nnx.Rngs(0)))
    else:
        pads = padding if isinstance(padding, tuple) else (padding,) * n
        model = _build(lambda: nnx.Conv(
            cin, cout, k, strides=stride, padding=[(p, p) for p in pads],
            kernel_dilation=dilation, feature_group_count=groups, rngs=nnx.Rngs(0)))
    load_torch_state_dict(model, tmod.state_dict())
    x = np.random.default_rng(n).standard_normal((2, cin, *(6,) * n)).astype(F32)
    expected = tmod(torch.from_numpy(x)).detach().numpy()
    assert_close(model(jnp.asarray(_nhwc(x))), _nhwc(expected), F32, what=f"{flavour} {case}")


@pytest.fixture(scope="module")
def torch_models(torch, tnn, F):
    """The PyTorch models (defined here: PyTorch is optional)."""

    class TorchFlaxLayers(tnn.Module):
        """Flax layers with their own names (Embed, norms, Linear) and convnn's GroupNorm."""

        def __init__(self):
            super().__init__()
            self.embed = tnn.Embedding(10, 8)
            self.ln = tnn.LayerNorm(8)
            self.gn = tnn.GroupNorm(2, 8)
            self.rms = tnn.RMSNorm(8, eps=1e-6)
            self.bn = tnn.BatchNorm1d(8)
            self.gn_convnn = tnn.GroupNorm(4, 8)
            self.head = tnn.Linear(8, 5)

        def forward(self, ids):
            x = self.ln(self.embed(ids))  # (B, L, 8)
            x = self.gn(x.transpose(1, 2)).transpose(1, 2)
            x = self.bn(self.rms(x).transpose(1, 2)).transpose(1, 2)
            x = self.gn_convnn(x.transpose(1, 2)).transpose(1, 2)
            return self.head(x)

    class TorchBlock(tnn.Module):
        def __init__(self, c, groups):
            super().__init__()
            self.conv1 = tnn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn1 = tnn.BatchNorm2d(c)
            self.conv2 = tnn.Conv2d(c, c, 3, padding=1, groups=groups, bias=False)
            self.bn2 = tnn.BatchNorm2d(c)

        def forward(self, x):
            return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))

    class TorchNet(tnn.Module):
        def __init__(self):
            super().__init__()
            self.stem = tnn.Sequential(tnn.Conv2d(3, 8, 3, padding=1), tnn.BatchNorm2d(8),
                                       tnn.ReLU())
            self.blocks = tnn.ModuleList([TorchBlock(8, 1), TorchBlock(8, 4)])
            self.pool = tnn.MaxPool2d(2)
            self.up = tnn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1)
            self.up_grouped = tnn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1,
                                                  groups=2)
            self.head = tnn.Linear(4, 10)

        def forward(self, x):
            x = self.stem(x)
            for block in self.blocks:
                x = block(x)
            x = F.relu(self.up(self.pool(x)))
            x = self.up_grouped(x)
            return self.head(x.mean(dim=(2, 3)))

    return types.SimpleNamespace(TorchFlaxLayers=TorchFlaxLayers, TorchNet=TorchNet)


class NnxFlaxLayers(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Embed(10, 8, rngs=rngs)
        self.ln = nnx.LayerNorm(8, epsilon=1e-5, rngs=rngs)
        self.gn = nnx.GroupNorm(8, num_groups=2, epsilon=1e-5, rngs=rngs)
        self.rms = nnx.RMSNorm(8, epsilon=1e-6, rngs=rngs)
        self.bn = nnx.BatchNorm(8, use_running_average=True, rngs=rngs)
        self.gn_convnn = layers.GroupNorm(4, 8, pytorch_compatible=True)
        self.head = nnx.Linear(8, 5, rngs=rngs)

    def __call__(self, ids):
        x = self.bn(self.rms(self.gn(self.ln(self.embed(ids)))))
        return self.head(self.gn_convnn(x))


def test_torch_flax_layers_match_pytorch(torch, torch_models):
    tmod = torch_models.TorchFlaxLayers().float().eval()
    _randomize_torch(torch, tmod, 1)
    with torch.no_grad():
        tmod.rms.weight.uniform_(0.5, 1.5)
    model = _build(lambda: NnxFlaxLayers(nnx.Rngs(0)))
    assert load_torch_state_dict(model, tmod.state_dict()) == LoadResult([], [], [])
    ids = np.random.default_rng(0).integers(0, 10, (3, 7))
    expected = tmod(torch.from_numpy(ids)).detach().numpy()
    assert_close(model(jnp.asarray(ids)), expected, F32)


# ---------------------------------------------------------------------------------------------
# Tier 2: a PyTorch CNN
# ---------------------------------------------------------------------------------------------


class NnxBlock(nnx.Module):
    def __init__(self, c, groups, rngs):
        self.conv1 = layers.Conv2d(c, c, 3, padding=1, bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(c, use_running_average=True, rngs=rngs)
        self.conv2 = layers.Conv2d(c, c, 3, padding=1, groups=groups, bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(c, use_running_average=True, rngs=rngs)

    def __call__(self, x):
        return nnx.relu(x + self.bn2(self.conv2(nnx.relu(self.bn1(self.conv1(x))))))


class NnxNet(nnx.Module):
    def __init__(self, rngs):
        self.stem = nnx.Sequential(
            layers.Conv2d(3, 8, 3, padding=1, rngs=rngs),
            nnx.BatchNorm(8, use_running_average=True, rngs=rngs),
            nnx.relu,
        )
        self.blocks = List([NnxBlock(8, 1, rngs), NnxBlock(8, 4, rngs)])
        self.pool = layers.MaxPool2d(2)
        self.up = layers.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1, rngs=rngs)
        self.up_grouped = layers.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1,
                                                 groups=2, rngs=rngs)
        self.head = nnx.Linear(4, 10, rngs=rngs)

    def __call__(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        x = nnx.relu(self.up(self.pool(x)))
        x = self.up_grouped(x)
        return self.head(x.mean(axis=(1, 2)))


@pytest.fixture(scope="module")
def torch_net(torch, torch_models):
    torch.manual_seed(0)
    net = torch_models.TorchNet().float().eval()
    _randomize_torch(torch, net, 2)
    return net


def test_torch_cnn_port_gives_same_logits(torch_net, torch):
    model = _build(lambda: NnxNet(nnx.Rngs(0)))
    result = load_torch_state_dict(model, torch_net.state_dict())
    assert result == LoadResult([], [], [])
    x = np.random.default_rng(0).standard_normal((2, 3, 12, 12)).astype(F32)
    expected = torch_net(torch.from_numpy(x)).detach().numpy()
    logits = model(jnp.asarray(_nhwc(x)))
    assert logits.dtype == jnp.float32
    assert_close(logits, expected, F32)
    # The running statistics matter: with other statistics the logits differ.
    fresh = _build(lambda: NnxNet(nnx.Rngs(0)))
    sd = {k: v for k, v in torch_net.state_dict().items() if "running" not in k}
    load_torch_state_dict(fresh, sd, strict=False)
    assert not np.allclose(np.asarray(fresh(jnp.asarray(_nhwc(x)))), expected, atol=1e-3)


def test_torch_strict_lists_every_problem_and_loads_nothing(torch_net, torch):
    model = _build(lambda: NnxNet(nnx.Rngs(0)))
    before = _snapshot(model)
    sd = dict(torch_net.state_dict())
    del sd["blocks.1.conv2.weight"]
    sd["blocks.0.conv3.weight"] = torch.zeros(8, 8, 3, 3)
    sd["head.weight"] = torch.zeros(10, 5)
    with pytest.raises(ValueError) as info:
        load_torch_state_dict(model, sd)
    msg = str(info.value)
    assert "blocks.1.conv2.weight" in msg and "Missing 1 key" in msg
    assert "blocks.0.conv3.weight" in msg and "Unexpected 1 key" in msg
    assert "head.weight: expected shape (10, 4)" in msg and "got (10, 5)" in msg
    _assert_same_state(_snapshot(model), before)


def test_torch_non_strict_loads_what_matches(torch_net, torch):
    model = _build(lambda: NnxNet(nnx.Rngs(0)))
    before = _snapshot(model)
    sd = dict(torch_net.state_dict())
    del sd["stem.0.weight"]
    sd["extra.weight"] = torch.zeros(3)
    sd["head.weight"] = torch.zeros(10, 5)
    with pytest.warns(UserWarning, match="head.weight"):
        result = load_torch_state_dict(model, sd, strict=False)
    assert result.missing_keys == ["stem.0.weight"]
    assert result.unexpected_keys == ["extra.weight"]
    assert [m.split(":")[0] for m in result.mismatched_keys] == ["head.weight"]
    after = _snapshot(model)
    np.testing.assert_array_equal(after[("stem", "layers", 0, "weight")],
                                  before[("stem", "layers", 0, "weight")])
    np.testing.assert_array_equal(after[("head", "kernel")], before[("head", "kernel")])
    np.testing.assert_array_equal(after[("head", "bias")], torch_net.head.bias.detach().numpy())
    np.testing.assert_array_equal(after[("stem", "layers", 1, "mean")],
                                  torch_net.stem[1].running_mean.numpy())


def test_torch_num_batches_tracked_only_ignored_for_batch_norm(torch_net, torch):
    sd = dict(torch_net.state_dict())
    assert "stem.1.num_batches_tracked" in sd
    sd["head.num_batches_tracked"] = torch.tensor(0)
    with pytest.raises(ValueError, match=r"Unexpected 1 key\(s\): head.num_batches_tracked\."):
        load_torch_state_dict(_build(lambda: NnxNet(nnx.Rngs(0))), sd)


def test_torch_accepts_numpy_module_and_casts_dtype(torch_net):
    x = jnp.asarray(np.random.default_rng(1).standard_normal((1, 12, 12, 3)), jnp.float32)
    a, b, c = (_build(lambda: NnxNet(nnx.Rngs(0)), seed) for seed in range(3))
    load_torch_state_dict(a, torch_net.state_dict())
    load_torch_state_dict(b, {k: v.double().numpy() for k, v in torch_net.state_dict().items()})
    load_torch_state_dict(c, torch_net)  # a module: its state_dict()
    for m in (b, c):
        _assert_same_state(_snapshot(m), _snapshot(a))
        assert m.head.kernel[...].dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(b(x)), np.asarray(a(x)))


def test_torch_bfloat16_tensors_are_cast(torch, tnn):
    lin = tnn.Linear(3, 2).to(torch.bfloat16)
    model = _build(lambda: nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
    load_torch_state_dict(model, lin.state_dict())
    assert model.kernel[...].dtype == jnp.float32
    expected = lin.weight.detach().float().numpy().T
    np.testing.assert_array_equal(np.asarray(model.kernel[...]), expected)
    model_bf16 = _build(lambda: nnx.Linear(3, 2, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
    load_torch_state_dict(model_bf16, lin.state_dict())
    assert model_bf16.kernel[...].dtype == jnp.bfloat16


# ---------------------------------------------------------------------------------------------
# Tier 2: MLX models, both ways
# ---------------------------------------------------------------------------------------------


class NnxMlxNet(nnx.Module):
    def __init__(self, flavour, rngs):
        if flavour == "convnn":
            conv_a = layers.Conv2d(3, 8, 3, padding=1, rngs=rngs)
            conv_b = layers.Conv2d(8, 8, 3, stride=2, padding=1, bias=False, rngs=rngs)
        else:
            conv_a = nnx.Conv(3, 8, (3, 3), padding=[(1, 1)] * 2, rngs=rngs)
            conv_b = nnx.Conv(8, 8, (3, 3), strides=2, padding=[(1, 1)] * 2, use_bias=False,
                              rngs=rngs)
        self.stem = nnx.Sequential(conv_a, nnx.BatchNorm(8, use_running_average=True, rngs=rngs),
                                   nnx.relu)
        self.blocks = List([conv_b, nnx.LayerNorm(8, epsilon=1e-5, rngs=rngs)])
        self.head = nnx.Linear(8, 5, rngs=rngs)

    def __call__(self, x):
        x = self.stem(x)
        for layer in self.blocks:
            x = layer(x)
        return self.head(x.mean(axis=(1, 2)))


@pytest.fixture(scope="module")
def mlx_models(mx, mnn):
    """The MLX model and MLX's tree_flatten (defined here: MLX is optional)."""
    from mlx.utils import tree_flatten

    class MlxNet(mnn.Module):
        def __init__(self):
            super().__init__()
            self.stem = mnn.Sequential(mnn.Conv2d(3, 8, 3, padding=1), mnn.BatchNorm(8), mnn.ReLU())
            self.blocks = [mnn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False), mnn.LayerNorm(8)]
            self.head = mnn.Linear(8, 5)

        def __call__(self, x):
            x = self.stem(x)
            for layer in self.blocks:
                x = layer(x)
            return self.head(x.mean(axis=(1, 2)))

    def _random_mlx_net(seed):
        mx.random.seed(seed)
        net = MlxNet()
        rng = np.random.default_rng(seed)
        bn, ln = net.stem.layers[1], net.blocks[1]
        bn.update({"weight": mx.array(rng.uniform(0.5, 1.5, 8).astype(F32)),
                   "bias": mx.array(rng.normal(0, 0.5, 8).astype(F32)),
                   "running_mean": mx.array(rng.normal(0, 0.5, 8).astype(F32)),
                   "running_var": mx.array(rng.uniform(0.5, 2, 8).astype(F32))})
        ln.update({"weight": mx.array(rng.uniform(0.5, 1.5, 8).astype(F32)),
                   "bias": mx.array(rng.normal(0, 0.5, 8).astype(F32))})
        net.eval()
        return net

    return types.SimpleNamespace(MlxNet=MlxNet, random_net=_random_mlx_net,
                                 tree_flatten=tree_flatten)


X_MLX = np.random.default_rng(5).standard_normal((2, 9, 9, 3)).astype(F32)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
@pytest.mark.parametrize("flavour", ["convnn", "flax"])
def test_mlx_save_weights_loads_with_same_outputs(tmp_path, suffix, flavour, mx, mlx_models):
    net = mlx_models.random_net(0)
    path = str(tmp_path / f"mlx{suffix}")
    net.save_weights(path)
    expected = np.asarray(net(mx.array(X_MLX)))
    model = _build(lambda f=flavour: NnxMlxNet(f, nnx.Rngs(0)))
    assert load_mlx_weights(model, path) == LoadResult([], [], [])
    assert_close(model(jnp.asarray(X_MLX)), expected, F32)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
@pytest.mark.parametrize("flavour", ["convnn", "flax"])
def test_nnx_saved_weights_load_into_mlx_with_same_outputs(tmp_path, suffix, flavour, mx,
                                                           mlx_models):
    model = _build(lambda: NnxMlxNet(flavour, nnx.Rngs(0)), 3)
    path = str(tmp_path / f"nnx{suffix}")
    save_mlx_weights(model, path)
    net = mlx_models.MlxNet()
    net.load_weights(path, strict=True)  # MLX checks names and shapes itself
    net.eval()
    assert_close(np.asarray(net(mx.array(X_MLX))), model(jnp.asarray(X_MLX)), F32)


def test_mlx_keys_match_mlx_parameter_names(mlx_models):
    MlxNet, tree_flatten = mlx_models.MlxNet, mlx_models.tree_flatten
    mlx_keys = {k for k, _ in tree_flatten(MlxNet().parameters())}
    for flavour in ("convnn", "flax"):
        model = _build(lambda f=flavour: NnxMlxNet(f, nnx.Rngs(0)))
        weights = {k: np.asarray(v) for k, v in tree_flatten(MlxNet().parameters())}
        load_mlx_weights(model, weights)  # strict: the key sets agree
    assert "stem.layers.1.running_var" in mlx_keys and "blocks.1.weight" in mlx_keys


def test_mlx_flax_layers_match_mlx(mx, mnn, mlx_models):
    """Embedding, LayerNorm, GroupNorm (both groupings), RMSNorm from MLX."""
    tree_flatten = mlx_models.tree_flatten

    class M(mnn.Module):
        def __init__(self):
            super().__init__()
            self.embed = mnn.Embedding(10, 8)
            self.ln = mnn.LayerNorm(8)
            self.gn = mnn.GroupNorm(2, 8, pytorch_compatible=True)
            self.rms = mnn.RMSNorm(8, eps=1e-6)
            self.gn_mlx = mnn.GroupNorm(4, 8)  # interleaved groups: convnn.layers.GroupNorm

        def __call__(self, ids):
            return self.gn_mlx(self.rms(self.gn(self.ln(self.embed(ids)))))

    class N(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(10, 8, rngs=rngs)
            self.ln = nnx.LayerNorm(8, epsilon=1e-5, rngs=rngs)
            self.gn = nnx.GroupNorm(8, num_groups=2, epsilon=1e-5, rngs=rngs)
            self.rms = nnx.RMSNorm(8, epsilon=1e-6, rngs=rngs)
            self.gn_mlx = layers.GroupNorm(4, 8)

        def __call__(self, ids):
            return self.gn_mlx(self.rms(self.gn(self.ln(self.embed(ids)))))

    m = M()
    rng = np.random.default_rng(0)
    m.update({name: {k: mx.array(rng.uniform(0.5, 1.5, v.shape).astype(F32)) for k, v in p.items()}
              for name, p in m.parameters().items() if name != "embed"})
    ids = rng.integers(0, 10, (3, 5))
    model = _build(lambda: N(nnx.Rngs(0)))
    load_mlx_weights(model, list(tree_flatten(m.parameters())))
    assert_close(model(jnp.asarray(ids)), np.asarray(m(mx.array(ids))), F32)


# ---------------------------------------------------------------------------------------------
# Tier 3: contracts
# ---------------------------------------------------------------------------------------------


def test_mlx_strict_lists_every_problem_and_loads_nothing(mlx_models):
    model = _build(lambda: NnxMlxNet("convnn", nnx.Rngs(0)))
    before = _snapshot(model)
    weights = {k: np.asarray(v)
               for k, v in mlx_models.tree_flatten(mlx_models.random_net(1).parameters())}
    del weights["blocks.1.bias"]
    weights["blocks.2.weight"] = np.zeros(3, F32)
    weights["head.weight"] = weights["head.weight"].T  # (8, 5): PyTorch-style mistake
    with pytest.raises(ValueError) as info:
        load_mlx_weights(model, weights)
    msg = str(info.value)
    for part in ("Missing 1 key(s): blocks.1.bias.", "Unexpected 1 key(s): blocks.2.weight.",
                 "head.weight: expected shape (5, 8) (MLX layout), got (8, 5)"):
        assert part in msg, msg
    _assert_same_state(_snapshot(model), before)


def test_mlx_non_strict_loads_what_matches(mlx_models):
    model = _build(lambda: NnxMlxNet("convnn", nnx.Rngs(0)))
    before = _snapshot(model)
    weights = {k: np.asarray(v)
               for k, v in mlx_models.tree_flatten(mlx_models.random_net(1).parameters())}
    del weights["head.bias"]
    weights["other.weight"] = np.zeros(2, F32)
    result = load_mlx_weights(model, weights, strict=False)
    assert result == LoadResult(["head.bias"], ["other.weight"], [])
    after = _snapshot(model)
    np.testing.assert_array_equal(after[("head", "bias")], before[("head", "bias")])
    np.testing.assert_array_equal(after[("head", "kernel")], weights["head.weight"].T)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
@pytest.mark.parametrize("param_dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_round_trip(tmp_path, suffix, param_dtype):
    _round_trip(tmp_path, suffix, param_dtype)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
@pytest.mark.parametrize("param_dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_round_trip_file_reads_in_mlx(tmp_path, suffix, param_dtype, mx):
    path = _round_trip(tmp_path, suffix, param_dtype)
    # MLX reads the file with the same dtypes.
    loaded = mx.load(str(path))
    assert all(v.dtype == getattr(mx, jnp.dtype(param_dtype).name) for v in loaded.values())


def _round_trip(tmp_path, suffix, param_dtype):
    def make(seed):
        if param_dtype == jnp.float32:
            return _build(lambda: NnxNet(nnx.Rngs(0)), seed)
        return _build(lambda: nnx.Sequential(
            layers.Conv2d(3, 4, 3, param_dtype=param_dtype, rngs=nnx.Rngs(0)),
            nnx.Linear(4, 2, param_dtype=param_dtype, rngs=nnx.Rngs(0))), seed)

    a, b = make(0), make(1)
    path = tmp_path / f"w{suffix}"
    save_mlx_weights(a, path)  # os.PathLike accepted
    load_mlx_weights(b, path)
    _assert_same_state(_snapshot(b), _snapshot(a))
    for _, v in nnx.to_flat_state(nnx.state(b, nnx.Param)):
        assert get_value(v).dtype == param_dtype
    return path


def test_bfloat16_file_written_by_mlx(tmp_path, mx, mnn):
    net = mnn.Sequential(mnn.Linear(3, 2))
    net.set_dtype(mx.bfloat16)
    for suffix in (".safetensors", ".npz"):
        net.save_weights(str(tmp_path / f"w{suffix}"))
        model = nnx.Sequential(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
        load_mlx_weights(model, str(tmp_path / f"w{suffix}"))
        expected = np.asarray(net.layers[0].weight.astype(mx.float32)).T
        np.testing.assert_array_equal(np.asarray(model.layers[0].kernel[...]), expected)


def test_shared_module_has_a_key_under_each_path(tmp_path):
    class Tied(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(2, 2, rngs=rngs)
            self.b = self.a

    model = Tied(nnx.Rngs(0))
    save_mlx_weights(model, tmp_path / "t.npz")
    with np.load(tmp_path / "t.npz") as f:
        assert sorted(f.files) == ["a.bias", "a.weight", "b.bias", "b.weight"]
    w = np.arange(4, dtype=F32).reshape(2, 2)
    sd = {"a.weight": w, "a.bias": np.zeros(2, F32), "b.weight": w, "b.bias": np.zeros(2, F32)}
    load_torch_state_dict(model, sd)
    np.testing.assert_array_equal(np.asarray(model.b.kernel[...]), w.T)


def test_abstract_model_is_filled():
    model = nnx.eval_shape(lambda: nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
    w = np.arange(6, dtype=F32).reshape(2, 3)
    load_mlx_weights(model, {"weight": w, "bias": np.ones(2, F32)})
    np.testing.assert_array_equal(np.asarray(model.kernel[...]), w.T)


def test_sharding_is_kept():
    devices = jax.devices()
    mesh = jax.sharding.Mesh(np.array(devices), ("d",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "d"))
    model = nnx.Linear(3, 2 * len(devices), rngs=nnx.Rngs(0))
    set_value(model.kernel, jax.device_put(model.kernel[...], sharding))
    w = np.ones((2 * len(devices), 3), F32)
    load_mlx_weights(model, {"weight": w, "bias": np.zeros(2 * len(devices), F32)})
    assert model.kernel[...].sharding == sharding


def test_npz_is_read_without_pickle(tmp_path):
    path = tmp_path / "p.npz"
    np.savez(path, weight=np.array([object()], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_mlx_weights(nnx.Linear(1, 1, rngs=nnx.Rngs(0)), path)


def _with_weight_attribute(linear):
    linear.weight = nnx.Param(jnp.zeros((2, 3)))  # clashes with the kernel's MLX name
    return linear


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m: save_mlx_weights(m, "w.pt"), ValueError,
         r"\[save_mlx_weights\].*'\.safetensors'"),
        (lambda m: load_mlx_weights(m, "w.pkl"), ValueError, r"\[load_mlx_weights\].*'\.npz'"),
        (lambda m: load_mlx_weights(m, 3), TypeError, "path_or_mapping"),
        (lambda m: load_mlx_weights(object(), {}), TypeError, "Flax NNX module"),
        (lambda m: load_torch_state_dict(m, [1, 2]), TypeError, "state_dict must be a mapping"),
        (lambda m: load_mlx_weights(m, {"weight": "abc", "bias": np.zeros(2)}), TypeError,
         "'weight'"),
        (lambda m: load_torch_state_dict(nnx.ConvTranspose(2, 2, (3,), rngs=nnx.Rngs(0)), {}),
         TypeError, "nnx.ConvTranspose"),
        (lambda m: load_mlx_weights(_with_weight_attribute(m), {}), ValueError,
         "two different variables of the model map to the key 'weight'"),
    ],
    ids=["save-ext", "load-ext", "load-type", "model-type", "sd-type", "value-type", "flax-tconv",
         "key-clash"],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))


# ---------------------------------------------------------------------------------------------
# Damaged files, refused values, the flatten-order trap, missing optional dependencies
# ---------------------------------------------------------------------------------------------


def _linear_file(tmp_path, suffix):
    path = tmp_path / f"w{suffix}"
    save_mlx_weights(nnx.Sequential(nnx.Linear(3, 2, rngs=nnx.Rngs(0))), path)
    return path


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _bad_npy_member(path):
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("layers.0.weight.npy", b"\x93NUMPY\x01\x00")  # the header stops short


@pytest.mark.parametrize(
    "suffix, damage, match",
    [
        (".safetensors", lambda p: p.write_bytes(b""), r"is empty \(0 bytes\)"),
        (".npz", lambda p: p.write_bytes(b""), r"is empty \(0 bytes\)"),
        (".safetensors", _truncate, r"not a readable \.safetensors file .*truncated"),
        (".npz", _truncate, r"not a readable \.npz file .*BadZipFile"),
        (".npz", lambda p: p.write_text("layers.0.weight: 1 2 3\n"),
         r"is not a \.npz file: it does not start with a zip header"),
        (".npz", lambda p: p.write_bytes(b"PK\x03\x04" + bytes(40)), r"not a readable \.npz"),
        (".npz", _bad_npy_member, r"not a readable \.npz file .*(EOFError|ValueError)"),
        (".safetensors", lambda p: p.write_bytes(b"\xff" * 16), r"not a readable \.safetensors"),
        (".npz", lambda p: p.unlink(), r"cannot open"),
    ],
    ids=["empty-safetensors", "empty-npz", "truncated-safetensors", "truncated-npz", "text-npz",
         "bad-zip", "eof-npy", "garbage-safetensors", "missing"],
)
def test_damaged_weight_files_are_named(tmp_path, suffix, damage, match):
    path = _linear_file(tmp_path, suffix)
    damage(path)
    model = nnx.Sequential(nnx.Linear(3, 2, rngs=nnx.Rngs(1)))
    before = np.asarray(model.layers[0].kernel[...])
    with pytest.raises((ValueError, OSError)) as info:
        load_mlx_weights(model, path)
    import re

    message = str(info.value)
    assert message.startswith("[load_mlx_weights]") and str(path) in message, message
    assert re.search(match, message), message
    np.testing.assert_array_equal(np.asarray(model.layers[0].kernel[...]), before)


@pytest.mark.parametrize(
    "value, error, match",
    [
        (np.ones((2, 3), np.int64), TypeError, r"'0\.weight' has dtype int64 .* float32"),
        (np.ones((2, 3), np.int8), TypeError, r"'0\.weight' has dtype int8"),
        (np.ones((2, 3), bool), TypeError, r"'0\.weight' has dtype bool"),
        (np.full((2, 3), np.nan, np.float32), ValueError, r"'0\.weight' .* 6 NaN or infinite"),
        (np.array([[0, 1, np.inf]] * 2, np.float64), ValueError, r"2 NaN or infinite"),
        (np.array([[0, 1, np.nan]] * 2, np.float16), ValueError, r"2 NaN or infinite"),
    ],
    ids=["int64", "int8", "bool", "nan", "inf", "nan-float16"],
)
def test_integer_bool_and_non_finite_weights_are_refused(value, error, match):
    model = nnx.Sequential(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
    before = np.asarray(model.layers[0].kernel[...])
    with pytest.raises(error, match=match):
        load_torch_state_dict(model, {"0.weight": value, "0.bias": np.zeros(2, np.float32)})
    with pytest.raises(error, match=match.replace("0\\.weight", "layers\\.0\\.weight")):
        load_mlx_weights(model, {"layers.0.weight": value.T, "layers.0.bias": np.zeros(2)},
                         strict=False)
    np.testing.assert_array_equal(np.asarray(model.layers[0].kernel[...]), before)


class _FlattenNet(nnx.Module):
    """conv (8 channels) on 4 x 4 inputs, flattened into a Linear head: the trap."""

    def __init__(self, n_in, hidden=None):
        rngs = nnx.Rngs(0)
        self.conv = layers.Conv2d(3, 8, 3, padding=1, rngs=rngs)
        self.fc = nnx.Linear(n_in, hidden or 10, rngs=rngs)
        self.out = nnx.Linear(hidden, 10, rngs=rngs) if hidden else None


def _torch_weights(model):
    sd = {"conv.weight": np.zeros((8, 3, 3, 3), F32), "conv.bias": np.zeros(8, F32)}
    for name in ("fc", "out"):
        layer = getattr(model, name)
        if layer is not None:
            n_in, n_out = layer.kernel.shape
            sd[f"{name}.weight"] = np.zeros((n_out, n_in), F32)
            sd[f"{name}.bias"] = np.zeros(n_out, F32)
    return sd


def test_flatten_order_trap_warns():
    model = _FlattenNet(8 * 16, hidden=32)
    with pytest.warns(UserWarning, match=r"'fc' takes 128 inputs = 8 channels x 16 positions"
                      r".*transpose\(0, 3, 1, 2\)"):
        load_torch_state_dict(model, _torch_weights(model))


def test_flatten_order_check_stays_quiet_otherwise(recwarn):
    pooled = _FlattenNet(8)  # global pooling: the head takes the conv's 8 channels
    load_torch_state_dict(pooled, _torch_weights(pooled))
    mlp = _FlattenNet(8, hidden=32)  # 32 inputs of the second Linear: the first one's outputs
    load_torch_state_dict(mlp, _torch_weights(mlp))
    flat = _FlattenNet(8 * 16)  # the model flattens channels-first; the check is turned off
    load_torch_state_dict(flat, _torch_weights(flat), check_flatten=False)
    assert not [str(w.message) for w in recwarn if "positions" in str(w.message)]


def test_flatten_order_trap_is_real(torch, tnn):
    """Why the warning exists: same keys, same shapes, other logits without the transpose."""
    torch.manual_seed(0)
    net = tnn.Sequential(tnn.Conv2d(3, 8, 3, padding=1), tnn.Flatten(), tnn.Linear(8 * 16, 10))
    net = net.float().eval()
    model = _FlattenNet(8 * 16)
    load_torch_state_dict(model, {"conv.weight": net[0].weight, "conv.bias": net[0].bias,
                                  "fc.weight": net[2].weight, "fc.bias": net[2].bias},
                          check_flatten=False)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(F32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    h = model.conv(jnp.asarray(_nhwc(x)))
    nhwc = model.fc(h.reshape(2, -1))
    nchw = model.fc(h.transpose(0, 3, 1, 2).reshape(2, -1))
    assert_close(np.asarray(nchw), expected, np.float32, what="channels-first flatten")
    assert np.abs(np.asarray(nhwc) - expected).max() > 1e-2


@pytest.mark.parametrize("module", ["convnn.layers", "convnn.interop"])
def test_missing_flax_names_the_extra(module):
    import subprocess
    import sys

    code = (f"import sys; sys.modules['flax'] = None\ntry:\n    import {module}\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120).stdout
    assert f"{module} needs Flax" in out and 'pip install "convnn[nn]"' in out, out
