"""Times convnn's convolutions against plain ``lax``, PyTorch and MLX (where installed).

For every shape of a table of ResNet-50, ResNeXt, MobileNetV2 and ConvNeXt layers (dense, grouped
and depthwise), it times, in one run and interleaved:

* ``fwd``: the forward pass, jitted (PyTorch and MLX: their normal call);
* ``fwdbwd``: forward and backward (gradients in input and weight of ``sum(out * ct)``);
* ``eager``: the forward pass called without ``jax.jit`` (convnn and lax only);

and, separately, the eager-call overhead on tiny convolutions: a convnn call outside ``jit``
against a call of an already-jitted ``lax`` convolution.

It prints tables of medians (ms) and ratios (``lax / impl``: above 1 means faster than lax) and
writes everything to JSON (``benchmarks/results/<name>.json``; ``plot_results.py`` draws it).

Usage::

    python benchmarks/bench_conv.py                      # CPU table, a few minutes on 2 cores
    python benchmarks/bench_conv.py --gpu --batch 256    # full-size table, bf16 and fp32
    python benchmarks/bench_conv.py --strategies xla,decomposed,mixed   # each strategy forced
    python benchmarks/bench_conv.py --only depthwise --reps 5 --out my.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import convnn

RESULTS = Path(__file__).resolve().parent / "results"


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    kind: str  # "dense", "grouped" or "depthwise"
    hw: int  # input height = width
    c_in: int
    c_out: int
    k: int
    stride: int = 1
    groups: int = 1
    batch: int | None = None  # overrides --batch (the stem runs at a smaller batch on CPU)

    @property
    def padding(self) -> int:
        return self.k // 2

    def out_hw(self) -> int:
        return (self.hw + 2 * self.padding - self.k) // self.stride + 1

    def flops(self, batch: int) -> float:
        """Multiply-adds x 2 of the forward pass."""
        return 2.0 * batch * self.out_hw() ** 2 * self.c_out * self.k**2 * self.c_in / self.groups


# Full-size layers (ImageNet resolution), depthwise first (a deadline cuts the tail). The CPU
# table uses the same layers at smaller spatial sizes.
GPU_SHAPES = [
    Shape("mbv2-dw3x3-144@56", "depthwise", 56, 144, 144, 3, 1, 144),
    Shape("mbv2-dw3x3s2-144@56", "depthwise", 56, 144, 144, 3, 2, 144),
    Shape("mbv2-dw3x3-384@14", "depthwise", 14, 384, 384, 3, 1, 384),
    Shape("convnext-dw7x7-96@56", "depthwise", 56, 96, 96, 7, 1, 96),
    Shape("convnext-dw7x7-192@28", "depthwise", 28, 192, 192, 7, 1, 192),
    Shape("convnext-dw7x7-384@14", "depthwise", 14, 384, 384, 7, 1, 384),
    Shape("r50-stem-7x7s2", "dense", 224, 3, 64, 7, 2),
    Shape("r50-1x1-64-256@56", "dense", 56, 64, 256, 1),
    Shape("r50-3x3-64@56", "dense", 56, 64, 64, 3),
    Shape("r50-3x3s2-128@56", "dense", 56, 128, 128, 3, 2),
    Shape("r50-3x3-128@28", "dense", 28, 128, 128, 3),
    Shape("r50-3x3-256@14", "dense", 14, 256, 256, 3),
    Shape("r50-1x1-1024-256@14", "dense", 14, 1024, 256, 1),
    Shape("r50-3x3-512@7", "dense", 7, 512, 512, 3),
    Shape("resnext-3x3g32-128@56", "grouped", 56, 128, 128, 3, 1, 32),
    Shape("resnext-3x3g32-256@28", "grouped", 28, 256, 256, 3, 1, 32),
    Shape("resnext-3x3g32-512@14", "grouped", 14, 512, 512, 3, 1, 32),
]

CPU_SHAPES = [
    Shape("r50-stem-7x7s2@112", "dense", 112, 3, 64, 7, 2),
    Shape("r50-1x1-64-256@28", "dense", 28, 64, 256, 1),
    Shape("r50-3x3-64@28", "dense", 28, 64, 64, 3),
    Shape("r50-3x3s2-128@28", "dense", 28, 128, 128, 3, 2),
    Shape("r50-3x3-256@14", "dense", 14, 256, 256, 3),
    Shape("r50-1x1-1024-256@14", "dense", 14, 1024, 256, 1),
    Shape("r50-3x3-512@7", "dense", 7, 512, 512, 3),
    Shape("resnext-3x3g32-128@14", "grouped", 14, 128, 128, 3, 1, 32),
    Shape("resnext-3x3g32-256@7", "grouped", 7, 256, 256, 3, 1, 32),
    Shape("grouped-3x3g4-128@14", "grouped", 14, 128, 128, 3, 1, 4),
    Shape("mbv2-dw3x3-144@28", "depthwise", 28, 144, 144, 3, 1, 144),
    Shape("mbv2-dw3x3s2-144@28", "depthwise", 28, 144, 144, 3, 2, 144),
    Shape("mbv2-dw3x3-384@14", "depthwise", 14, 384, 384, 3, 1, 384),
    Shape("convnext-dw7x7-96@28", "depthwise", 28, 96, 96, 7, 1, 96),
    Shape("convnext-dw7x7-192@14", "depthwise", 14, 192, 192, 7, 1, 192),
    Shape("convnext-dw7x7-384@7", "depthwise", 7, 384, 384, 7, 1, 384),
]

EAGER_REPS, EAGER_CALLS = 61, 500  # samples per function, calls per sample
EAGER_SHAPES = [  # tiny: the call overhead dominates
    ("conv2d 1x8x8x8, 3x3 dense", (1, 8, 8, 8), (8, 3, 3, 8), dict(padding=1)),
    ("conv2d 1x8x8x8, 3x3 depthwise", (1, 8, 8, 8), (8, 3, 3, 1), dict(padding=1, groups=8)),
    ("conv1d 1x16x4, k3", (1, 16, 4), (4, 3, 4), dict(padding=1)),
    ("conv_transpose2d 1x4x4x4, 3x3 s2", (1, 4, 4, 4), (4, 3, 3, 4), dict(stride=2, padding=1)),
]


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------


def _sync(value):
    """Waits for ``value`` (JAX arrays, torch tensors or MLX arrays, or tuples of them)."""
    if isinstance(value, (tuple, list)):
        for v in value:
            _sync(v)
        return
    wait = _SYNC.get(type(value))
    if wait is not None:
        wait(value)
    else:
        jax.block_until_ready(value)


_SYNC: dict = {}  # type -> function that waits for a value of that type


def measure(fns: dict, reps: int, sample_s: float, budget_s: float,
            calls: int | None = None, raw: bool = False) -> dict:
    """``(median, min)`` seconds per call of each function, measured interleaved (``raw``: the
    list of samples instead, in the order taken).

    Each function is warmed up (compiled) first; each sample runs ``n`` calls back to back, with
    ``n`` chosen so that a sample lasts about ``sample_s`` (or ``n = calls`` for every function:
    then each sample pays the same final wait, which matters when comparing call overheads of a
    few microseconds); the order of the functions rotates between samples. Fewer samples are
    taken when a function is so slow that ``reps`` samples would exceed ``budget_s``.
    """
    counts, per_call = {}, {}
    for name, fn in fns.items():
        _sync(fn())  # compile / warm up
        t = time.perf_counter()
        _sync(fn())
        single = time.perf_counter() - t
        per_call[name] = single
        counts[name] = calls or max(1, min(1000, int(sample_s / max(single, 1e-7))))
    slowest = max(per_call[n] * counts[n] for n in fns)
    reps = max(2, min(reps, int(budget_s / max(slowest * len(fns), 1e-9))))
    samples = {name: [] for name in fns}
    names = list(fns)
    for r in range(reps):
        for name in names[r % len(names):] + names[: r % len(names)]:
            fn, n = fns[name], counts[name]
            t = time.perf_counter()
            for _ in range(n - 1):
                fn()
            _sync(fn())
            samples[name].append((time.perf_counter() - t) / n)
    if raw:
        return samples
    return {name: (statistics.median(v), min(v)) for name, v in samples.items()}


# --------------------------------------------------------------------------------------------
# implementations
# --------------------------------------------------------------------------------------------


def _lax_conv(x, w, s: Shape):
    return lax.conv_general_dilated(
        x, w, (s.stride, s.stride), [(s.padding, s.padding)] * 2,
        dimension_numbers=("NHWC", "OHWI", "NHWC"), feature_group_count=s.groups)


def _convnn_conv(x, w, s: Shape):
    return convnn.conv2d(x, w, stride=s.stride, padding=s.padding, groups=s.groups)


def _loss_grad(conv, s: Shape, strategy):
    def loss(x, w, ct):
        return jnp.sum((conv(x, w, s) * ct).astype(jnp.float32))

    grad = jax.grad(loss, argnums=(0, 1))
    if strategy is None:
        return jax.jit(grad)
    return jax.jit(convnn.lowering(strategy)(grad))


def jax_impls(s: Shape, x, w, ct, strategies):
    """(pass, impl) -> zero-argument callable, for lax and each convnn strategy."""
    fns = {}
    lax_fwd = jax.jit(lambda a, b: _lax_conv(a, b, s))
    fns[("fwd", "lax")] = lambda: lax_fwd(x, w)
    lax_grad = _loss_grad(_lax_conv, s, None)
    fns[("fwdbwd", "lax")] = lambda: lax_grad(x, w, ct)
    fns[("eager", "lax")] = lambda: _lax_conv(x, w, s)
    for strategy in strategies:
        label = "convnn" if strategy == "auto" else f"convnn:{strategy}"
        fwd = jax.jit(convnn.lowering(strategy)(lambda a, b: _convnn_conv(a, b, s)))
        fns[("fwd", label)] = lambda fwd=fwd: fwd(x, w)
        grad = _loss_grad(_convnn_conv, s, strategy)
        fns[("fwdbwd", label)] = lambda grad=grad: grad(x, w, ct)
        low = convnn.lowering(strategy)

        def eager(low=low):
            with low:
                return _convnn_conv(x, w, s)

        fns[("eager", label)] = eager
    return fns


def torch_impls(s: Shape, x, w, ct, device: str):
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return {}
    _SYNC[torch.Tensor] = (lambda t: torch.cuda.synchronize()) if device == "cuda" else (
        lambda t: None)
    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # autotuned, as XLA autotunes its convolutions
    dtype = {jnp.dtype(jnp.float32): torch.float32, jnp.dtype(jnp.bfloat16): torch.bfloat16,
             jnp.dtype(jnp.float16): torch.float16}[jnp.dtype(x.dtype)]

    def tensor(a, perm):
        t = torch.from_numpy(np.asarray(a, np.float32)).permute(*perm).to(device, dtype)
        return t.contiguous(memory_format=torch.channels_last)

    tx, tct = tensor(x, (0, 3, 1, 2)), tensor(ct, (0, 3, 1, 2))
    tw = tensor(w, (0, 3, 1, 2))
    txg, twg = tx.clone().requires_grad_(True), tw.clone().requires_grad_(True)

    def fwd():
        with torch.no_grad():
            return F.conv2d(tx, tw, stride=s.stride, padding=s.padding, groups=s.groups)

    def fwdbwd():
        txg.grad = twg.grad = None
        out = F.conv2d(txg, twg, stride=s.stride, padding=s.padding, groups=s.groups)
        out.backward(tct)
        return twg.grad

    return {("fwd", "torch"): fwd, ("fwdbwd", "torch"): fwdbwd}


def mlx_impls(s: Shape, x, w, ct):
    try:
        import mlx.core as mx
    except ImportError:
        return {}
    if jnp.dtype(x.dtype) != jnp.float32:
        return {}
    _SYNC[mx.array] = mx.eval
    mx_, mw, mct = (mx.array(np.asarray(a, np.float32)) for a in (x, w, ct))

    def conv(a, b):
        return mx.conv2d(a, b, stride=s.stride, padding=s.padding, groups=s.groups)

    grad = mx.grad(lambda a, b: (conv(a, b) * mct).sum(), argnums=(0, 1))
    return {("fwd", "mlx"): lambda: conv(mx_, mw), ("fwdbwd", "mlx"): lambda: grad(mx_, mw)}


# --------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------


def bench_shape(s: Shape, batch: int, dtype, args, device: str) -> list[dict]:
    rng = np.random.default_rng(0)
    n = s.batch or batch
    x = jnp.asarray(rng.standard_normal((n, s.hw, s.hw, s.c_in)), dtype)
    w = jnp.asarray(rng.standard_normal((s.c_out, s.k, s.k, s.c_in // s.groups)) /
                    math.sqrt(s.k * s.k * s.c_in / s.groups), dtype)
    o = s.out_hw()
    ct = jnp.asarray(rng.standard_normal((n, o, o, s.c_out)), dtype)
    strategies = args.group_strategies if s.kind != "dense" and args.group_strategies else \
        args.strategies
    fns = jax_impls(s, x, w, ct, strategies)
    if not args.no_torch:
        fns.update(torch_impls(s, x, w, ct, device))
    if not args.no_mlx and device == "cpu":
        fns.update(mlx_impls(s, x, w, ct))
    rows = []
    for pass_ in ("fwd", "fwdbwd", "eager"):
        group = {impl: fn for (p, impl), fn in fns.items() if p == pass_}
        if pass_ == "eager" and args.no_eager:
            continue
        times = measure(group, args.reps, args.sample_s, args.budget_s)
        for impl, (t, t_min) in times.items():
            rows.append(dict(shape=s.name, kind=s.kind, dtype=jnp.dtype(dtype).name, batch=n,
                             hw=s.hw, c_in=s.c_in, c_out=s.c_out, k=s.k, stride=s.stride,
                             groups=s.groups, pass_=pass_, impl=impl, ms=t * 1e3,
                             ms_min=t_min * 1e3, gflops=s.flops(n) / t / 1e9))
    return rows


def bench_eager(args) -> list[dict]:
    """The cost of an eager convnn call against a call of an already-jitted lax convolution."""
    rows = []
    for name, xs, ws, kw in EAGER_SHAPES:
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal(xs), jnp.float32)
        w = jnp.asarray(rng.standard_normal(ws), jnp.float32)
        n = len(xs) - 2
        transpose = name.startswith("conv_transpose")
        fn = getattr(convnn, f"conv_transpose{n}d" if transpose else f"conv{n}d")
        groups = kw.get("groups", 1)
        stride, pad = kw.get("stride", 1), kw.get("padding", 0)
        if transpose:
            k = ws[1]
            pads = [(k - 1 - pad, k - 1 - pad)] * n
            plain = lambda a, b: lax.conv_general_dilated(  # noqa: E731
                a, lax.rev(b, tuple(range(1, n + 1))), (1,) * n, pads, lhs_dilation=(stride,) * n,
                dimension_numbers=_dims(n), feature_group_count=groups)
        else:
            plain = lambda a, b: lax.conv_general_dilated(  # noqa: E731
                a, b, (stride,) * n, [(pad, pad)] * n, dimension_numbers=_dims(n),
                feature_group_count=groups)
        jitted = jax.jit(plain)
        np.testing.assert_allclose(np.asarray(fn(x, w, **kw)), np.asarray(jitted(x, w)),
                                   rtol=1e-4, atol=1e-4)
        # Interleaved samples of the same number of calls for every function (a sample's final
        # wait is then the same share of each); a busy machine only ever adds time, so the
        # minimum is the robust estimate of a call's own cost (the median is reported too).
        # "async": calls back to back, waiting for the last (dispatch throughput); "sync":
        # waiting for each.
        calls = {"lax jitted": lambda: jitted(x, w), "convnn eager": lambda: fn(x, w, **kw),
                 "lax eager": lambda: plain(x, w)}
        fns = dict(calls)
        fns.update({f"{k} (sync)": (lambda c=c: c().block_until_ready()) for k, c in calls.items()})
        samples = measure(fns, EAGER_REPS, 0.0, 60.0, calls=EAGER_CALLS, raw=True)
        for impl, v in samples.items():
            base = samples["lax jitted (sync)" if impl.endswith("(sync)") else "lax jitted"]
            # Sample r of each function was taken in the same round as sample r of the
            # baseline: the median of these paired ratios cancels slow drifts of the machine.
            paired = statistics.median(a / b for a, b in zip(v, base))
            rows.append(dict(shape=name, impl=impl, us=statistics.median(v) * 1e6,
                             us_min=min(v) * 1e6, paired_ratio_vs_lax_jitted=paired))
    return rows


def _dims(n):
    sp = "DHW"[3 - n:]
    return (f"N{sp}C", f"O{sp}I", f"N{sp}C")


def print_table(rows, impls, title):
    print(f"\n{title}")
    passes = ["fwd", "fwdbwd", "eager"]
    by = {(r["shape"], r["dtype"], r["pass_"], r["impl"]): r["ms"] for r in rows}
    keys = sorted({(r["shape"], r["dtype"]) for r in rows}, key=lambda k: [r["shape"] for r in
                                                                           rows].index(k[0]))
    for pass_ in passes:
        present = [i for i in impls if any((k[0], k[1], pass_, i) in by for k in keys)]
        if not present:
            continue
        head = f"{'[' + pass_ + '] shape':34s} {'dtype':9s}" + "".join(f"{i:>19s}" for i in present)
        head += "".join(f"{'lax/' + i:>22s}" for i in present if i != "lax")
        print(head)
        for shape, dt in keys:
            if (shape, dt, pass_, "lax") not in by:
                continue
            base = by[(shape, dt, pass_, "lax")]
            line = f"{shape:34s} {dt:9s}"
            line += "".join(f"{by.get((shape, dt, pass_, i), float('nan')):19.3f}" for i in present)
            line += "".join(f"{base / by.get((shape, dt, pass_, i), float('nan')):22.2f}"
                            for i in present if i != "lax")
            print(line)


def summary(rows):
    """Geometric means of lax / convnn per kind, pass and dtype (the issue's targets)."""
    out = {}
    by = {(r["shape"], r["dtype"], r["pass_"], r["impl"]): r for r in rows}
    for (shape, dt, pass_, impl), r in by.items():
        if impl == "lax" or not impl.startswith("convnn"):
            continue
        base = by.get((shape, dt, pass_, "lax"))
        if base is None:
            continue
        out.setdefault(f"{impl} {r['kind']} {pass_} {dt}", []).append(base["ms"] / r["ms"])
    return {k: dict(geomean=math.exp(sum(map(math.log, v)) / len(v)), min=min(v), max=max(v),
                    n=len(v)) for k, v in sorted(out.items())}


def machine(device: str) -> dict:
    info = dict(platform=platform.platform(), python=platform.python_version(),
                cpu_count=os.cpu_count(), jax=jax.__version__, jax_backend=jax.default_backend(),
                device=str(jax.devices()[0].device_kind))
    try:
        import torch

        info["torch"] = torch.__version__
        if device == "cuda":
            info["torch_device"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    try:
        import mlx.core as mx

        info["mlx"] = mx.__version__
    except ImportError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu"] = names[0] if names else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    return info


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", action="store_true", help="full-size shapes, bf16 and fp32, on GPU")
    p.add_argument("--batch", type=int, default=None, help="batch (CPU default 4, GPU 256)")
    p.add_argument("--dtypes", default=None,
                   help="comma list (CPU: float32; GPU: bfloat16,float32)")
    p.add_argument("--strategies", default="auto",
                   help="convnn lowerings to time, comma list of 'auto' and strategy names")
    p.add_argument("--group-strategies", default=None,
                   help="strategies for grouped and depthwise shapes (default: --strategies)")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="start no new shape after this many seconds (results so far are kept)")
    p.add_argument("--only", default=None, help="comma list of kinds or shape-name substrings")
    p.add_argument("--reps", type=int, default=7, help="samples per implementation")
    p.add_argument("--sample-s", type=float, default=None, help="target seconds per sample")
    p.add_argument("--budget-s", type=float, default=None, help="max seconds per shape and pass")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--no-mlx", action="store_true")
    p.add_argument("--no-eager", action="store_true", help="skip the eager pass per shape")
    p.add_argument("--skip-overhead", action="store_true", help="skip the eager-overhead table")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<mode>.json)")
    args = p.parse_args(argv)
    device = "cuda" if args.gpu and jax.default_backend() == "gpu" else "cpu"
    args.strategies = args.strategies.split(",")
    args.group_strategies = args.group_strategies.split(",") if args.group_strategies else None
    batch = args.batch or (256 if args.gpu else 4)
    dtypes = (args.dtypes or ("bfloat16,float32" if args.gpu else "float32")).split(",")
    args.sample_s = args.sample_s or (0.05 if args.gpu else 0.1)
    args.budget_s = args.budget_s or (4.0 if args.gpu else 12.0)
    shapes = GPU_SHAPES if args.gpu else CPU_SHAPES
    if args.only:
        keys = args.only.split(",")
        shapes = [s for s in shapes if s.kind in keys or any(k in s.name for k in keys)]
    if not args.gpu and not args.batch:  # the stem at 112x112 runs at batch 2 on CPU
        shapes = [dataclasses.replace(s, batch=2) if s.name.startswith("r50-stem") else s
                  for s in shapes]

    info = machine(device)
    print(json.dumps(info))
    t0 = time.time()
    rows, errors = [], []
    out = Path(args.out) if args.out else RESULTS / f"{'gpu' if args.gpu else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(**extra):
        doc = dict(machine=info, date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                   argv=sys.argv[1:], batch=batch, dtypes=dtypes, strategies=args.strategies,
                   group_strategies=args.group_strategies, wall_s=time.time() - t0, rows=rows,
                   errors=errors, **extra)
        out.write_text(json.dumps(doc, indent=1))

    names = args.strategies + (args.group_strategies or [])
    impls = ["lax"] + list(dict.fromkeys(
        "convnn" if s == "auto" else f"convnn:{s}" for s in names)) + ["torch", "mlx"]
    for s in shapes:
        for dtype in dtypes:
            if args.deadline_s and time.time() - t0 > args.deadline_s:
                errors.append(f"{s.name} {dtype}: skipped (deadline)")
                continue
            t = time.time()
            try:
                rows += bench_shape(s, batch, jnp.dtype(dtype), args, device)
            except Exception as err:  # keep the other shapes' results
                errors.append(f"{s.name} {dtype}: {type(err).__name__}: {err}"[:500])
            print(f"  {s.name} {dtype}: {time.time() - t:.1f}s", file=sys.stderr, flush=True)
            save()
    print_table(rows, impls, f"medians in ms, and lax / impl (above 1: faster than lax); {info}")
    eager = [] if args.skip_overhead else bench_eager(args)
    if eager:
        print(f"\neager overhead (us per call: min / median of {EAGER_REPS} interleaved samples of "
          f"{EAGER_CALLS} calls; ratios: of the minima / of the medians / median of the "
          f"per-round ratios)")
        by = {(r["shape"], r["impl"]): (r["us_min"], r["us"]) for r in eager}
        paired = {(r["shape"], r["impl"]): r["paired_ratio_vs_lax_jitted"] for r in eager}
        for mode in ("", " (sync)"):
            print("async: calls back to back" if not mode else "sync: each call waited for")
            for name, *_ in EAGER_SHAPES:
                jt, ce, le = (by[(name, i + mode)] for i in ("lax jitted", "convnn eager",
                                                            "lax eager"))
                print(f"  {name:34s} lax jitted {jt[0]:6.1f} / {jt[1]:6.1f}  convnn eager "
                      f"{ce[0]:6.1f} / {ce[1]:6.1f}  lax eager {le[0]:6.1f} / {le[1]:6.1f}  "
                      f"convnn eager / lax jitted {ce[0] / jt[0]:5.2f} / {ce[1] / jt[1]:5.2f}"
                      f" / paired {paired[(name, 'convnn eager' + mode)]:5.2f}")
    summ = summary(rows)
    print("\ngeometric means of lax / convnn")
    for k, v in summ.items():
        print(f"  {k:50s} {v['geomean']:6.2f}  "
              f"(min {v['min']:.2f}, max {v['max']:.2f}, n={v['n']})")
    save(eager_overhead=eager, summary=summ)
    for e in errors:
        print("error:", e)
    print(f"\nwrote {out} ({time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()
