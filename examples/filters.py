"""Classic image filters with the functional API (``convnn.conv2d``) on a real photograph.

The photograph ships with scikit-image (``skimage.data.astronaut()``, 512 x 512 RGB), so nothing
is downloaded. Every filter is one or two ``convnn.conv2d`` calls on a channels-last image
``(1, H, W, C)`` with MLX-layout weights ``(C_out, KH, KW, C_in // groups)``:

* ``gray.png``: a 1 x 1 convolution mixing RGB into luminance (``C_out = 1``).
* ``sobel.png``: Sobel edge magnitude; one convolution with two output channels (d/dx, d/dy).
* ``blur.png``: a separable Gaussian blur of the colour image; two depthwise convolutions
  (``groups=3``, a ``(K, 1)`` then a ``(1, K)`` kernel per channel).
* ``depthwise.png``: a depthwise colour filter (``groups=3``): each channel gets its own kernel
  (red shifted left, green sharpened, blue shifted right), a chromatic-aberration look.
* ``sepia.png``: a dense 1 x 1 colour transform (``C_out = C_in = 3``).
* ``filters.png``: all of them side by side.

Borders are handled by edge-padding the image with ``jnp.pad`` and convolving with
``padding=0``, so the output has the input's size without dark rims.

Run: ``python examples/filters.py --out runs/filters``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")

import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from skimage import data as skdata  # noqa: E402

import convnn  # noqa: E402


def edge_pad(image: jnp.ndarray, ph: int, pw: int) -> jnp.ndarray:
    """Pads ``(N, H, W, C)`` by repeating the border pixels."""
    return jnp.pad(image, ((0, 0), (ph, ph), (pw, pw), (0, 0)), mode="edge")


def grayscale(image: jnp.ndarray) -> jnp.ndarray:
    """Rec. 709 luminance as a 1 x 1 convolution: ``(N, H, W, 3) -> (N, H, W, 1)``."""
    weight = jnp.array([0.2125, 0.7154, 0.0721], jnp.float32).reshape(1, 1, 1, 3)
    return convnn.conv2d(image, weight)


def sobel(gray: jnp.ndarray) -> jnp.ndarray:
    """Sobel gradient magnitude of ``(N, H, W, 1)``: both derivatives in one convolution."""
    gx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32) / 8
    weight = jnp.asarray(np.stack([gx, gx.T])[..., None])  # (2, 3, 3, 1): d/dx, d/dy
    grad = convnn.conv2d(edge_pad(gray, 1, 1), weight)  # (N, H, W, 2)
    return jnp.sqrt(jnp.sum(grad * grad, axis=-1, keepdims=True))


def gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, math.ceil(3 * sigma))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def gaussian_blur(image: jnp.ndarray, sigma: float) -> jnp.ndarray:
    """Separable Gaussian blur, each channel on its own (depthwise: ``groups=C``)."""
    c = image.shape[-1]
    k = gaussian_kernel(sigma)
    r = len(k) // 2
    vertical = jnp.asarray(np.tile(k.reshape(1, -1, 1, 1), (c, 1, 1, 1)))  # (C, K, 1, 1)
    horizontal = jnp.asarray(np.tile(k.reshape(1, 1, -1, 1), (c, 1, 1, 1)))  # (C, 1, K, 1)
    image = convnn.conv2d(edge_pad(image, r, 0), vertical, groups=c)
    return convnn.conv2d(edge_pad(image, 0, r), horizontal, groups=c)


def depthwise_colour_filter(image: jnp.ndarray, shift: int) -> jnp.ndarray:
    """A different kernel per colour channel in one depthwise convolution (``groups=3``).

    Red is shifted left and blue right by ``shift`` pixels (delta kernels off centre), green is
    sharpened (identity plus a Laplacian), giving colour fringes at edges.
    """
    size = 2 * shift + 1
    weight = np.zeros((3, size, size, 1), np.float32)
    weight[0, shift, -1, 0] = 1.0  # output(x) = input(x + shift): the red image moves left
    weight[2, shift, 0, 0] = 1.0  # output(x) = input(x - shift): the blue image moves right
    weight[1, shift, shift, 0] = 2.0  # green: 2 * centre - mean of the 4 neighbours
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        weight[1, shift + dy, shift + dx, 0] = -0.25
    return convnn.conv2d(edge_pad(image, shift, shift), jnp.asarray(weight), groups=3)


def sepia(image: jnp.ndarray) -> jnp.ndarray:
    """The classic sepia matrix as a dense 1 x 1 convolution, ``(C_out, 1, 1, C_in)``."""
    matrix = np.array(
        [[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], np.float32
    )
    return convnn.conv2d(image, jnp.asarray(matrix.reshape(3, 1, 1, 3)))


def to_uint8(image: jnp.ndarray, *, normalise: bool = False) -> np.ndarray:
    img = np.asarray(image[0], np.float64)
    if normalise:
        img = img / max(img.max(), 1e-12)
    img = np.clip(img, 0.0, 1.0)
    if img.shape[-1] == 1:
        img = img[..., 0]
    return (img * 255 + 0.5).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/filters"),
                        help="output folder (default runs/filters)")
    parser.add_argument("--sigma", type=float, default=3.0,
                        help="Gaussian blur sigma in pixels (default 3)")
    parser.add_argument("--shift", type=int, default=4,
                        help="colour shift of the depthwise filter in pixels (default 4)")
    parser.add_argument("--size", type=int, default=None,
                        help="resize the photo to SIZE x SIZE first (default: 512, as shipped)")
    args = parser.parse_args(argv)
    if args.sigma <= 0:
        parser.error(f"--sigma must be positive; got {args.sigma}")
    if args.shift < 1:
        parser.error(f"--shift must be at least 1; got {args.shift}")

    photo = skdata.astronaut()  # (512, 512, 3) uint8
    if args.size is not None:
        from skimage.transform import resize

        photo = (resize(photo, (args.size, args.size), anti_aliasing=True) * 255).astype(np.uint8)
    image = jnp.asarray(photo, jnp.float32)[None] / 255.0  # (1, H, W, 3), channels-last

    gray = grayscale(image)
    results = {
        "original": to_uint8(image),
        "gray": to_uint8(gray),
        "sobel": to_uint8(sobel(gray), normalise=True),
        "blur": to_uint8(gaussian_blur(image, args.sigma)),
        "depthwise": to_uint8(depthwise_colour_filter(image, args.shift)),
        "sepia": to_uint8(sepia(image)),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name, img in results.items():
        path = args.out / f"{name}.png"
        plt.imsave(path, img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
        print(f"wrote {path}  {img.shape}")

    fig, axes = plt.subplots(2, 3, figsize=(12, 8.4))
    for ax, (name, img) in zip(axes.flat, results.items(), strict=True):
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
        ax.set_title(name)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.out / "filters.png", dpi=80)
    plt.close(fig)
    print(f"wrote {args.out / 'filters.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
