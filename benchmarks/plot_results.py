"""Draws the convolution benchmark results (JSON from ``bench_conv.py``) as one PNG chart.

One row of panels per results file (CPU, GPU), one column per pass (forward, forward+backward);
each panel shows, per layer, the speed of convnn (``"auto"``), PyTorch and MLX relative to plain
``lax`` (``lax time / time``, log scale; right of the line is faster than lax).

"convnn" is the strategy that the ``"auto"`` policy picks *now* for the layer on that file's
backend, timed in that run: the run's ``convnn:<strategy>`` column if the run timed that strategy
by name, else its ``convnn`` column (``"auto"`` as it was when the run was made).

``--markdown`` prints the same data as Markdown tables (medians and ratios) for the docs.

Usage::

    python benchmarks/plot_results.py                  # results/cpu.json, results/gpu.json
    python benchmarks/plot_results.py a.json b.json --out chart.png
    python benchmarks/plot_results.py --markdown
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "docs" / "img" / "benchmarks-conv.png"
COLORS = {"convnn": "#1f77b4", "torch": "#d62728", "mlx": "#7f7f7f"}
PASSES = {"fwd": "forward", "fwdbwd": "forward + backward"}
SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def auto_now(doc: dict, row: dict) -> tuple[str, str]:
    """(strategy the "auto" policy picks now for ``row``'s layer, the column that timed it)."""
    import jax.numpy as jnp

    from convnn._lowering import ConvConfig, ConvSpec, choose

    n, k, p = row["batch"], row["k"], row["k"] // 2
    spec = ConvSpec(stride=(row["stride"],) * 2, padding=((p, p),) * 2, kernel_dilation=(1, 1),
                    input_dilation=(1, 1), groups=row["groups"], flip=False)
    cfg = ConvConfig((n, row["hw"], row["hw"], row["c_in"]),
                     (row["c_out"], k, k, row["c_in"] // row["groups"]), jnp.dtype(row["dtype"]),
                     spec)
    backend = "cpu" if doc["machine"].get("jax_backend") == "cpu" else "cuda"
    pick = choose(cfg, "auto", backend)
    named = f"convnn:{pick}"
    timed = {r["impl"] for r in doc["rows"] if r["shape"] == row["shape"]}
    return pick, named if named in timed else "convnn"


def table(doc: dict, pass_: str):
    """Rows ``(row, {impl: ms})``, with "convnn" the strategy "auto" picks now (see above)."""
    by = {(r["shape"], r["dtype"], r["pass_"], r["impl"]): r for r in doc["rows"]}
    out = []
    for key in dict.fromkeys((r["shape"], r["dtype"]) for r in doc["rows"]):
        base = by.get((*key, pass_, "lax"))
        if base is None:
            continue
        pick, column = auto_now(doc, base)
        times = {impl: r["ms"] for (s, d, p, impl), r in by.items() if (s, d, p) == (*key, pass_)}
        times["convnn"] = times.get(column, float("nan"))
        out.append((dict(base, pick=pick), times))
    return out


def ratios(doc: dict, pass_: str):
    """Rows ``(label, kind, {impl: lax_ms / impl_ms})`` in the order of the results file."""
    data = table(doc, pass_)
    many_dtypes = len({row["dtype"] for row, _ in data}) > 1
    out = []
    for row, times in data:
        values = {impl: times["lax"] / times[impl] for impl in COLORS if impl in times}
        label = row["shape"] + (f" {SHORT.get(row['dtype'], row['dtype'])}" if many_dtypes else "")
        out.append((label, row["kind"], values))
    return out


def geomeans(doc: dict) -> str:
    """Geometric means of lax / convnn ("auto" now) per kind, pass and dtype, as a Markdown
    table."""
    groups: dict = {}
    for pass_ in PASSES:
        for row, times in table(doc, pass_):
            key = (row["kind"], PASSES[pass_], SHORT.get(row["dtype"], row["dtype"]))
            groups.setdefault(key, []).append(times["lax"] / times["convnn"])
    lines = ["| kind | pass | dtype | layers | geometric mean lax / convnn | min | max |",
             "|---|---|---|---|---|---|---|"]
    for (kind, pass_, dtype), values in groups.items():
        gm = math.exp(sum(map(math.log, values)) / len(values))
        lines.append(f"| {kind} | {pass_} | {dtype} | {len(values)} | {gm:.2f} | "
                     f"{min(values):.2f} | {max(values):.2f} |")
    return "\n".join(lines) + "\n"


def markdown(doc: dict) -> str:
    """Medians (ms) and lax / impl ratios per pass, as Markdown tables."""
    lines = [geomeans(doc)]
    for pass_, name in PASSES.items():
        data = table(doc, pass_)
        order = ("lax", "convnn", "convnn:xla", "convnn:decomposed", "convnn:mixed", "torch", "mlx")
        impls = [i for i in order if any(i in t for _, t in data)]
        lines += [f"**{name}** (ms; ratio = lax / impl, above 1 is faster than lax)", ""]
        head = ["layer", "dtype", "auto picks"] + impls + [f"lax/{i}" for i in impls[1:]]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row, times in data:
            cells = [row["shape"], SHORT.get(row["dtype"], row["dtype"]), row["pick"]]
            cells += [f"{times[i]:.3g}" if i in times else "" for i in impls]
            cells += [f"{times['lax'] / times[i]:.2f}" if i in times else "" for i in impls[1:]]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def title(doc: dict) -> str:
    m = doc["machine"]
    if m.get("jax_backend") == "gpu":
        where = m.get("device", "GPU")
    else:
        where = f"{m.get('cpu_count', '?')}-core CPU ({m.get('cpu', '?')})"
    return f"{where}, batch {doc['batch']}, jax {m['jax']}"


def draw(docs: list[dict], out: Path) -> None:
    heights = [max(len(ratios(d, "fwd")), 1) for d in docs]
    fig, axes = plt.subplots(len(docs), 2, figsize=(13, 0.28 * sum(heights) + 1.6 * len(docs)),
                             gridspec_kw=dict(height_ratios=heights), squeeze=False)
    for row, doc in enumerate(docs):
        for col, pass_ in enumerate(PASSES):
            ax = axes[row][col]
            data = ratios(doc, pass_)
            impls = [i for i in COLORS if any(i in v for _, _, v in data)]
            bar = 0.8 / max(len(impls), 1)
            for j, impl in enumerate(impls):
                ys = [i + (j - (len(impls) - 1) / 2) * bar for i in range(len(data))]
                xs = [v.get(impl, float("nan")) for _, _, v in data]
                # bars grow from 1 (as fast as lax) to the ratio, left or right
                ax.barh(ys, [x - 1 for x in xs], height=bar, left=1, color=COLORS[impl],
                        label="convnn (auto)" if impl == "convnn" else impl)
            ax.set_xscale("log")
            values = [x for _, _, v in data for x in v.values() if x == x]
            lo, hi = min(values + [0.5]), max(values + [2.0])
            ax.set_xlim(lo / 1.3, hi * 1.3)
            ticks = [t for t in (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
                     if lo / 1.3 <= t <= hi * 1.3]
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xticklabels([f"{t:g}x" for t in ticks], fontsize=8)
            ax.axvline(1.0, color="black", lw=0.8)
            ax.set_yticks(range(len(data)))
            ax.set_yticklabels([label for label, _, _ in data], fontsize=7)
            ax.invert_yaxis()
            ax.grid(axis="x", which="both", alpha=0.3)
            ax.set_title(f"{PASSES[pass_]}: {title(doc)}", fontsize=9)
            ax.set_xlabel("speed relative to plain lax (lax time / time; log scale)", fontsize=8)
            if row == 0 and col == 0:
                ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="*", help="JSON files (default: results/cpu.json, gpu.json)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--markdown", action="store_true", help="print Markdown tables, draw nothing")
    args = p.parse_args(argv)
    paths = [Path(r) for r in args.results] or [
        path for path in (HERE / "results" / "cpu.json", HERE / "results" / "gpu.json")
        if path.is_file()]
    docs = [json.loads(path.read_text()) for path in paths]
    if args.markdown:
        for path, doc in zip(paths, docs):
            print(f"### {path.name}: {title(doc)}\n")
            print(markdown(doc))
        return
    draw(docs, Path(args.out))


if __name__ == "__main__":
    main()
