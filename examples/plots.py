"""The figures the training examples write: learning curves and the misclassified test images.

Both functions take plain NumPy data and write one PNG with matplotlib's Agg backend (no display
needed). Train is always blue and test always orange, in every panel.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as ticker  # noqa: E402
import numpy as np  # noqa: E402

COLOURS = {"train": "tab:blue", "test": "tab:orange"}


def plot_curves(history: dict, path: Path, title: str = "") -> plt.Figure:
    """Loss (per step and per epoch, log scale) and accuracy (per epoch) side by side.

    ``history`` holds lists ``train_loss``, ``train_accuracy``, ``test_loss``, ``test_accuracy``
    (one value per epoch) and ``step_loss`` (one value per training step).
    """
    epochs = np.arange(1, len(history["train_loss"]) + 1)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    steps = len(history.get("step_loss", []))
    if steps and len(epochs):
        x = np.arange(1, steps + 1) * len(epochs) / steps  # in epochs
        ax_loss.plot(x, history["step_loss"], color=COLOURS["train"], lw=0.6, alpha=0.35,
                     label="train (per step)")
    for split, marker in (("train", "o-"), ("test", "s-")):
        ax_loss.plot(epochs, history[f"{split}_loss"], marker, color=COLOURS[split], label=split)
        ax_acc.plot(epochs, history[f"{split}_accuracy"], marker, color=COLOURS[split], label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss", yscale="log")
    # Plain numbers (0.3, not 3 x 10^-1); minor ticks labelled only when under two decades show.
    ax_loss.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax_loss.yaxis.set_minor_formatter(ticker.LogFormatter(minor_thresholds=(2, 0.5)))
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return fig


def plot_misclassified(
    images: np.ndarray,
    labels: np.ndarray,
    predictions: np.ndarray,
    path: Path,
    *,
    class_names: list[str] | None = None,
    max_images: int = 40,
) -> plt.Figure:
    """A grid of the misclassified images, each titled ``true X`` / ``pred Y``.

    The figure is at least 6 inches wide so that the title always fits, also for zero or one
    image. ``images`` are ``(N, H, W)`` or ``(N, H, W, C)`` (C = 1 or 3), floats in [0, 1] or
    uint8. Returns the (closed) figure.
    """
    wrong = np.flatnonzero(np.asarray(labels) != np.asarray(predictions))
    shown = wrong[:max_images]
    name = (lambda c: class_names[c]) if class_names else str
    cols = min(8, max(1, len(shown)))
    rows = max(1, -(-len(shown) // cols))
    fig, axes = plt.subplots(
        rows, cols, figsize=(max(6.0, 1.3 * cols), 1.6 * rows + 0.7), squeeze=False,
        layout="constrained",
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, shown, strict=False):
        img = images[i][..., 0] if images[i].ndim == 3 and images[i].shape[-1] == 1 else images[i]
        ax.imshow(img, cmap="gray_r" if img.ndim == 2 else None, interpolation="nearest")
        ax.set_title(f"true {name(labels[i])}\npred {name(predictions[i])}", fontsize=9,
                     color="tab:red")
    if len(shown) == 0:
        axes[0, 0].text(0.5, 0.5, "every test image is classified correctly", ha="center",
                        va="center", transform=axes[0, 0].transAxes)
    more = f" (the first {len(shown)} shown)" if len(wrong) > len(shown) else ""
    fig.suptitle(f"misclassified: {len(wrong)} of {len(labels)} test images{more}")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return fig
