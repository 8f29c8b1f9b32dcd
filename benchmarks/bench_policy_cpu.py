"""The CPU "auto" policy against plain "xla": no auto pick may be much slower.

For a grid of shapes (large kernels, large groups, 3-D, transposed), times the forward pass and
both gradients under ``convnn.lowering("auto")`` and ``convnn.lowering("xla")``: the first call
(compilation included, as a program's first step pays it) and a second call (steady state).
Prints a table with the strategy ``convnn.explain`` names and the worst auto/xla ratios, and
writes JSON. A few minutes on a 2-core CPU.

Usage::

    python benchmarks/bench_policy_cpu.py --json benchmarks/results/policy_cpu.json
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import convnn

# (function, input shape, weight shape, arguments)
GRID = [
    ("conv_transpose3d", (2, 6, 5, 4, 4), (6, 10, 10, 12, 2), dict(stride=(3, 1, 1), groups=2)),
    ("conv3d", (2, 12, 12, 12, 16), (16, 5, 5, 5, 1), dict(groups=16, padding=2)),
    ("conv3d", (2, 12, 12, 12, 16), (16, 3, 3, 3, 4), dict(groups=4, padding=1)),
    ("conv3d", (2, 12, 12, 12, 64), (64, 3, 3, 3, 8), dict(groups=8, padding=1)),
    ("conv2d", (4, 32, 32, 32), (32, 11, 11, 1), dict(groups=32, padding=5)),
    ("conv2d", (4, 32, 32, 32), (32, 7, 7, 2), dict(groups=16, padding=3)),
    ("conv2d", (4, 32, 32, 128), (128, 7, 7, 8), dict(groups=16, padding=3)),
    ("conv2d", (2, 16, 16, 256), (256, 5, 5, 256), dict(padding=2)),
    ("conv_transpose2d", (4, 16, 16, 32), (32, 9, 9, 2), dict(stride=2, groups=16)),
    ("conv1d", (8, 256, 64), (64, 31, 4), dict(groups=16, padding=15)),
    ("conv2d", (128, 32, 32, 3), (64, 4, 4, 3), dict(padding=2)),  # the stem rule's bound
]


def timed(fn, x, w, g) -> tuple[float, float]:
    """Seconds of the first call (with compilation) and of a second call."""

    def run(a, b):
        out, vjp = jax.vjp(fn, a, b)
        return (out, *vjp(g))

    jitted = jax.jit(run)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        jax.block_until_ready(jitted(x, w))
        times.append(time.perf_counter() - start)
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="benchmarks/results/policy_cpu.json")
    parser.add_argument("--only", type=int, default=None, help="run only the first N shapes")
    args = parser.parse_args()
    rows = []
    for name, x_shape, w_shape, kw in GRID[:args.only]:
        fn = getattr(convnn, name)
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
        w = jnp.asarray(rng.standard_normal(w_shape), jnp.float32)
        f = lambda a, b, fn=fn, kw=kw: fn(a, b, **kw)  # noqa: E731
        g = jnp.ones(jax.eval_shape(f, x, w).shape, jnp.float32)
        e = convnn.explain(fn, x, w, **kw)
        with convnn.lowering("xla"):
            t_xla = timed(f, x, w, g)
        with convnn.lowering("auto"):
            t_auto = timed(f, x, w, g)
        rows.append(dict(fn=name, x=x_shape, w=w_shape, kwargs={k: str(v) for k, v in kw.items()},
                         strategy=e.strategy, rule=e.rule, auto_first_s=t_auto[0],
                         xla_first_s=t_xla[0], auto_s=t_auto[1], xla_s=t_xla[1],
                         ratio_first=t_auto[0] / t_xla[0], ratio=t_auto[1] / t_xla[1]))
        print(f"{name} {x_shape} {w_shape} {kw}: {e.strategy} first {t_auto[0]:.2f} s "
              f"(xla {t_xla[0]:.2f}), then {t_auto[1]:.3f} s (xla {t_xla[1]:.3f})", flush=True)
        jax.clear_caches()
    print("\n| function | input | weight | arguments | auto | first call: auto / xla (s) | "
          "ratio | second call: auto / xla (s) | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['fn']} | {r['x']} | {r['w']} | {r['kwargs']} | {r['strategy']} | "
              f"{r['auto_first_s']:.2f} / {r['xla_first_s']:.2f} | {r['ratio_first']:.2f} | "
              f"{r['auto_s']:.3f} / {r['xla_s']:.3f} | {r['ratio']:.2f} |")
    worst = {k: max(rows, key=lambda r, k=k: r[k]) for k in ("ratio_first", "ratio")}
    for k, r in worst.items():
        print(f"worst auto/xla {k}: {r[k]:.2f} ({r['fn']} {r['w']} {r['kwargs']})")
    with open(args.json, "w") as fh:
        json.dump(dict(env=dict(jax=jax.__version__, device=str(jax.devices()[0]),
                                machine="2-core x86-64 CPU, shared"), rows=rows,
                       worst_ratio_first_call=worst["ratio_first"]["ratio_first"],
                       worst_ratio=worst["ratio"]["ratio"]), fh, indent=1)


if __name__ == "__main__":
    main()
