"""Weights of the MLX-style layers: MLX ``.safetensors`` / ``.npz`` both ways, PyTorch state dicts
for the layers PyTorch has."""

import os

import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import assert_close

import convnn.layers as L


def _build(nn):
    """The same model in MLX (``nn = mlx.nn``) and convnn (``nn = convnn.layers``): every new
    layer with parameters or statistics."""

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(7, 6)
            self.blocks = [
                nn.Sequential(nn.Linear(6, 6), nn.GELU(), nn.LayerNorm(6)),
                nn.Sequential(nn.Linear(6, 6, bias=False), nn.RMSNorm(6), nn.PReLU(6)),
            ]
            self.bn = nn.BatchNorm(6, momentum=0.2)
            self.inorm = nn.InstanceNorm(6, affine=True)
            self.gn = nn.GroupNorm(2, 6)
            self.bil = nn.Bilinear(6, 6, 3)
            self.drop = nn.Dropout(0.1)

        def __call__(self, tokens):
            h = self.emb(tokens)
            for block in self.blocks:
                h = block(h)
            h = self.gn(self.inorm(self.bn(h)))
            return self.bil(self.drop(h), h)

    return Model()


def _tokens():
    return np.random.default_rng(0).integers(0, 7, (3, 5)).astype(np.int32)


@pytest.mark.parametrize("suffix", [".safetensors", pytest.param(".npz", marks=pytest.mark.slow)])
def test_mlx_files_both_ways(mx, mnn, tmp_path, suffix):
    ref, ours = _build(mnn), _build(L)
    ref.train()
    ref(mx.array(_tokens()))  # running statistics away from their initial values
    mx.eval(ref.parameters())
    path = os.fspath(tmp_path / f"mlx{suffix}")
    ref.save_weights(path)
    ours.load_weights(path)  # strict
    ref.eval()
    ours.eval()
    y_ref = np.array(ref(mx.array(_tokens())))
    # float32 through seven layers, summed in another order: the suite's float32 tolerance.
    assert_close(ours(jnp.asarray(_tokens())), y_ref, jnp.float32, what="MLX -> convnn")
    # And back: convnn writes, MLX reads strictly.
    ours.update({"bil": {"bias": jnp.full((3,), 0.5, jnp.float32)}})
    back = os.fspath(tmp_path / f"convnn{suffix}")
    ours.save_weights(back)
    fresh = _build(mnn)
    fresh.load_weights(back)
    fresh.eval()
    assert_close(np.array(fresh(mx.array(_tokens()))), ours(jnp.asarray(_tokens())),
                 jnp.float32, what="convnn -> MLX")


def test_torch_state_dicts(torch, tnn):
    from convnn.interop import load_torch_state_dict

    torch.manual_seed(0)
    x = np.random.default_rng(1).standard_normal((4, 5)).astype(np.float32)

    def check(ref, ours, *inputs, **kwargs):
        load_torch_state_dict(ours, ref.state_dict())  # strict
        with torch.no_grad():
            expected = ref(*[torch.from_numpy(a) for a in inputs]).numpy()
        got = np.asarray(ours(*[jnp.asarray(a) for a in inputs]))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, **kwargs)

    check(tnn.Linear(5, 3), L.Linear(5, 3), x)
    check(tnn.Linear(5, 3, bias=False), L.Linear(5, 3, bias=False), x)
    check(tnn.LayerNorm(5), L.LayerNorm(5), x)
    check(tnn.Bilinear(5, 4, 2), L.Bilinear(5, 4, 2), x, x[:, :4].copy())
    tokens = np.array([[0, 3, 9], [2, 2, 1]], np.int64)
    emb = tnn.Embedding(10, 4)
    ours = L.Embedding(10, 4)
    load_torch_state_dict(ours, emb.state_dict())
    np.testing.assert_allclose(
        np.asarray(ours(jnp.asarray(tokens))), emb(torch.from_numpy(tokens)).detach().numpy()
    )
    # BatchNorm: statistics after training steps in PyTorch (NCHW there, NHWC here); PyTorch's
    # num_batches_tracked is ignored.
    bn = tnn.BatchNorm2d(3, momentum=0.3)
    for seed in range(3):
        bn(torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(seed)))
    bn.eval()
    ours = L.BatchNorm(3, momentum=0.3)
    load_torch_state_dict(ours, bn.state_dict())
    ours.eval()
    img = np.random.default_rng(2).standard_normal((2, 5, 5, 3)).astype(np.float32)
    with torch.no_grad():
        expected = bn(torch.from_numpy(img.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(img))), expected, rtol=1e-5,
                               atol=1e-5)
    # Training from the same state: one step of running statistics equals PyTorch's.
    bn.train()
    ours.train()
    batch = np.random.default_rng(3).standard_normal((4, 5, 5, 3)).astype(np.float32)
    bn(torch.from_numpy(batch.transpose(0, 3, 1, 2)))
    ours(jnp.asarray(batch))
    np.testing.assert_allclose(ours.running_var[...], bn.running_var.numpy(), rtol=1e-5)
    np.testing.assert_allclose(ours.running_mean[...], bn.running_mean.numpy(), rtol=1e-5,
                               atol=1e-6)


def test_sequential_torch_names(torch, tnn):
    from convnn.interop import load_torch_state_dict

    ref = tnn.Sequential(tnn.Linear(3, 4), tnn.ReLU(), tnn.Linear(4, 2))
    ours = L.Sequential(L.Linear(3, 4), L.ReLU(), L.Linear(4, 2))
    load_torch_state_dict(ours, ref.state_dict())
    x = np.ones((2, 3), np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(x))), expected, rtol=1e-5, atol=1e-6)


def test_loaded_weights_do_not_share_memory_with_torch(torch, tnn):
    from convnn.interop import load_torch_state_dict

    ref, ours = tnn.BatchNorm1d(3), L.BatchNorm(3)
    load_torch_state_dict(ours, ref.state_dict())
    with torch.no_grad():
        ref.running_var.add_(5.0)  # PyTorch updates its statistics in place
        ref.weight.mul_(3.0)
    np.testing.assert_array_equal(ours.running_var[...], np.ones(3, np.float32))
    np.testing.assert_array_equal(ours.weight[...], np.ones(3, np.float32))
