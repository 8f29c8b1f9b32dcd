"""The seeded table of random convolution configurations that every tier shares, and its subsets.

Each case carries the arguments for the public API and the canonical ``(lows, highs)``
padding that the float64 reference takes, derived here from the definition.

``CORE`` is the table (120 cases: convNd, conv_general and conv_transposeNd, ranks 1 to 3).
Tests take all of it, a named subset of ``SUBSETS``, or single cases by their features with
:func:`pick` (``pick("transpose2d", "grouped", "output-padding")``), never by index: a changed
generator then fails loudly instead of silently testing something else.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest


@dataclasses.dataclass(frozen=True)
class Case:
    kind: str  # "conv" (convNd), "general" (conv_general) or "transpose" (conv_transposeNd)
    n: int
    batch: int | None  # None: unbatched input
    c_in: int
    c_out: int
    groups: int
    spatial: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: Any  # as passed to the API
    lows: tuple[int, ...]  # reference padding (conv/general); forward padding (transpose)
    highs: tuple[int, ...]
    dilation: tuple[int, ...]
    input_dilation: tuple[int, ...] = ()
    flip: bool = False
    output_padding: tuple[int, ...] = ()

    @property
    def x_shape(self):
        lead = () if self.batch is None else (self.batch,)
        return (*lead, *self.spatial, self.c_in)

    @property
    def w_shape(self):
        return (self.c_out, *self.kernel, self.c_in // self.groups)

    def api_kwargs(self) -> dict:
        if self.kind == "general":
            return dict(
                stride=self.stride, padding=self.padding, kernel_dilation=self.dilation,
                input_dilation=self.input_dilation, groups=self.groups, flip=self.flip,
            )
        if self.kind == "transpose":
            return dict(
                stride=self.stride, padding=self.padding, dilation=self.dilation,
                output_padding=self.output_padding, groups=self.groups,
            )
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups)

    def __str__(self):
        extra = ""
        if self.kind == "general":
            extra = f"-id{self.input_dilation}-flip{int(self.flip)}"
        if self.kind == "transpose":
            extra = f"-op{self.output_padding}"
        return (f"{self.kind}{self.n}d-b{self.batch}-c{self.c_in}x{self.c_out}g{self.groups}"
                f"-s{self.spatial}-k{self.kernel}-st{self.stride}-p{self.padding!r}"
                f"-d{self.dilation}{extra}").replace(" ", "")


def _channels(rng, groups):
    return groups * rng.randint(1, 3), groups * rng.randint(1, 3)


def _padding_form(rng, lows, highs, n):
    """An API form for the given lows/highs (they must be equal for the symmetric forms)."""
    if lows == highs and len(set(lows)) == 1 and rng.random() < 0.4:
        return lows[0]
    if lows == highs and rng.random() < 0.5:
        return list(lows) if rng.random() < 0.5 else tuple(lows)
    return (tuple(lows), tuple(highs))


def general_case(rng: random.Random, n: int) -> Case:
    while True:
        groups = rng.choice([1, 1, 2, 3])
        c_in, c_out = _channels(rng, groups)
        spatial = tuple(rng.randint(1, 7 if n < 3 else 4) for _ in range(n))
        kernel = tuple(rng.randint(1, 4 if n < 3 else 3) for _ in range(n))
        stride = tuple(rng.choice([1, 1, 2, 3]) for _ in range(n))
        kdil = tuple(rng.choice([1, 1, 2]) for _ in range(n))
        idil = tuple(rng.choice([1, 1, 2, 3]) for _ in range(n))
        if rng.random() < 0.5:
            lows = highs = tuple(rng.randint(0, 2) for _ in range(n))
        else:
            lows = tuple(rng.randint(-2, 3) for _ in range(n))
            highs = tuple(rng.randint(-2, 3) for _ in range(n))
        ok = all(
            (s - 1) * i + 1 + lo + hi >= (k - 1) * d + 1 and -lo < (s - 1) * i + 1
            and -hi < (s - 1) * i + 1
            for s, i, lo, hi, k, d in zip(spatial, idil, lows, highs, kernel, kdil)
        )
        if ok:
            break
    return Case("general", n, rng.choice([1, 2, None]), c_in, c_out, groups, spatial, kernel,
                stride, _padding_form(rng, lows, highs, n), lows, highs, kdil, idil,
                rng.random() < 0.4)


def same_padding(size, k_dil, stride):
    """TensorFlow's 'SAME': output ceil(size / stride), the odd pixel on the high side."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k_dil - size, 0)
    return total // 2, total - total // 2


