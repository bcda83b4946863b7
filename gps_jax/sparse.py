"""The trainable state of masked fine-tuning, and how it recombines with the base.

Parameters live as flat {path: array} dicts. A run splits them by role:

* ``frozen``: the `select` and `freeze` leaves of the base model; never
  differentiated, never in the optimizer.
* ``indices``: {path: int32 (neurons, K)} of every `select` leaf.
* ``trainable``: {'train': {path: array} for `train` leaves (head, biases),
  'delta': {path: (neurons, K) values} for `select` leaves}.

The effective kernel of a selected leaf is its base plus the delta scattered
at the indices. A task's result is ``indices`` + ``trainable``: the sparse delta.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from gps_jax import roles as roles_lib
from gps_jax import tree as tree_lib


def fan_in_layout(roles: Any) -> dict[str, int]:
  """{path: fan_in_ndim} of the `select` leaves (static data for jitted code)."""
  return {p: r.fan_in_ndim for p, r in roles_lib.leaves_with_role(roles, 'select').items()}


def _as_rows(w: jax.Array, fan_in_ndim: int) -> jax.Array:
  """(fan_in, neurons) view of a kernel whose leading `fan_in_ndim` axes are inputs."""
  fan_in = 1
  for d in w.shape[:fan_in_ndim]:
    fan_in *= d
  return w.reshape(fan_in, -1)


def scatter_add(
  base: jax.Array, indices: jax.Array, values: jax.Array, fan_in_ndim: int
) -> jax.Array:
  """base + delta, the delta given as (neurons, K) values at (neurons, K) fan-in indices,
  in the wider of the two dtypes (a bfloat16 base keeps a float32 delta whole)."""
  w = _as_rows(base.astype(jnp.promote_types(base.dtype, values.dtype)), fan_in_ndim)
  cols = jnp.arange(w.shape[1])[:, None]
  return w.at[indices, cols].add(values.astype(w.dtype)).reshape(base.shape)


def gather(base: jax.Array, indices: jax.Array, fan_in_ndim: int) -> jax.Array:
  """The (neurons, K) entries of `base` at `indices`."""
  w = _as_rows(base, fan_in_ndim)
  cols = jnp.arange(w.shape[1])[:, None]
  return w[indices, cols]


def split(
  params: Mapping[str, jax.Array], roles: Any, indices: Mapping[str, jax.Array]
) -> tuple[dict, dict]:
  """(frozen, trainable) of the sparse update mode; the delta starts at zero."""
  rl = tree_lib.flat(roles)
  missing = sorted(set(p for p, r in rl.items() if r.role == 'select') - set(indices))
  if missing:
    raise ValueError(f'no selected indices for parameters {missing}')
  frozen = {p: v for p, v in params.items() if rl[p].role != 'train'}
  train = {p: v for p, v in params.items() if rl[p].role == 'train'}
  delta = {p: jnp.zeros(idx.shape, params[p].dtype) for p, idx in indices.items()}
  return frozen, {'train': train, 'delta': delta}


def combine(
  frozen: Mapping[str, jax.Array],
  indices: Mapping[str, jax.Array],
  trainable: Mapping[str, Mapping[str, jax.Array]],
  layout: Mapping[str, int],
) -> dict[str, jax.Array]:
  """Full flat parameters: frozen leaves, trained leaves, base + delta."""
  params = dict(frozen)
  params.update(trainable['train'])
  for p, values in trainable['delta'].items():
    params[p] = scatter_add(frozen[p], indices[p], values, layout[p])
  return params


def effective_values(
  frozen: Mapping[str, jax.Array],
  indices: Mapping[str, jax.Array],
  trainable: Mapping[str, Mapping[str, jax.Array]],
  layout: Mapping[str, int],
) -> dict:
  """The trainable state with each delta replaced by base + delta at its indices.

  Given to the optimizer as `params`, so that weight decay pulls the effective
  weights toward zero exactly as it would in dense mode.
  """
  return {
    'train': trainable['train'],
    'delta': {
      p: gather(frozen[p], indices[p], layout[p]) + v for p, v in trainable['delta'].items()
    },
  }


def delta_from_dense(
  base: Mapping[str, jax.Array],
  tuned: Mapping[str, jax.Array],
  roles: Any,
  indices: Mapping[str, jax.Array],
) -> dict:
  """The sparse trainable state equivalent to a dense fine-tuned model."""
  layout = fan_in_layout(roles)
  rl = tree_lib.flat(roles)
  return {
    'train': {p: v for p, v in tuned.items() if rl[p].role == 'train'},
    'delta': {
      p: gather(tuned[p], idx, layout[p]) - gather(base[p], idx, layout[p])
      for p, idx in indices.items()
    },
  }


def count_entries(trainable: Mapping[str, Mapping[str, Any]]) -> int:
  """Trainable scalars in a sparse trainable state."""
  return sum(int(v.size) for part in trainable.values() for v in part.values())
