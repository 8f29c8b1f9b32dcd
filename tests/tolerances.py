"""The tests' closeness check, on the package's one tolerance table (``convnn._reference``)."""

import jax.numpy as jnp
import numpy as np

from convnn._reference import TOLERANCE

#: dtype -> (rtol, atol), relative to the reference's scale.
TOL = {jnp.dtype(name): tol for name, tol in TOLERANCE.items()}


def assert_close(actual, expected, dtype, *, what=""):
    """Compares with atol scaled by the largest finite magnitude of ``expected``; infinities
    and NaNs must match where they are (``assert_allclose`` checks that)."""
    rtol, atol = TOL[jnp.dtype(dtype)]
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    finite = np.abs(expected[np.isfinite(expected)])
    scale = max(1.0, float(np.max(finite, initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale, err_msg=what)
