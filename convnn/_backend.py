"""``convnn.backend_info``: where convolutions run, and for Apple GPUs which plugin provides it.

The detection itself (platform names, the Apple plugins' packages and versions) is in
``convnn/_lowering/_detect.py``, where the lowering uses it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import jax

from convnn._lowering import _detect, _policy
from convnn._lowering._detect import APPLE_PLATFORMS, PLUGIN_PACKAGES, apple_plugin

__all__ = ["BackendInfo", "backend_info", "apple_plugin", "APPLE_PLATFORMS", "PLUGIN_PACKAGES"]


@dataclasses.dataclass(frozen=True, repr=False)
class BackendInfo:
    """Where convolutions run: the JAX platform and, on Apple GPUs, the plugin behind it.

    Attributes:
      platform: the JAX platform name of the device (``"cpu"``, ``"gpu"``, ``"METAL"``, ...).
      backend: the backend name whose lowering policy ``convnn.lowering("auto")`` applies
        (``"cpu"``, ``"cuda"``, ``"jax-metal"``, ``"jax-mps"``, ...), or ``None`` if convnn
        has no policy for the platform (then every convolution goes to XLA's convolution).
      plugin: the Apple GPU plugin (``"jax-metal"``, ``"jax-mps"``, ``"metaljax"``,
        ``"metal-pjrt"``, ``"jax-metallib"``), or ``None`` for other platforms.
      plugin_version: the plugin's installed package version, or ``None``.
      jax_version: ``jax.__version__``.
      jaxlib_version: the installed jaxlib version.
      device_kind: the device's ``device_kind`` (e.g. ``"cpu"``, ``"NVIDIA H100 80GB HBM3"``).
      device_count: how many devices of the platform JAX sees.

    Example:
      >>> import convnn
      >>> info = convnn.backend_info()
      >>> info.platform, info.apple, info.plugin_version
      ('cpu', False, None)
    """

    platform: str
    backend: str | None
    plugin: str | None
    plugin_version: str | None
    jax_version: str
    jaxlib_version: str | None
    device_kind: str | None
    device_count: int

    @property
    def apple(self) -> bool:
        """True on an Apple GPU plugin."""
        return self.plugin is not None

    def __repr__(self) -> str:
        fields = [f"platform={self.platform!r}", f"backend={self.backend!r}"]
        if self.plugin is not None:
            fields.append(f"plugin={self.plugin!r}")
            fields.append(f"plugin_version={self.plugin_version!r}")
        fields.append(f"jax={self.jax_version!r}")
        fields.append(f"devices={self.device_count}")
        return f"BackendInfo({', '.join(fields)})"


def backend_info(
    device: jax.Device | None = None,
    *,
    version_of: Callable[[str], str | None] | Mapping[str, str] | None = None,
) -> BackendInfo:
    """Describes the backend convolutions run on: platform, and for Apple GPUs the plugin.

    Args:
      device: the device to describe; ``None`` (default) describes JAX's default device.
      version_of: keyword-only; ``package name -> version or None`` (or a mapping), in place of
        the installed packages' metadata. For tests; default ``None`` (the metadata).

    Returns:
      A frozen :class:`BackendInfo`.

    Raises:
      TypeError: if ``device`` is not ``None`` or a ``jax.Device``.

    Example:
      >>> import convnn
      >>> info = convnn.backend_info()
      >>> info.platform, info.backend, info.plugin
      ('cpu', 'cpu', None)
    """
    if device is not None and not isinstance(device, jax.Device):
        raise TypeError(
            f"[backend_info] device must be None or a jax.Device, got {device!r} of type "
            f"{type(device).__name__}."
        )
    if isinstance(version_of, Mapping):
        version_of = dict(version_of).get
    lookup = _detect.package_version if version_of is None else version_of
    if device is None:
        device = jax.devices()[0]
    platform = device.platform
    plugin, plugin_version = apple_plugin(platform, lookup)
    if plugin is not None:
        backend = plugin if plugin in _policy.BACKENDS else None
    else:
        backend = _detect.detect_backend(device)
    return BackendInfo(
        platform=platform,
        backend=backend,
        plugin=plugin,
        plugin_version=plugin_version,
        jax_version=jax.__version__,
        jaxlib_version=lookup("jaxlib"),
        device_kind=getattr(device, "device_kind", None),
        device_count=len(jax.devices(platform)),
    )
