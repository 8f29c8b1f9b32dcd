"""``python -m convnn``: the doctor. Run it first on a new machine, above all on an Apple GPU.

It prints the versions, the platform and (on Apple GPUs) the plugin behind it, the devices and the
convolution routing in force, then runs a short self-check: a few convolutions (dense, grouped,
depthwise, strided, transposed, 3-D), their values and both gradients, on the default device,
compared with a float64 NumPy reference. It exits with status 1 if any of them disagrees (or
raises), 0 otherwise. A plugin bug that kills the process shows up as the last case printed.

Options: ``--strategy NAME`` forces a lowering strategy for the self-check (``xla`` checks the
plugin's own convolution), ``--backend NAME`` applies another backend's policy, ``--dtype``
checks in ``float16`` or ``bfloat16`` instead of ``float32``.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform as _platform
import sys

#: Environment variable that makes the doctor check a deliberately broken strategy (a wrong
#: input gradient), to see the failure report; the same as the hidden ``--break-for-testing``.
BREAK_ENV = "CONVNN_DOCTOR_BREAK"


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _versions() -> list[tuple[str, str]]:
    import importlib.metadata

    out = [("python", _platform.python_version()),
           ("os", f"{_platform.system()} {_platform.release()} {_platform.machine()}")]
    for package in ("convnn", "jax", "jaxlib", "numpy", "ml_dtypes", "flax"):
        try:
            out.append((package, importlib.metadata.version(package)))
        except importlib.metadata.PackageNotFoundError:
            out.append((package, "not installed"))
    return out


def _broken_strategy():
    """The ``"xla"`` strategy with a wrong input gradient (scaled by 1.5), for testing."""
    import jax

    from convnn._lowering import _registry
    from convnn._lowering._xla import conv_xla

    @functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
    def broken(x, w, spec):
        return conv_xla(x, w, spec)

    def fwd(x, w, spec):
        return jax.vjp(lambda a, b: conv_xla(a, b, spec), x, w)

    def bwd(spec, vjp, g):
        dx, dw = vjp(g)
        return dx * 1.5, dw

    broken.defvjp(fwd, bwd)

    def conv(x, w, spec):
        return broken(x, w, spec)

    def passes(cfg):
        return _registry.Passes("lax.conv_general_dilated",
                                "XLA's transpose, scaled by 1.5 (deliberately wrong)",
                                "XLA's transpose")

    return _registry.Strategy("broken", conv, passes)


def _print_routing(info, backend: str | None, strategy: str) -> None:
    from convnn._lowering import _apple, _detect, _policy

    _write("routing:\n")
    if strategy != "auto":
        _write(f"  every convolution is forced to the strategy {strategy!r}\n")
        return
    backend = backend if backend is not None else info.backend
    policy = _policy.policy_for(backend)
    _write(f"  policy \"auto\" for backend {backend!r}: {policy.__module__}.{policy.__name__}\n")
    if backend in _apple.APPLE_BACKENDS:
        version = _detect.installed_version(backend)
        assumed = info.plugin != backend or info.plugin_version is None
        _write(f"  {backend} version {version or 'unknown'}"
               f"{' (assumed: package not installed)' if assumed else ''}\n")
        rules = _apple.active_rules(backend, version)
        if not rules:
            _write("  no routing rule applies: every convolution goes to the plugin\n")
        for rule in rules:
            target = ("computed in float32" if rule.strategy == "float32"
                      else f"-> {rule.strategy!r}")
            _write(f"  - {rule.what} {target}: {rule.why}\n")
    elif info.plugin is not None:
        _write(f"  no routing table for {info.plugin}: every convolution goes to XLA's "
               "convolution\n")
    _write("  (the strategy each self-check case uses is shown in brackets below)\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m convnn",
        description="convnn doctor: versions, backend, routing and a convolution self-check.")
    parser.add_argument("--strategy", default="auto",
                        help='lowering strategy for the self-check (default "auto": the policy)')
    parser.add_argument("--backend", default=None,
                        help="apply this backend's policy (e.g. jax-metal) instead of the "
                             "detected one")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--break-for-testing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    broken = args.break_for_testing or os.environ.get(BREAK_ENV, "") not in ("", "0")

    import jax

    import convnn
    from convnn import _selfcheck
    from convnn._lowering import _registry

    _write("convnn doctor\n")
    for name, version in _versions():
        _write(f"  {name:<10} {version}\n")
    info = convnn.backend_info()
    _write(f"backend:\n  {info!r}\n")
    if info.plugin is not None:
        _write(f"  Apple GPU plugin: {info.plugin} {info.plugin_version or '(version unknown)'}\n")
    _write(f"  devices: {jax.devices()}\n")

    strategy = args.strategy
    added = None
    if broken:
        added = _broken_strategy()
        _registry.register(added)
        strategy = added.name
        _write(f"  ({BREAK_ENV} / --break-for-testing: checking a deliberately broken strategy)\n")
    try:
        try:
            selection = convnn.lowering(strategy, backend=args.backend)
        except (TypeError, ValueError) as err:
            parser.error(str(err))
        _print_routing(info, args.backend, strategy)
        tol = _selfcheck.TOLERANCE[args.dtype]
        _write(f"self-check ({args.dtype} on {jax.devices()[0].platform}, against a float64 "
               f"NumPy reference; largest error relative to the largest value, tolerance "
               f"{tol:.0e}):\n")
        with selection:
            results = _selfcheck.run_all(args.dtype, report=_write)
    finally:
        if added is not None:
            _registry.unregister(added.name)

    failed = [r for r in results if not r.ok]
    if not failed:
        _write(f"result: all {len(results)} convolutions agree with the reference.\n")
        return 0
    _write(f"result: MISMATCH in {len(failed)} of {len(results)} convolutions:\n")
    for r in failed:
        bad = [k for k, e in r.errors.items() if e is None or e > r.tolerance]
        what = r.error.splitlines()[0][:200] if r.error else ", ".join(
            f"{k} off by {r.errors[k]:.1e}" for k in bad)
        _write(f"  - {r.case.name} ({r.case.fn}, input {r.case.x_shape}, weight "
               f"{r.case.w_shape}, {r.case.kwargs}) [{r.strategy}]: {what}\n")
    _write(
        "convnn computes wrong results on this backend for the convolutions above. Until this is\n"
        "fixed, `with convnn.lowering(\"decomposed\"):` avoids the backend's convolution kernels\n"
        "(rerun with --strategy decomposed to check). Please report it with this whole output\n"
        "(see docs/apple-gpu.md, \"Reporting a mismatch\").\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
