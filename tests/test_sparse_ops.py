"""gps_jax.sparse: the (neurons, K) scatter into and gather from every kernel layout,
against NumPy."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from gps_jax import sparse

from trainer_setup import random_indices

# ----------------------------------------------------------------------------
# scatter_add / gather against NumPy
# ----------------------------------------------------------------------------
KINDS = [
  ((12, 20), 1),  # Dense (in, out)
  ((12, 3, 4), 1),  # attention q/k/v (in, heads, head_dim)
  ((3, 4, 12), 2),  # attention out (heads, head_dim, out)
  ((3, 3, 4, 6), 3),  # conv (kh, kw, in, out)
  ((7, 7, 1, 5), 3),  # depthwise conv
]


@pytest.mark.parametrize('shape,fan_in_ndim', KINDS)
def test_scatter_add_and_gather_match_numpy(shape, fan_in_ndim):
  rng = np.random.default_rng(len(shape) * 10 + fan_in_ndim)
  base = rng.normal(size=shape).astype(np.float32)
  fan_in = math.prod(shape[:fan_in_ndim])
  neurons = math.prod(shape[fan_in_ndim:])
  idx = random_indices(rng, fan_in, neurons, 3)
  values = rng.normal(size=(neurons, 3)).astype(np.float32)

  # NumPy: entry t of neuron j sits at flattened fan-in position idx[j, t] and
  # flattened neuron position j (C order over the fan-in axes and the neuron axes).
  want = base.copy()
  want_gather = np.zeros((neurons, 3), np.float32)
  for j in range(neurons):
    out_pos = np.unravel_index(j, shape[fan_in_ndim:])
    for t in range(3):
      in_pos = np.unravel_index(idx[j, t], shape[:fan_in_ndim])
      want_gather[j, t] = base[in_pos + out_pos]
      want[in_pos + out_pos] += values[j, t]

  got = np.asarray(
    sparse.scatter_add(jnp.asarray(base), jnp.asarray(idx), jnp.asarray(values), fan_in_ndim)
  )
  assert got.shape == shape
  np.testing.assert_array_equal(got, want)
  got_g = np.asarray(sparse.gather(jnp.asarray(base), jnp.asarray(idx), fan_in_ndim))
  np.testing.assert_array_equal(got_g, want_gather)
  # Round trip: gather of the scattered kernel is base + values at the indices.
  np.testing.assert_allclose(
    np.asarray(sparse.gather(jnp.asarray(got), jnp.asarray(idx), fan_in_ndim)),
    want_gather + values,
    rtol=1e-6,
  )
