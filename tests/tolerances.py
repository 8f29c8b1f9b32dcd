"""One tolerance table per dtype: (rtol, atol) relative to the reference's scale."""

import jax.numpy as jnp
import numpy as np

TOL = {
    jnp.dtype(jnp.float64): (1e-10, 1e-10),
    jnp.dtype(jnp.float32): (2e-5, 2e-5),
    jnp.dtype(jnp.float16): (1e-2, 1e-2),
    jnp.dtype(jnp.bfloat16): (4e-2, 4e-2),
}


def assert_close(actual, expected, dtype, *, what=""):
    """Compares with atol scaled by the largest magnitude of ``expected``."""
    rtol, atol = TOL[jnp.dtype(dtype)]
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale, err_msg=what)
