"""Which backend a device is, and for Apple GPUs which plugin (and version) provides it.

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

import functools
import importlib.metadata
from collections.abc import Callable
from typing import Any

import jax

from convnn._lowering import _apple
from convnn._lowering._config import Target

__all__ = [
    "APPLE_PLATFORMS",
    "PLATFORMS",
    "PLUGIN_PACKAGES",
    "apple_plugin",
    "detect_backend",
    "installed_version",
    "target_for",
    "target_of",
]

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


def package_version(package: str) -> str | None:
    """The installed version of a package, or ``None``."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def plugin_version(plugin: str, version_of: Callable[[str], str | None]) -> str | None:
    """The version of the first installed package of ``plugin``, or ``None``."""
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
    version_of = package_version if version_of is None else version_of
    candidates = APPLE_PLATFORMS.get(platform.lower())
    if candidates is None:
        return None, None
    installed = {p: v for p in candidates if (v := plugin_version(p, version_of)) is not None}
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


def _gpu_backend(device) -> str:
    version = str(getattr(getattr(device, "client", None), "platform_version", "")).lower()
    return "rocm" if "rocm" in version else "cuda"


def _apple_backend(device) -> str | None:
    return apple_plugin(device.platform)[0]


#: JAX platform name -> backend name, or a function of the device that returns one (for
#: platforms whose name alone is ambiguous).
PLATFORMS: dict[str, str | Callable[[Any], str | None]] = {
    "cpu": "cpu",
    "cuda": "cuda",
    "rocm": "rocm",
    "tpu": "tpu",
    "gpu": _gpu_backend,
    **{platform: _apple_backend for platform in ("METAL", "metal", "mps", "mtl")},
}


@functools.cache
def installed_version(plugin: str) -> str | None:
    """An Apple plugin's version from package metadata, else ``_apple.ASSUMED_VERSIONS``."""
    if plugin not in PLUGIN_PACKAGES:
        return None
    found = plugin_version(plugin, package_version)
    return found if found is not None else _apple.ASSUMED_VERSIONS.get(plugin)


_DETECTED: dict[str, str | None] = {}


def detect_backend(device: jax.Device | None = None) -> str | None:
    """The backend name of ``device`` (or of JAX's default backend); ``None`` for a platform
    that has no entry in :data:`PLATFORMS`."""
    platform = device.platform if device is not None else jax.default_backend()
    if platform not in _DETECTED:
        entry = PLATFORMS.get(platform)
        if callable(entry):
            entry = entry(device if device is not None else jax.devices(platform)[0])
        _DETECTED[platform] = entry
    return _DETECTED[platform]


def target_for(backend: str | None) -> Target:
    """A :class:`Target` for a backend name: an Apple plugin's carries its installed (or
    assumed) version."""
    return Target(backend, installed_version(backend) if backend is not None else None)


def target_of(device: jax.Device | None = None) -> Target:
    """The :class:`Target` of ``device`` (``None``: JAX's default backend)."""
    return target_for(detect_backend(device))
