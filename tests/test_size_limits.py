"""Sizes beyond the library's limits (``convnn._args.MAX_INT`` per integer and per axis,
``MAX_ELEMENTS`` per array) are refused by name before XLA sees them.

Without the checks some of these calls abort the whole process inside XLA (a static size whose
product overflows 64 bits: pooling with a huge padding, a huge ``Linear``, an upsampling by
2**31), and others fail late with an out-of-memory error that names no argument. So the table
runs in one child process, which reports each call's verdict as a JSON line.
"""

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.subprocess

# (label, expression evaluated in the child, the message's start, what it goes on to name)
CASES = [
    ("max pool, huge padding", "nn.MaxPool2d(2, 1, 2**30)(x)", "[MaxPool2d]", "output"),
    ("avg pool, huge padding", "convnn.avg_pool2d(x, 2, 1, 2**30)", "[avg_pool2d]", "output"),
    ("max pool, huge kernel", "convnn.max_pool1d(x[0], 2**40)", "[max_pool1d]",
     "kernel_size must be at most"),
    ("upsample by 2**31", "nn.Upsample(2**31)(x)", "[Upsample]", "output"),
    ("upsample beyond memory", "nn.Upsample((2**16, 2**16))(x)", "[Upsample]", "output"),
    ("reflect padding", "nn.Conv2d(1, 1, 2, padding=2**30, padding_mode='reflect')(x)",
     "[Conv2d]", "reflect-padded input"),
    ("conv padding", "nn.Conv2d(1, 1, 2, padding=2**30)(x)", "[Conv2d]", "output"),
    ("Linear of 2**31 - 1 squared", "nn.Linear(2**31 - 1, 2**31 - 1)", "[Linear]", "parameter"),
    ("Linear beyond int32", "nn.Linear(2**40, 4)", "[Linear]", "input_dims must be at most"),
    ("Conv2d weight", "nn.Conv2d(2**20, 2**20, 3)", "[Conv2d]", "weight"),
    ("Embedding", "nn.Embedding(2**31 - 1, 2**20)", "[Embedding]", "parameter"),
    ("Bilinear", "nn.Bilinear(2**12, 2**12, 2**12)", "[Bilinear]", "parameter"),
    ("LSTM", "nn.LSTM(2**30, 2**10)", "[LSTM]", "parameter"),
    ("LayerNorm", "nn.LayerNorm(2**40)", "[LayerNorm]", "dims must be at most"),
    ("MultiHeadAttention", "nn.MultiHeadAttention(2**40, 2)", "[MultiHeadAttention]",
     "dims must be at most"),
    ("causal mask", "nn.MultiHeadAttention.create_additive_causal_mask(2**20)",
     "[MultiHeadAttention.create_additive_causal_mask]", "mask"),
    ("RoPE offset", "nn.RoPE(4)(jnp.ones((1, 3, 4)), offset=2**40)", "[RoPE]",
     "offset must be at most"),
    ("ALiBi offset", "nn.ALiBi()(jnp.ones((1, 2, 3, 3)), offset=2**40)", "[ALiBi]",
     "offset must be at most"),
    ("sinusoidal encoding", "nn.SinusoidalPositionalEncoding(2**30)(jnp.ones((64,)))",
     "[SinusoidalPositionalEncoding]", "output"),
]

_CHILD = """
    import json, sys
    import jax, jax.numpy as jnp
    import convnn, convnn.layers as nn
    x = jnp.ones((1, 4, 4, 1))
    for label, expr in json.loads(sys.argv[1]):
        try:
            jax.block_until_ready(eval(expr))
            verdict = ("ok", "")
        except Exception as err:
            verdict = (type(err).__name__, str(err).split("\\n")[0])
        print(json.dumps([label, *verdict]), flush=True)
"""


def test_sizes_beyond_the_limits_are_refused_by_name():
    calls = json.dumps([(label, expr) for label, expr, _, _ in CASES])
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(_CHILD), calls],
                         capture_output=True, text=True, timeout=300)
    verdicts = {label: (kind, msg) for label, kind, msg in map(json.loads, out.stdout.splitlines())}
    missing = [label for label, *_ in CASES if label not in verdicts]
    assert not missing and out.returncode == 0, (
        f"the child stopped (exit {out.returncode}) before {missing}: {out.stderr[-2000:]}")
    for label, _, start, names in CASES:
        kind, message = verdicts[label]
        assert kind == "ValueError", (label, kind, message)
        assert message.startswith(start) and names in message, (label, message)
        if not names.endswith("must be at most"):
            assert "above the limit of 17179869184 elements" in message, (label, message)