def conv_case(rng: random.Random, n: int) -> Case:
    while True:
        groups = rng.choice([1, 1, 2, 4])
        c_in, c_out = _channels(rng, groups)
        if rng.random() < 0.2:  # depthwise
            c_out = c_in
            groups = c_in
        spatial = tuple(rng.randint(2, 9 if n < 3 else 5) for _ in range(n))
        kernel = tuple(rng.randint(1, 4) for _ in range(n))
        stride = tuple(rng.choice([1, 1, 2]) for _ in range(n))
        dil = tuple(rng.choice([1, 1, 2]) for _ in range(n))
        k_dil = tuple((k - 1) * d + 1 for k, d in zip(kernel, dil))
        form = rng.choice(["int", "tuple", "same", "valid", "neg"])
        if form == "int":
            p = rng.randint(0, 2)
            padding, lows = p, (p,) * n
        elif form == "tuple":
            lows = tuple(rng.randint(0, 2) for _ in range(n))
            padding = lows
        elif form == "valid":
            padding, lows = "valid", (0,) * n
        elif form == "neg":
            lows = tuple(rng.randint(-1, 1) for _ in range(n))
            padding = lows
        else:
            pairs = [same_padding(s, k, st) for s, k, st in zip(spatial, k_dil, stride)]
            padding = "same"
            lows, highs = tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)
        if form != "same":
            highs = lows
        if all(s + lo + hi >= k for s, lo, hi, k in zip(spatial, lows, highs, k_dil)):
            break
    return Case("conv", n, rng.choice([1, 2, 2, None]), c_in, c_out, groups, spatial, kernel,
                stride, padding, lows, highs, dil)


def transpose_case(rng: random.Random, n: int) -> Case:
    while True:
        groups = rng.choice([1, 1, 2])
        c_in, c_out = _channels(rng, groups)
        spatial = tuple(rng.randint(1, 6 if n < 3 else 4) for _ in range(n))
        kernel = tuple(rng.randint(1, 4 if n < 3 else 3) for _ in range(n))
        stride = tuple(rng.choice([1, 2, 3]) for _ in range(n))
        dil = tuple(rng.choice([1, 1, 2]) for _ in range(n))
        pad = tuple(rng.randint(0, 3) for _ in range(n))  # may exceed dilation * (kernel - 1)
        out_pad = tuple(rng.randint(0, max(s, d) - 1) for s, d in zip(stride, dil))
        out = tuple((s - 1) * st - 2 * p + d * (k - 1) + op + 1
                    for s, st, p, d, k, op in zip(spatial, stride, pad, dil, kernel, out_pad))
        if all(o >= 1 for o in out):
            break
    padding = pad[0] if len(set(pad)) == 1 and rng.random() < 0.5 else pad
    return Case("transpose", n, rng.choice([1, 2, None]), c_in, c_out, groups, spatial, kernel,
                stride, padding, pad, pad, dil, output_padding=out_pad)


def table(kind: str, count_per_rank: int, seed: int) -> list[Case]:
    make = {"general": general_case, "conv": conv_case, "transpose": transpose_case}[kind]
    rng = random.Random(seed)
    return [make(rng, n) for n in (1, 2, 3) for _ in range(count_per_rank)]


#: The core table: the float64 reference tests, the MLX second opinion and the lowering
#: strategies all run on it (PyTorch on it too).
CORE: list[Case] = table("conv", 14, seed=1) + table("general", 14, seed=2) + table(
    "transpose", 12, seed=3)


