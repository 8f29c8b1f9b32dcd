"""convnn.layers.Module (MLX's object model on Flax NNX) and the default random stream."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import convnn.layers as L
from convnn import _flax_compat


class Affine(L.Module):
    """A layer written as MLX code writes one: plain arrays as attributes."""

    def __init__(self, dims):
        super().__init__()
        self.weight = jnp.arange(1.0, dims + 1, dtype=jnp.float32)
        self.bias = jnp.zeros((dims,), jnp.float32)
        self._cache = jnp.ones((dims,), jnp.float32)  # private: not a parameter
        self.count = jnp.zeros((), jnp.int32)  # integer: state, not a parameter

    def __call__(self, x):
        return x * self.weight + self.bias


class Net(L.Module):
    def __init__(self):
        super().__init__()
        self.layers = []  # filled after assignment, as MLX code often does
        for _ in range(3):
            self.layers.append(Affine(2))
        self.heads = {"a": Affine(2), "scales": [jnp.ones(2, jnp.float32)]}
        self.kernel_size = (3, 3)
        self.act = jax.nn.relu

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        if self.training:
            x = 2 * x
        return self.heads["a"](self.act(x)) * self.heads["scales"][0]


def _shapes(tree):
    return jax.tree.map(lambda a: tuple(a.shape), tree)


def test_attributes_become_nnx_state():
    net = Net()
    assert isinstance(net.layers, list) and len(net.layers) == 3
    assert isinstance(net.layers[0].weight, nnx.Param)
    assert isinstance(net.heads["scales"][0], nnx.Param)
    assert not isinstance(net.layers[0]._cache, nnx.Variable)
    assert not isinstance(net.layers[0].count, nnx.Variable)
    params = nnx.state(net, nnx.Param)
    paths = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(params)}
    assert "layers.2.weight" in paths and "heads.a.bias" in paths and "heads.scales.0" in paths
    assert "layers.0._cache" not in paths


def test_assigning_an_array_updates_the_variable():
    layer = Affine(2)
    param = layer.weight
    layer.weight = jnp.array([5.0, 6.0], jnp.float32)
    assert layer.weight is param
    np.testing.assert_array_equal(param[...], [5.0, 6.0])


def test_contains():
    net = Net()
    assert "layers" in net and "heads" in net
    assert "kernel_size" not in net and "act" not in net and "missing" not in net
    assert "weight" in net.layers[0]


def test_parameters_tree_matches_mlx_structure():
    net = Net()
    assert _shapes(net.parameters()) == {
        "layers": [{"weight": (2,), "bias": (2,)}] * 3,
        "heads": {"a": {"weight": (2,), "bias": (2,)}, "scales": [(2,)]},
    }
    net.freeze(keys="bias")
    trainable = _shapes(net.trainable_parameters())
    assert trainable["layers"] == [{"weight": (2,)}] * 3
    assert isinstance(net.layers[0].bias, L.Frozen)
    assert _shapes(net.parameters())["layers"][0] == {"weight": (2,), "bias": (2,)}
    net.unfreeze()
    assert isinstance(net.layers[0].bias, nnx.Param)


def test_update_and_apply():
    net = Net()
    net.update({"layers": [{"bias": jnp.ones(2, jnp.float32)}]})
    np.testing.assert_array_equal(net.layers[0].bias[...], [1.0, 1.0])
    np.testing.assert_array_equal(net.layers[1].bias[...], [0.0, 0.0])
    with pytest.raises(ValueError, match="no parameter named 'nope'"):
        net.update({"nope": jnp.ones(2)})
    net.apply(lambda p: p.astype(jnp.float16))
    assert net.layers[2].weight.dtype == jnp.float16


def test_children_leaf_modules_and_apply_to_modules():
    net = Net()
    children = net.children()
    assert set(children) == {"layers", "heads"}
    assert children["layers"][1] is net.layers[1]
    assert children["heads"]["scales"] == [{}]
    leaves = net.leaf_modules()
    assert leaves["heads"]["a"] is net.heads["a"]
    paths = sorted(k for k, _ in net.named_modules())
    assert paths == ["", "heads.a", "layers.0", "layers.1", "layers.2"]
    assert len(net.modules()) == 5
    seen = []
    net.apply_to_modules(lambda k, m: seen.append(k))
    assert sorted(seen) == paths


def test_train_eval_reach_every_module_and_flax_layers():
    class Mixed(L.Module):
        def __init__(self):
            self.inner = Affine(2)
            self.drop = nnx.Dropout(0.5, rngs=nnx.Rngs(0))

    m = Mixed()
    assert m.training and m.inner.training
    assert m.eval() is m
    assert not m.training and not m.inner.training and m.drop.deterministic
    m.train()
    assert m.inner.training and not m.drop.deterministic
    with pytest.raises(TypeError, match=r"\[Module.train\] mode"):
        m.train("no")


def test_training_mode_under_jit_grad_and_optimizer():
    net = Net()
    x = jnp.array([1.0, -0.5], jnp.float32)

    @nnx.jit
    def forward(model, x):
        return model(x)

    y_train = forward(net, x)
    net.eval()
    y_eval = forward(net, x)
    np.testing.assert_allclose(y_train, 2 * y_eval)

    net.freeze(keys="weight")
    optimizer = nnx.Optimizer(net, optax.sgd(0.5), wrt=nnx.Param)
    grads = nnx.grad(lambda m: m(x).sum())(net)
    _flax_compat.optimizer_update(optimizer, net, grads)
    # Only the biases moved; the frozen weights did not.
    np.testing.assert_array_equal(net.layers[0].weight[...], [1.0, 2.0])
    assert float(jnp.abs(net.layers[0].bias[...]).sum()) > 0

    graphdef, state = nnx.split(net)
    clone = nnx.merge(graphdef, state)
    np.testing.assert_array_equal(forward(clone, x), forward(net, x))


def test_save_and_load_weights(tmp_path):
    a, b = Net(), Net()
    a.update(jax.tree.map(lambda p: p + 1.5, a.parameters()))
    a.freeze(keys="bias")  # frozen parameters are saved and loaded too
    for name in ("w.safetensors", "w.npz"):
        path = os.fspath(tmp_path / name)
        a.save_weights(path)
        assert b.load_weights(path) is b
        leaves_a, leaves_b = jax.tree.leaves(a.parameters()), jax.tree.leaves(b.parameters())
        for pa, pb in zip(leaves_a, leaves_b, strict=True):
            np.testing.assert_array_equal(pa, pb)
    b.load_weights([("layers.0.weight", np.zeros(2, np.float32))], strict=False)
    np.testing.assert_array_equal(b.layers[0].weight[...], [0.0, 0.0])
    with pytest.raises(ValueError, match="Missing"):
        b.load_weights([("layers.0.weight", np.zeros(2, np.float32))])


def test_seed_makes_default_initialisation_reproducible():
    L.seed(7)
    a = L.Conv2d(2, 3, 3).weight[...]
    b = L.Conv2d(2, 3, 3).weight[...]
    L.seed(7)
    c = L.Conv2d(2, 3, 3).weight[...]
    np.testing.assert_array_equal(a, c)
    assert not np.array_equal(a, b)
    with pytest.raises(TypeError, match=r"\[seed\]"):
        L.seed(1.5)
    with pytest.raises(ValueError, match=r"\[seed\]"):
        L.seed(-1)


def test_update_modules_and_set_dtype():
    net = Net()
    replacement = Affine(2)
    net.update_modules({"layers": [{}, replacement], "heads": {"a": Affine(2)}})
    assert net.layers[1] is replacement and net.layers[0] is not replacement
    with pytest.raises(ValueError, match=r"\[Module.update_modules\] no sub-module named 'x'"):
        net.update_modules({"x": Affine(2)})
    net.set_dtype(jnp.bfloat16)
    assert net.layers[0].weight.dtype == jnp.bfloat16
    assert net.layers[0].count.dtype == jnp.int32  # not a parameter
