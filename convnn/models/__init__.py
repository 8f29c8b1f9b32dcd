"""Reference image classifiers built from :mod:`convnn.layers`: torchvision's definitions.

``resnet18``, ``resnet50``, ``convnext_tiny``, ``mobilenet_v2`` and ``efficientnet_b0`` are NNX
modules with torchvision's blocks, channel counts, strides, stochastic depth and layer scale, on
channels-last input ``(N, H, W, 3)``. Their attribute paths are torchvision's, so a torchvision
``state_dict`` loads with :func:`convnn.interop.load_torch_state_dict` and, in eval mode, gives
torchvision's logits. Parameters are initialised randomly (as torchvision initialises them);
nothing is downloaded.

Every constructor takes keyword-only ``rngs``, ``dtype`` (the compute dtype, e.g.
``jnp.bfloat16``: parameters stay float32 and gradients arrive in float32) and ``conv``
(``"convnn"``, the default, for :class:`convnn.layers.Conv2d` under convnn's lowering policy, or
``"nnx"`` for the all-Flax baseline: ``nnx.Conv`` under plain ``lax`` and ``nnx.BatchNorm``).
The ``convnn`` form normalises with :class:`convnn.layers.BatchNorm` (PyTorch's momentum 0.1 and
unbiased running variance), with the activation that follows a BatchNorm in torchvision
(ReLU, ReLU6, SiLU) fused into it; the ``nnx`` form with ``nnx.BatchNorm`` and the activation
after it. Both use ``nnx.LayerNorm`` and ``nnx.Linear``.

``model.train()`` / ``model.eval()`` switch BatchNorm statistics, dropout and stochastic depth
(which draw from the ``dropout`` stream of ``rngs``, or its default stream).

Training step: write it so that the Python work of walking the module graph is not paid on
every step. ``nnx.jit`` splits and merges the model and the optimizer on every call, which for
models of this size takes longer than the GPU needs for the step; split once and jit a pure
function over the state instead (docs/training-step.md)::

    graphdef, state = nnx.split((model, optimizer))

    @functools.partial(jax.jit, donate_argnums=0)
    def train_step(state, x, y):
        model, optimizer = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

Loading torchvision's weights (``x`` is NHWC where torchvision's input is NCHW)::

    model = resnet50(rngs=nnx.Rngs(0))
    load_torch_state_dict(model, torchvision.models.resnet50(weights=...).state_dict())
    model.eval()
    logits = model(x)

Example:
  >>> from flax import nnx
  >>> from convnn.models import resnet18
  >>> model = nnx.eval_shape(lambda: resnet18(rngs=nnx.Rngs(0)))  # shapes only, nothing drawn
  >>> model.fc.kernel.shape  # nnx.Linear (in, out); torchvision's fc.weight is (out, in)
  (512, 1000)
  >>> type(model.layer1.layers[0].conv1).__name__
  'Conv2d'
"""

from convnn.models.convnext import ConvNeXt, convnext_tiny
from convnn.models.efficientnet import EfficientNet, efficientnet_b0
from convnn.models.mobilenet import MobileNetV2, mobilenet_v2
from convnn.models.resnet import ResNet, resnet18, resnet50

MODELS = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "convnext_tiny": convnext_tiny,
    "mobilenet_v2": mobilenet_v2,
    "efficientnet_b0": efficientnet_b0,
}
"""Constructor per torchvision name: ``MODELS[name](num_classes, *, rngs, conv, dtype)``."""

__all__ = [
    "ConvNeXt",
    "EfficientNet",
    "MobileNetV2",
    "ResNet",
    "MODELS",
    "convnext_tiny",
    "efficientnet_b0",
    "mobilenet_v2",
    "resnet18",
    "resnet50",
]