def in_fast_tier(cases: list[Case], every: int = 2, offset: int = 0) -> list:
    """``cases`` as pytest parameters, one in ``every`` (from ``offset``) in the fast tier and
    the others marked slow.

    The table is ordered by kind, then rank, so a sample still spans the functions; CI runs both
    tiers, so every case still runs there. Tests that check the same cases against different
    opinions use different offsets, so that the fast tier sees different cases with each.
    """
    return [pytest.param(c, marks=[pytest.mark.slow] * ((i + offset) % every != 0), id=str(c))
            for i, c in enumerate(cases)]


def _any(values, test=lambda v: v > 1):
    return any(test(v) for v in values)


#: Feature name -> predicate. ``conv1d``/``general2d``/``transpose3d``... name kind and rank
#: together; ``conv``/``general``/``transpose`` and ``1d``/``2d``/``3d`` each alone.
FEATURES = {
    "batched": lambda c: c.batch is not None,
    "unbatched": lambda c: c.batch is None,
    "grouped": lambda c: c.groups > 1,
    "depthwise": lambda c: c.groups > 1 and c.groups == c.c_in,
    "strided": lambda c: _any(c.stride),
    "dilated": lambda c: _any(c.dilation),
    "input-dilated": lambda c: _any(c.input_dilation),
    "flipped": lambda c: c.flip,
    "same": lambda c: c.padding == "same",
    "valid": lambda c: c.padding == "valid",
    "padded": lambda c: _any(c.lows + c.highs, lambda v: v > 0),
    "cropped": lambda c: c.kind != "transpose" and _any(c.lows + c.highs, lambda v: v < 0),
    "asymmetric": lambda c: c.lows != c.highs,
    "output-padding": lambda c: _any(c.output_padding, lambda v: v > 0),
    **{kind: (lambda c, k=kind: c.kind == k) for kind in ("conv", "general", "transpose")},
    **{f"{n}d": (lambda c, n=n: c.n == n) for n in (1, 2, 3)},
    **{f"{kind}{n}d": (lambda c, k=kind, n=n: c.kind == k and c.n == n)
       for kind in ("conv", "general", "transpose") for n in (1, 2, 3)},
}


def pick(*features: str, cases: list[Case] | None = None) -> Case:
    """The first case of ``cases`` (default ``CORE``) that has every named feature."""
    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        raise KeyError(f"unknown case features {unknown}; known: {sorted(FEATURES)}")
    for case in CORE if cases is None else cases:
        if all(FEATURES[f](case) for f in features):
            return case
    raise LookupError(f"no case has all of {features}")


def _distinct(cases: list[Case]) -> list[Case]:
    if len(set(cases)) != len(cases):
        raise ValueError("a named subset picks the same case twice: make its features narrower")
    return cases


#: Named subsets of ``CORE``.
SUBSETS: dict[str, list[Case]] = {
    # spread samples of every kind and rank (the table is ordered by kind, then rank)
    "every-4th": CORE[::4],
    "every-6th": CORE[1::6],
    "every-9th": CORE[2::9],
    "every-17th": CORE[3::17],
    # one case of each kind and rank with the features lowerings treat specially (groups,
    # strides, dilations, input dilation, flips, cropping, output padding): program inspection
    "spread": _distinct([
        pick("conv1d", "dilated", "valid"),
        pick("conv1d", "grouped", "unbatched"),
        pick("conv1d", "strided"),
        pick("conv2d", "same", "strided", "dilated"),
        pick("conv3d", "padded"),
        pick("general1d", "grouped", "input-dilated", "flipped"),
        pick("general2d", "strided", "input-dilated", "dilated"),
        pick("general3d", "cropped", "flipped"),
        pick("general3d", "cropped", "input-dilated", "unbatched"),
        pick("transpose2d", "grouped", "dilated"),
        pick("transpose3d", "strided", "output-padding"),
        pick("transpose3d", "grouped"),
    ]),
}
