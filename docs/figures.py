"""Draws the documentation's index-map figures into docs/img/ (run: ``python docs/figures.py``).

Each figure shows which input elements each output element of a convolution reads (or, for a
transposed convolution, which output elements each input element writes to). The connections
are read off convnn itself, as the Jacobian of ``convnn.conv1d`` / ``conv2d`` /
``conv_transpose1d`` / ``conv_transpose2d`` with a kernel whose taps are ``1, 2, 3, ...`` (so
every non-zero entry also names its tap), and checked against the index formulas of the
definition before anything is drawn:

* convolution: output ``o`` reads padded position ``o * stride + j * dilation`` (tap ``j``),
  which is input ``o * stride + j * dilation - pad_low``;
* transposed convolution: input ``i`` is added to output ``i * stride + j * dilation - padding``
  (tap ``j``); outputs outside ``[0, size_out)`` are cropped.

The benchmark chart (``docs/img/benchmarks-conv.png``) is drawn from measured results by
``benchmarks/plot_results.py``, not here; this script only reports whether it is present.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

import convnn  # noqa: E402

IMG = Path(__file__).resolve().parent / "img"
TAP_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
PAD_COLOUR = "#dddddd"
OUT_COLOUR = "#fff5cc"
CELL = 0.8


# ---------------------------------------------------------------------------------------------
# Connectivity: from convnn, and from the definition
# ---------------------------------------------------------------------------------------------


def taps_from_convnn(fn, in_shape, kernel, **kwargs) -> np.ndarray:
    """``T[out_index + in_index]``: the 1-based tap joining them, or 0. From convnn's Jacobian.

    ``fn`` is one of convnn's functions; the input is single-channel ``(1, *in_shape, 1)`` and
    the weight ``(1, *kernel, 1)`` holds ``1, 2, ...`` in row-major order.
    """
    w = jnp.arange(1, np.prod(kernel) + 1, dtype=jnp.float32).reshape((1, *kernel, 1))

    def f(x):
        return fn(x[None, ..., None], w, **kwargs)[0, ..., 0]

    jac = jax.jacobian(f)(jnp.zeros(in_shape, jnp.float32))
    return np.rint(np.asarray(jac)).astype(int)


def taps_conv1d(size, kernel, stride=1, pad=(0, 0), dilation=1) -> np.ndarray:
    """The same matrix for a 1-D convolution, from the definition."""
    lo, hi = pad
    out = (size + lo + hi - dilation * (kernel - 1) - 1) // stride + 1
    t = np.zeros((out, size), int)
    for o in range(out):
        for j in range(kernel):
            i = o * stride + j * dilation - lo
            if 0 <= i < size:
                t[o, i] = j + 1
    return t


def taps_conv_transpose1d(size, kernel, stride=1, padding=0, dilation=1, output_padding=0):
    """The same matrix for a 1-D transposed convolution (PyTorch/MLX convention)."""
    out = (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1
    t = np.zeros((out, size), int)
    for i in range(size):
        for j in range(kernel):
            o = i * stride + j * dilation - padding
            if 0 <= o < out:
                t[o, i] = j + 1
    return t


def checked_conv1d(size, kernel, stride=1, pad=(0, 0), dilation=1) -> np.ndarray:
    ours = taps_from_convnn(convnn.conv1d, (size,), (kernel,), stride=stride,
                            padding=([pad[0]], [pad[1]]), dilation=dilation)
    np.testing.assert_array_equal(ours, taps_conv1d(size, kernel, stride, pad, dilation))
    return ours


def checked_conv_transpose1d(size, kernel, stride=1, padding=0, dilation=1, output_padding=0):
    ours = taps_from_convnn(convnn.conv_transpose1d, (size,), (kernel,), stride=stride,
                            padding=padding, dilation=dilation, output_padding=output_padding)
    expected = taps_conv_transpose1d(size, kernel, stride, padding, dilation, output_padding)
    np.testing.assert_array_equal(ours, expected)
    return ours


# ---------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------


def _cell(ax, x, y, label, face="white", hatch=None, alpha=1.0):
    ax.add_patch(Rectangle((x - CELL / 2, y - CELL / 2), CELL, CELL, facecolor=face,
                           edgecolor="black", hatch=hatch, lw=1, alpha=alpha))
    ax.text(x, y, label, ha="center", va="center", fontsize=8)


def _finish(ax, xmin, xmax, title, ylabels):
    ax.set_xlim(xmin - 0.8, xmax + 0.8)
    ax.set_ylim(-0.8, 2.8)
    ax.set_yticks([0, 2], ylabels)
    ax.set_xticks([])
    ax.tick_params(length=0)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title(title, fontsize=10, loc="left")


def draw_conv1d(ax, taps, pad, stride, dilation, title):
    """Input row (padding hatched) at the bottom, output row at the top, one line per tap.

    Each output sits above the middle of its window. Lines to real inputs come from ``taps``
    (convnn's Jacobian); lines to padding cells, which the Jacobian cannot see, are dashed.
    """
    out, size = taps.shape
    kernel = int(taps.max())
    lo, hi = pad
    for p in range(-lo, size + hi):
        inside = 0 <= p < size
        _cell(ax, p, 0, str(p) if inside else "0", face="white" if inside else PAD_COLOUR,
              hatch=None if inside else "///")
    for o in range(out):
        x_o = o * stride - lo + dilation * (kernel - 1) / 2
        _cell(ax, x_o, 2, str(o), face=OUT_COLOUR)
        for j in range(kernel):
            p = o * stride + j * dilation - lo
            inside = 0 <= p < size
            if inside:
                assert taps[o, p] == j + 1
            ax.plot([x_o, p], [2 - CELL / 2, CELL / 2], color=TAP_COLOURS[j % 5], lw=1.4,
                    ls="-" if inside else "--")
    _finish(ax, -lo, size + hi - 1, title, ["input", "output"])


def draw_conv_transpose1d(ax, taps, stride, padding, dilation, title):
    """Input row at the bottom, output row at the top; positions cropped by padding hatched.

    Each input sits below the middle of the outputs it writes to. Lines to kept outputs come
    from ``taps`` (convnn's Jacobian); lines to cropped positions are dashed.
    """
    out, size = taps.shape
    kernel = int(taps.max())
    first = -padding
    last = (size - 1) * stride + dilation * (kernel - 1) - padding
    for p in range(min(first, 0), max(last, out - 1) + 1):
        inside = 0 <= p < out
        _cell(ax, p, 2, str(p) if inside else "crop", face=OUT_COLOUR if inside else PAD_COLOUR,
              hatch=None if inside else "///")
    for i in range(size):
        x_i = i * stride - padding + dilation * (kernel - 1) / 2
        _cell(ax, x_i, 0, str(i))
        for j in range(kernel):
            p = i * stride + j * dilation - padding
            inside = 0 <= p < out
            if inside:
                assert taps[p, i] == j + 1
            ax.plot([x_i, p], [CELL / 2, 2 - CELL / 2], color=TAP_COLOURS[j % 5], lw=1.4,
                    ls="-" if inside else "--")
    _finish(ax, min(first, 0), max(last, out - 1), title, ["input", "output"])


def _legend(fig, kernel):
    handles = [plt.Line2D([], [], color=TAP_COLOURS[j], lw=2, label=f"tap {j}")
               for j in range(kernel)]
    handles.append(Rectangle((0, 0), 1, 1, facecolor=PAD_COLOUR, hatch="///", edgecolor="black",
                             label="padding (zeros) / cropped"))
    fig.legend(handles=handles, loc="lower center", ncol=kernel + 1, frameon=False, fontsize=9)


def figure_index_maps(path: Path) -> None:
    fig, axes = plt.subplots(4, 1, figsize=(9, 9.5))
    t = checked_conv1d(7, 3, stride=2)
    draw_conv1d(axes[0], t, (0, 0), 2, 1,
                "conv1d, kernel 3, stride 2: output o reads inputs 2o, 2o+1, 2o+2 (7 -> 3)")
    t = checked_conv1d(5, 3, pad=(1, 1))
    draw_conv1d(axes[1], t, (1, 1), 1, 1,
                "conv1d, kernel 3, padding 1: a zero on each side keeps the size (5 -> 5)")
    t = checked_conv1d(7, 3, dilation=2)
    draw_conv1d(axes[2], t, (0, 0), 1, 2,
                "conv1d, kernel 3, dilation 2: taps 2 apart, a 5-wide window (7 -> 3)")
    t = checked_conv_transpose1d(4, 3, stride=2, padding=1, output_padding=1)
    draw_conv_transpose1d(axes[3], t, 2, 1, 1,
                          "conv_transpose1d, kernel 3, stride 2, padding 1, output_padding 1:\n"
                          "input i adds to outputs 2i-1, 2i, 2i+1; padding crops one from each "
                          "end, output_padding gives one back (4 -> 8)")
    _legend(fig, 3)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_same_padding(path: Path) -> None:
    fig, axes = plt.subplots(2, 1, figsize=(9, 4.8))
    t_same = taps_from_convnn(convnn.conv1d, (8,), (3,), stride=2, padding="same")
    np.testing.assert_array_equal(t_same, taps_conv1d(8, 3, 2, (0, 1)))
    draw_conv1d(axes[0], t_same, (0, 1), 2, 1,
                'convnn / TensorFlow padding="same", stride 2: 0 before, 1 after')
    t_one = checked_conv1d(8, 3, stride=2, pad=(1, 1))
    draw_conv1d(axes[1], t_one, (1, 1), 2, 1, "PyTorch padding=1, stride 2: 1 before, 1 after")
    _legend(fig, 3)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_2d(path: Path) -> None:
    """Three 2-D panels: the cells one output reads (convs) or one input writes (transposed)."""
    fig, axes = plt.subplots(1, 3, figsize=(11, 4.6))
    cases = [
        ("conv2d 3x3, stride 2, padding 1\ncells read by output (1, 2)", convnn.conv2d, (6, 6),
         dict(stride=2, padding=1), (1, 2), 1),
        ("conv2d 3x3, dilation 2\ncells read by output (1, 1)", convnn.conv2d, (7, 7),
         dict(dilation=2), (1, 1), 0),
        ("conv_transpose2d 3x3, stride 2, padding 1\noutput cells written by input (1, 1)",
         convnn.conv_transpose2d, (3, 3), dict(stride=2, padding=1, output_padding=1), (1, 1), 0),
    ]
    for ax, (title, fn, shape, kw, cell, pad) in zip(axes, cases):
        taps = taps_from_convnn(fn, shape, (3, 3), **kw)  # (*out, *in)
        if fn is convnn.conv_transpose2d:
            grid = taps[:, :, cell[0], cell[1]]           # outputs written by one input
            # the definition: input (a, b) writes output (2a + j - 1, 2b + k - 1), tap 3j + k + 1
            expected = np.zeros_like(grid)
            for j in range(3):
                for k in range(3):
                    o = (2 * cell[0] + j - 1, 2 * cell[1] + k - 1)
                    if 0 <= o[0] < grid.shape[0] and 0 <= o[1] < grid.shape[1]:
                        expected[o] = 3 * j + k + 1
            pad = 0
        else:
            grid = taps[cell[0], cell[1]]                 # inputs read by one output
            s, d = kw.get("stride", 1), kw.get("dilation", 1)
            expected = np.zeros_like(grid)
            for j in range(3):
                for k in range(3):
                    i = (cell[0] * s + j * d - pad, cell[1] * s + k * d - pad)
                    if 0 <= i[0] < shape[0] and 0 <= i[1] < shape[1]:
                        expected[i] = 3 * j + k + 1
        np.testing.assert_array_equal(grid, expected)
        rows, cols = grid.shape
        for r in range(-pad, rows + pad):
            for c in range(-pad, cols + pad):
                inside = 0 <= r < rows and 0 <= c < cols
                tap = grid[r, c] if inside else 0
                face = "#ffd27f" if tap else ("white" if inside else PAD_COLOUR)
                _cell(ax, c, -r, str(tap - 1) if tap else "", face=face,
                      hatch=None if inside else "///")
        if fn is convnn.conv2d and pad:  # the padded cells the output reads: zeros
            s = kw["stride"]
            for j in range(3):
                for k in range(3):
                    r, c = cell[0] * s + j - pad, cell[1] * s + k - pad
                    if not (0 <= r < rows and 0 <= c < cols):
                        _cell(ax, c, -r, str(3 * j + k), face="#ffd27f", hatch="///", alpha=0.6)
        ax.set_xlim(-pad - 0.6, cols + pad - 0.4)
        ax.set_ylim(-(rows + pad) + 0.4, pad + 0.6)
        ax.set_aspect("equal")
        ax.axis("off")
        ax.set_title(title, fontsize=9)
    fig.text(0.5, 0.02, "numbers: kernel tap (row-major, 0-8); hatched: padding", ha="center",
             fontsize=9)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.86, bottom=0.08, wspace=0.08)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    IMG.mkdir(exist_ok=True)
    outputs = {
        "conv1d-index-maps.png": figure_index_maps,
        "same-padding-stride2.png": figure_same_padding,
        "conv2d-index-maps.png": figure_2d,
    }
    for name, make in outputs.items():
        make(IMG / name)
        print(f"wrote {IMG / name}")
    charts = sorted(p.name for p in IMG.glob("bench*.png"))
    print("benchmark chart (drawn by benchmarks/plot_results.py, not here):", charts or "none yet")


if __name__ == "__main__":
    main()
