"""Sweeps small convolutions through every public function and strategy, in child processes.

Each configuration (rank 1-3; spatial sizes 1-6; kernel 1-3; stride 1-3; dilation 1-2; input
dilation 1-3 for ``conv_general``; padding 0-3 and negative crops where allowed; output_padding;
groups 1-2; batch 1-2) is run under each strategy, forward and both gradients (``jax.vjp`` of a
random cotangent, jitted), and compared with the float64 reference (``convnn._reference``).
Configurations run in batches, each batch in a child process: a process abort (XLA's ``Check
failed``) kills only the child, is recorded against the configuration, strategy and pass that
was being compiled, and the parent starts a new child after it.

The grid is sampled (seeded) rather than enumerated: the full product has millions of points.

Usage::

    python -m benchmarks.sweep_xla_safety                      # 400 configurations, minutes
    python -m benchmarks.sweep_xla_safety --count 3000 --batch 150
    python -m benchmarks.sweep_xla_safety --count 20 --strategies xla --out /tmp/s.json
    python -m benchmarks.sweep_xla_safety --count 0 --family --strategies xla  # the family

(from the repository root, so that the children import this checkout's ``convnn``).

It prints a table (per function and strategy: runs, aborts, disagreements, errors) and writes
JSON (``benchmarks/results/sweep_xla_safety.json`` by default). The exit status is 1 when any
run aborted, disagreed or raised.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
STRATEGIES = ("xla", "decomposed", "im2col", "mixed", "auto")
#: Calls the audit and the sweeps found aborting the process, always part of the sweep: three in
#: the forward pass, one (the last) in the input gradient of a strided convolution.
KNOWN = [
    dict(fn="conv_transpose2d", x=[1, 2, 3, 1], w=[1, 3, 2, 1],
         kw=dict(stride=[1, 2], padding=[1, 1], dilation=[2, 1], output_padding=[0, 0],
                 groups=1)),
    dict(fn="conv_general", x=[1, 2, 3, 1], w=[1, 3, 2, 1],
         kw=dict(stride=[1, 1], padding=[[0, 0], [0, 0]], kernel_dilation=[1, 1],
                 input_dilation=[2, 2], groups=1, flip=False)),
    dict(fn="conv_general", x=[1, 3, 2, 1], w=[1, 2, 3, 1],
         kw=dict(stride=[1, 1], padding=[[0, 0], [0, 0]], kernel_dilation=[1, 1],
                 input_dilation=[2, 2], groups=1, flip=False)),
    dict(fn="conv2d", x=[2, 6, 4, 2], w=[2, 2, 2, 2],
         kw=dict(stride=[2, 3], groups=1, padding=[[1, 0], [1, 0]], dilation=[1, 2])),
]
TOLERANCE = 1e-4  # of max |reference| (float32 arithmetic on sums of at most ~200 terms)


def _out_size(size, k, stride, dil, lo, hi, idil=1):
    padded = (size - 1) * idil + 1 + lo + hi
    kd = (k - 1) * dil + 1
    return (padded - kd) // stride + 1 if padded >= kd else 0


def random_config(rng: random.Random) -> dict:
    """One valid configuration, drawn from the grid."""
    while True:
        kind = rng.choice(("conv", "conv_transpose", "conv_general"))
        n = rng.choice((1, 1, 2, 2, 2, 3))
        groups = rng.choice((1, 2))
        batch = rng.choice((1, 2))
        c_in, c_out = groups * rng.choice((1, 2)), groups * rng.choice((1, 2))
        max_size = 4 if n == 3 else 6
        spatial = [rng.randint(1, max_size) for _ in range(n)]
        kernel = [rng.randint(1, 3) for _ in range(n)]
        stride = [rng.randint(1, 3) for _ in range(n)]
        dil = [rng.randint(1, 2) for _ in range(n)]
        kw = dict(stride=stride, groups=groups)
        if kind == "conv_transpose":
            pad = [rng.randint(0, 3) for _ in range(n)]
            out_pad = [rng.randrange(max(s, d)) for s, d in zip(stride, dil)]
            kw.update(padding=pad, dilation=dil, output_padding=out_pad)
            sizes = [(s - 1) * st - 2 * p + d * (k - 1) + op + 1
                     for s, st, p, d, k, op in zip(spatial, stride, pad, dil, kernel, out_pad)]
        else:
            lows = [rng.choice((0, 0, 1, 2, 3, -1, -2)) for _ in range(n)]
            highs = [rng.choice((0, 0, 1, 2, 3, -1, -2)) for _ in range(n)]
            idil = [rng.randint(1, 3) for _ in range(n)] if kind == "conv_general" else [1] * n
            sizes = [_out_size(s, k, st, d, lo, hi, i) for s, k, st, d, lo, hi, i in
                     zip(spatial, kernel, stride, dil, lows, highs, idil)]
            kw["padding"] = [lows, highs]
            if kind == "conv_general":
                kw.update(kernel_dilation=dil, input_dilation=idil, flip=rng.random() < 0.5)
            else:
                kw["dilation"] = dil
        if min(sizes) < 1:
            continue
        fn = "conv_general" if kind == "conv_general" else f"{kind}{n}d"
        return dict(fn=fn, x=[batch, *spatial, c_in], w=[c_out, *kernel, c_in // groups], kw=kw)


def family_grid() -> list[dict]:
    """Every small 2-D input-dilated convolution of the family XLA's CPU simplifier aborts on:
    transposed (input 1-3 x 1-3, kernel 1-3 x 1-3, stride 1-2 per axis) and ``conv_general``
    with input dilation 2 (input and kernel 1-3 per axis)."""
    cfgs = []
    sizes = range(1, 4)
    for h, w_, kh, kw_ in itertools.product(sizes, sizes, sizes, sizes):
        for sh, sw in itertools.product((1, 2), (1, 2)):
            cfgs.append(dict(fn="conv_transpose2d", x=[1, h, w_, 1], w=[1, kh, kw_, 1],
                             kw=dict(stride=[sh, sw], padding=[0, 0], dilation=[1, 1],
                                     output_padding=[0, 0], groups=1)))
        if (h - 1) * 2 + 1 >= kh and (w_ - 1) * 2 + 1 >= kw_:
            cfgs.append(dict(fn="conv_general", x=[1, h, w_, 1], w=[1, kh, kw_, 1],
                             kw=dict(stride=[1, 1], padding=[[0, 0], [0, 0]],
                                     kernel_dilation=[1, 1], input_dilation=[2, 2], groups=1,
                                     flip=False)))
    return cfgs


def reference(cfg, x, w, ct):
    """Forward and VJP of one configuration in float64 (``convnn._reference``)."""
    # Imported in the child that calls this: the parent process never loads JAX or convnn, so
    # nothing it holds can be disturbed by what a child's XLA does.
    from convnn import _reference as ref

    kw, n = cfg["kw"], len(cfg["x"]) - 2
    ones = [1] * n
    if cfg["fn"].startswith("conv_transpose"):
        args = dict(stride=kw["stride"], padding=kw["padding"], dilation=kw["dilation"],
                    output_padding=kw["output_padding"], groups=kw["groups"])
        out = ref.conv_transpose_ref(x, w, **args)
        dx, dw = ref.conv_transpose_ref_vjp(x, w, ct, **args) if ct is not None else (None, None)
    else:
        lows, highs = kw["padding"]
        args = dict(stride=kw["stride"], padding_lo=lows, padding_hi=highs,
                    kernel_dilation=kw.get("dilation", kw.get("kernel_dilation")),
                    input_dilation=kw.get("input_dilation", ones), groups=kw["groups"],
                    flip=kw.get("flip", False))
        out = ref.conv_general_ref(x, w, **args)
        dx, dw = ref.conv_general_ref_vjp(x, w, ct, **args) if ct is not None else (None, None)
    return out, dx, dw


PASSES = ("forward", "vjp")


def _child(cfg_path: str, start: int, stop: int, progress: str, strategies: list[str]) -> None:
    # JAX and convnn load here, in the child only (see reference()).
    import jax
    import numpy as np

    import convnn

    cfgs = json.loads(Path(cfg_path).read_text())
    log = open(progress, "a", buffering=1)
    runs = [(i, s, p) for i in range(len(cfgs)) for s in strategies for p in PASSES]
    data = {}

    def err(got, want):
        scale = float(np.max(np.abs(want), initial=0.0)) + 1e-6
        return float(np.max(np.abs(np.asarray(got, np.float64) - want), initial=0.0)) / scale

    for j in range(start, stop):
        i, strategy, pass_ = runs[j]
        cfg = cfgs[i]
        if i not in data:
            rng = np.random.default_rng(i)
            x = rng.standard_normal(cfg["x"]).astype(np.float32)
            w = rng.standard_normal(cfg["w"]).astype(np.float32)
            want, _, _ = reference(cfg, x, w, None)
            ct = rng.standard_normal(want.shape).astype(np.float32)
            data = {i: (x, w, ct, want, *reference(cfg, x, w, ct)[1:])}
        x, w, ct, want, want_dx, want_dw = data[i]
        fn = getattr(convnn, cfg["fn"])

        def fwd(a, b, strategy=strategy, fn=fn, kw=cfg["kw"]):
            with convnn.lowering(strategy):
                return fn(a, b, **kw)

        log.write(json.dumps(dict(j=j, event="start")) + "\n")
        row = dict(i=i, strategy=strategy, pass_=pass_, event="done")
        try:
            if pass_ == "forward":
                e = err(jax.jit(fwd)(x, w), want)
            else:
                dx, dw = jax.jit(lambda a, b, c: jax.vjp(fwd, a, b)[1](c))(x, w, ct)
                e = max(err(dx, want_dx), err(dw, want_dw))
            row.update(status="ok" if e <= TOLERANCE else "mismatch", error=e)
        except Exception as exc:  # recorded, not fatal: the sweep goes on
            row.update(status="error", message=f"{type(exc).__name__}: {exc}"[:300])
        log.write(json.dumps(row) + "\n")
    log.write(json.dumps(dict(event="end")) + "\n")


def run(cfgs: list[dict], strategies: list[str], batch: int, timeout_s: float = 600.0,
        quiet: bool = False) -> list[dict]:
    """Runs every configuration under every strategy, forward and VJP, in child processes
    (``batch`` configurations' runs per child); one row per run."""
    runs = [(i, s, p) for i in range(len(cfgs)) for s in strategies for p in PASSES]
    per_child = batch * len(strategies) * len(PASSES)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = os.path.join(tmp, "configs.json")
        Path(cfg_path).write_text(json.dumps(cfgs))
        start = 0
        while start < len(runs):
            stop = min(start + per_child, len(runs))
            progress = os.path.join(tmp, f"progress-{start}.jsonl")
            Path(progress).touch()
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.sweep_xla_safety", "--child", cfg_path,
                 str(start), str(stop), progress, ",".join(strategies)],
                capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
            events = [json.loads(line) for line in Path(progress).read_text().splitlines()
                      if line.strip()]
            rows += [e for e in events if e["event"] == "done"]
            if events and events[-1]["event"] == "end":
                start = stop
                continue
            if not events or events[-1]["event"] != "start":  # died outside a run
                raise RuntimeError(f"child failed (rc {proc.returncode}): {proc.stderr[-2000:]}")
            j = events[-1]["j"]
            i, strategy, pass_ = runs[j]
            tail = [ln for ln in proc.stderr.splitlines() if "Check failed" in ln]
            rows.append(dict(i=i, strategy=strategy, pass_=pass_, event="done", status="abort",
                             returncode=proc.returncode,
                             message=(tail[0] if tail else proc.stderr[-300:])[:300]))
            if not quiet:
                print(f"  abort: {cfgs[i]} under {strategy} ({pass_})", flush=True)
            start = j + 1
    return rows


