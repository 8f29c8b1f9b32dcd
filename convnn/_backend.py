"""Which JAX backend convolutions run on, and for Apple GPUs which plugin provides it.

JAX names a backend by its platform (``"cpu"``, ``"gpu"``, ``"tpu"``, or the name a PJRT plugin
registers). Apple GPUs are served by several independent plugins whose platform names overlap,
so the platform alone does not say which one is installed (and which bugs it has):

================== ============== =================================================
plugin (package)   platform       notes
================== ============== =================================================
``jax-metal``      ``METAL``      Apple's plugin; unmaintained since 0.1.1 (2024)
``metaljax``       ``metal``      runs StableHLO on MLX; jax 0.11.x
``jax-mps``        ``mps``        runs StableHLO on MLX; jax 0.9 to 0.11 by release
``jax-metallib``   ``mps``        MPSGraph; jax 0.9.x (detected, no routing table)
``metal-pjrt``     ``mtl``        XLA:GPU codegen to Metal; built from source
================== ============== =================================================

The plugin is read from the installed packages' metadata (:mod:`importlib.metadata`), which is
also where its version comes from (``jax-metal`` 0.1.1's own ``version()`` says ``0.1.0``).
``metal``/``METAL`` is ambiguous between ``jax-metal`` and ``metaljax``: when both are installed,
the JAX version decides (``jax-metal`` only loads on jax < 0.5.1, ``metaljax`` needs 0.11).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from collections.abc import Callable, Mapping

import jax

__all__ = ["BackendInfo", "backend_info", "apple_plugin", "APPLE_PLATFORMS", "PLUGIN_PACKAGES"]

#: Apple GPU plugin -> the package names it is installed under (first found wins).
PLUGIN_PACKAGES: dict[str, tuple[str, ...]] = {
    "jax-metal": ("jax-metal",),
    "metaljax": ("metaljax",),
    "jax-mps": ("jax-mps",),
    "jax-metallib": ("jax-metallib",),
    "metal-pjrt": ("metal-pjrt-plugin", "metal-pjrt-core"),
}

#: JAX platform name (lower case) -> the Apple GPU plugins that register it, most likely first
#: when no package metadata says otherwise.
APPLE_PLATFORMS: dict[str, tuple[str, ...]] = {
    "metal": ("jax-metal", "metaljax"),
    "mps": ("jax-mps", "jax-metallib"),
    "mtl": ("metal-pjrt",),
}


def _installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _plugin_version(plugin: str, version_of: Callable[[str], str | None]) -> str | None:
    for package in PLUGIN_PACKAGES[plugin]:
        found = version_of(package)
        if found is not None:
            return found
    return None


def _major_minor(version: str | None) -> tuple[int, int]:
    parts = []
    for piece in (version or "0.0").split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit()) or "0"
        parts.append(int(digits))
    return (parts + [0])[0], (parts + [0, 0])[1]


def apple_plugin(
    platform: str, version_of: Callable[[str], str | None] | None = None
) -> tuple[str | None, str | None]:
    """The Apple GPU plugin behind a JAX platform name, and its installed version.

    Args:
      platform: a JAX platform name such as ``"METAL"``, ``"metal"``, ``"mps"`` or ``"mtl"``.
      version_of: ``package name -> version or None``; defaults to the installed packages'
        metadata (tests pass a fake).

    Returns:
      ``(plugin, version)``: ``(None, None)`` for a platform no Apple plugin registers; the
      version is ``None`` when no package of the plugin is installed (a source build).

    Example:
      >>> apple_plugin("cpu")
      (None, None)
      >>> apple_plugin("mps", {"jax-mps": "0.10.11"}.get)
      ('jax-mps', '0.10.11')
      >>> apple_plugin("metal", {"metaljax": "0.11.9"}.get)
      ('metaljax', '0.11.9')
    """
    version_of = _installed_version if version_of is None else version_of
    candidates = APPLE_PLATFORMS.get(platform.lower())
    if candidates is None:
        return None, None
    installed = {p: v for p in candidates if (v := _plugin_version(p, version_of)) is not None}
    if len(installed) == 1:
        return next(iter(installed.items()))
    if not installed:
        # A build from source: the platform's usual owner (METAL in capitals is jax-metal's).
        if platform.lower() == "metal":
            return ("jax-metal" if platform == "METAL" else "metaljax"), None
        return candidates[0], None
    if platform.lower() == "metal":  # both jax-metal and metaljax installed: jax decides
        plugin = "metaljax" if _major_minor(version_of("jax")) >= (0, 6) else "jax-metal"
        return plugin, installed[plugin]
    plugin = candidates[0] if candidates[0] in installed else next(iter(installed))
    return plugin, installed[plugin]


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
    lookup = _installed_version if version_of is None else version_of
    if device is None:
        device = jax.devices()[0]
    platform = device.platform
    plugin, plugin_version = apple_plugin(platform, lookup)

    from convnn._lowering import _policy  # the policy's own platform table decides the backend

    if plugin is not None:
        backend = plugin if plugin in _policy.BACKENDS else None
    else:
        backend = _policy.detect_backend(device)
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