def summarize(cfgs, rows) -> dict:
    table = collections.defaultdict(collections.Counter)
    for r in rows:
        fn = cfgs[r["i"]]["fn"]
        table[(fn, r["strategy"])][r["status"]] += 1
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=400, help="random configurations (seeded)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=100, help="configurations per child process")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--family", action="store_true",
                   help="add every small 2-D input-dilated configuration (family_grid)")
    p.add_argument("--out", default=str(RESULTS / "sweep_xla_safety.json"))
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    cfgs = KNOWN + [random_config(rng) for _ in range(args.count)]
    if args.family:
        cfgs += family_grid()
    strategies = args.strategies.split(",")
    t0 = time.time()
    rows = run(cfgs, strategies, args.batch)
    table = summarize(cfgs, rows)
    print(f"\n{len(cfgs)} configurations x {len(strategies)} strategies x (forward, vjp): "
          f"{len(rows)} runs in {time.time() - t0:.0f} s")
    print(f"{'function':18s} {'strategy':11s} {'runs':>5s} {'ok':>5s} {'abort':>6s} "
          f"{'mismatch':>9s} {'error':>6s}")
    totals = collections.Counter()
    for (fn, s), c in sorted(table.items()):
        totals.update(c)
        print(f"{fn:18s} {s:11s} {sum(c.values()):5d} {c['ok']:5d} {c['abort']:6d} "
              f"{c['mismatch']:9d} {c['error']:6d}")
    print(f"{'total':30s} {sum(totals.values()):5d} {totals['ok']:5d} {totals['abort']:6d} "
          f"{totals['mismatch']:9d} {totals['error']:6d}")
    bad = [dict(r, config=cfgs[r["i"]]) for r in rows if r["status"] != "ok"]
    for r in bad[:20]:
        print(f"  {r['status']}: {r['config']} under {r['strategy']} ({r['pass_']}): "
              f"{r.get('message', r.get('error'))}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(), argv=sys.argv[1:],
        configs=len(cfgs), strategies=strategies, runs=len(rows), totals=dict(totals),
        table=[dict(fn=fn, strategy=s, **c) for (fn, s), c in sorted(table.items())],
        failures=bad), indent=1))
    print(f"wrote {out}")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5],
               sys.argv[6].split(","))
    else:
        sys.exit(main())
