"""GPS selection: top-K masks from scores at the neuron, layer or net level.

At selection time every neuron keeps the K inputs with the largest |score|
(the scores: `gps_jax.scoring`).

The paper's ablations (Table 6, Fig. 6) change where the same budget goes
(`select`, ``level``):

* level ``neuron`` (GPS): each neuron keeps its top-K inputs;
* level ``layer``: each `select` tensor keeps its top K * neurons entries,
  anywhere in the tensor;
* level ``net``: the top sum(K * neurons) entries over all `select` tensors
  together (a tensor may get none: it is frozen).

Every level selects the neuron level's entry count. A layer- or net-level
selection is stored in the neuron layout with the whole tensor as the fan-in
of ONE neuron: its role becomes ``LeafRole(path, 'select', shape,
fan_in_ndim=len(shape))`` and its indices are int32 (1, n) positions in the
C-order flattened tensor, ascending. Everything downstream (the sparse and
dense update rules, masks, the delta and its manifest) reads that layout
unchanged. `roles_after_selection` rebuilds those roles from the indices (a
resumed run has only the indices).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from gps_jax import roles as roles_lib
from gps_jax import tree as tree_lib
from gps_jax import sharding as shard_lib

# Where the budget of K entries per neuron goes (config.gps.level); see the module doc.
LEVELS = ('neuron', 'layer', 'net')


@functools.partial(jax.jit, static_argnames=('fan_in_ndim', 'k'))
def _topk_rows(score: jax.Array, fan_in_ndim: int, k: int) -> jax.Array:
  """(neurons, k) int32 indices into the flattened fan-in, ascending per row."""
  fan_in = int(np.prod(score.shape[:fan_in_ndim]))
  rows = jnp.abs(score.reshape(fan_in, -1).T.astype(jnp.float32))
  # lax.top_k returns the lower index first among equal values: deterministic ties.
  _, idx = jax.vmap(lambda r: jax.lax.top_k(r, k))(rows)
  return jnp.sort(idx, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('n',))
def _top_n(scores: tuple, n: int) -> jax.Array:
  """The n largest |score| over the C-order concatenation of `scores`: (n,) int32
  positions, ascending (ties to the lower position)."""
  flat = jnp.concatenate([jnp.abs(s.astype(jnp.float32)).reshape(-1) for s in scores])
  _, idx = jax.lax.top_k(flat, n)
  return jnp.sort(idx).astype(jnp.int32)


def indices_to_mask(indices: jax.Array, role: roles_lib.LeafRole) -> jax.Array:
  """Boolean mask of the leaf's shape with True at the selected entries."""
  n = role.num_neurons
  rows = jnp.arange(n)[:, None]
  m = jnp.zeros((role.fan_in, n), bool).at[indices, rows].set(True)
  return m.reshape(role.shape)


def element_masks(indices: Mapping[str, jax.Array], roles: Any) -> dict[str, jax.Array]:
  """Flat bool masks of the parameters' shapes: the entries at `indices` of
  `select` leaves, all of `train` leaves, none of `freeze` leaves."""
  return {
    p: indices_to_mask(indices[p], r)
    if r.role == 'select'
    else jnp.full(r.shape, r.role == 'train')
    for p, r in tree_lib.flat(roles).items()
  }


def exclude_patterns(exclude: Any) -> list[re.Pattern]:
  """The compiled regexes of config.gps.exclude (a string is one regex)."""
  if isinstance(exclude, str):
    exclude = (exclude,)
  compiled = []
  for i, pattern in enumerate(exclude or ()):
    if not isinstance(pattern, str):
      raise ValueError(f'config.gps.exclude[{i}]={pattern!r}: want a regex string')
    try:
      compiled.append(re.compile(pattern))
    except re.error as e:
      raise ValueError(
        f'config.gps.exclude[{i}]={pattern!r}: not a regular expression ({e})'
      ) from None
  return compiled


def excluded_leaves(roles: Any, exclude: Any) -> list[str]:
  """The `select` leaves whose path a regex of `exclude` finds (re.search), in path
  order. A regex that finds no `select` leaf is an error (a typo would silently
  exclude nothing)."""
  select = list(roles_lib.leaves_with_role(roles, 'select'))
  out = set()
  for i, pattern in enumerate(exclude_patterns(exclude)):
    hits = {p for p in select if pattern.search(p)}
    if not hits:
      example = f', e.g. {select[0]!r}' if select else ''
      raise ValueError(
        f'config.gps.exclude[{i}]={pattern.pattern!r} matches no selected parameter '
        f'({len(select)} paths{example})'
      )
    out |= hits
  return [p for p in select if p in out]


def _flat_scores(scores: Mapping[str, Any]) -> Mapping[str, Any]:
  if all(isinstance(v, (jax.Array, np.ndarray)) for v in scores.values()):
    return scores
  return tree_lib.flat(scores)


def _check_k(k) -> int:
  if isinstance(k, bool) or int(k) != k or k < 1:
    raise ValueError(f'K (gps.k) must be a positive integer, got {k!r}')
  return int(k)


@jax.jit
def _finite(scores: tuple) -> jax.Array:
  return jnp.stack([jnp.all(jnp.isfinite(s)) for s in scores])


def _checked_scores(
  flat_scores: Mapping[str, Any], roles: Mapping[str, roles_lib.LeafRole]
) -> dict[str, Any]:
  """{path: score} of `roles` (flat), each present, of its leaf's shape and finite."""
  out = {}
  for path, role in roles.items():
    if path not in flat_scores:
      raise ValueError(f'no score for selected parameter {path!r}')
    s = flat_scores[path]
    if tuple(s.shape) != role.shape:
      raise ValueError(
        f'score for {path!r} has shape {tuple(s.shape)}, the parameter has {role.shape}'
      )
    out[path] = s
  if out:
    finite = np.asarray(shard_lib.to_host(_finite(tuple(out.values()))))
    for path, ok in zip(out, finite):
      if not ok:
        raise FloatingPointError(f'scores of {path!r} contain NaN or inf')
  return out


def roles_after_selection(roles: Any, indices: Mapping[str, Any], level: str = 'neuron') -> Any:
  """The run's roles once `indices` are chosen at `level`.

  A `select` leaf without indices (excluded, or given no entry at the net level)
  becomes `freeze`; at the layer and net levels a `select` leaf becomes one neuron
  whose fan-in is the whole tensor (fan_in_ndim = its number of axes). Other
  roles are unchanged. The indices must have the layout of `level`: (neurons, K)
  for `neuron`, (1, n) for `layer` and `net`. A resumed run rebuilds its roles
  from the restored indices with this.
  """
  if level not in LEVELS:
    raise ValueError(f'config.gps.level={level!r}: use one of {", ".join(LEVELS)}')
  select = roles_lib.leaves_with_role(roles, 'select')
  extra = sorted(set(indices) - set(select))
  if extra:
    raise ValueError(f'indices of parameters that are not selected: {extra}')

  def one(r: roles_lib.LeafRole) -> roles_lib.LeafRole:
    if r.role != 'select':
      return r
    if r.path not in indices:
      return dataclasses.replace(r, role='freeze', fan_in_ndim=0)
    new = r if level == 'neuron' else dataclasses.replace(r, fan_in_ndim=len(r.shape))
    shape = tuple(np.shape(indices[r.path]))
    if len(shape) != 2 or shape[0] != new.num_neurons or not 1 <= shape[1] <= new.fan_in:
      raise ValueError(
        f'indices of {r.path!r} have shape {shape}; a {level}-level selection of its '
        f'{r.shape} kernel has ({new.num_neurons}, n) with 1 <= n <= {new.fan_in}'
      )
    return new

  return jax.tree.map(one, roles)


def select(
  scores: Mapping[str, Any],
  k: int,
  roles: Any,
  level: str = 'neuron',
  exclude: Any = (),
) -> tuple[dict[str, jax.Array], Any]:
  """The entries with the largest |score| at `level`, and the roles they give the run.

  Every `select` leaf of `roles` not excluded (`exclude`: regexes, re.search on its
  path; see `excluded_leaves`) has the budget K * its neurons:

  * ``neuron``: every neuron keeps its top-K inputs: indices (neurons, K) into the
    neuron's flattened fan-in (GPS);
  * ``layer``: the top K * neurons entries of the tensor: indices (1, K * neurons)
    into the flattened tensor;
  * ``net``: the top sum(K * neurons) entries over all those tensors together
    (concatenated in path order), each tensor's share as (1, n) indices into it; a
    tensor with no entry in the top gets none (and is frozen).

  Indices are int32, ascending per row; ties go to the lower position. With
  exclusion the budget of every other leaf is unchanged, so the net level's total
  is that of the leaves not excluded. Returns (indices, roles after selection: see
  `roles_after_selection`). `scores` is {path: array} or a nested dict with an
  entry for every `select` leaf that is not excluded (others are ignored).
  """
  if level not in LEVELS:
    raise ValueError(f'config.gps.level={level!r}: use one of {", ".join(LEVELS)}')
  k = _check_k(k)
  flat_scores = _flat_scores(scores)
  skip = set(excluded_leaves(roles, exclude))
  kept = {p: r for p, r in roles_lib.leaves_with_role(roles, 'select').items() if p not in skip}
  checked = _checked_scores(flat_scores, kept)
  indices = {}
  if level == 'neuron':
    for p, r in kept.items():
      if k > r.fan_in:
        raise ValueError(
          f'K={k} is larger than the fan-in {r.fan_in} of {p!r} '
          f'(shape {r.shape}); lower gps.k or freeze that parameter'
        )
      indices[p] = _topk_rows(checked[p], r.fan_in_ndim, k)
  elif level == 'layer':
    for p, r in kept.items():
      n = k * r.num_neurons
      if n > r.size:
        raise ValueError(
          f'gps.k={k}: K x {r.num_neurons} neurons = {n} entries is more than the '
          f'{r.size} of {p!r} (shape {r.shape}); lower gps.k or exclude that parameter'
        )
      indices[p] = _top_n((checked[p],), n)[None]
  elif kept:  # net
    n = sum(k * r.num_neurons for r in kept.values())
    sizes = np.array([r.size for r in kept.values()], np.int64)
    total = int(sizes.sum())
    if n > total:
      raise ValueError(
        f'gps.k={k}: K x {n // k} neurons = {n} entries is more than the {total} '
        'entries of the selected parameters; lower gps.k'
      )
    if total >= 2**31:
      raise ValueError(f'the net level ranks at most 2^31 - 1 entries, these have {total}')
    flat_idx = np.asarray(shard_lib.to_host(_top_n(tuple(checked.values()), n)))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    bounds = np.searchsorted(flat_idx, starts)  # flat_idx is ascending
    for j, p in enumerate(kept):
      part = flat_idx[bounds[j] : bounds[j + 1]] - starts[j]
      if part.size:
        indices[p] = jnp.asarray(part.astype(np.int32)[None])
  return indices, roles_after_selection(roles, indices, level)


def selection_summary(
  roles: Any, selected_roles: Any, indices: Mapping[str, Any], level: str, exclude: Any = ()
) -> dict:
  """What a selection did, for results.json: level, entries, excluded leaves and the
  leaves the net level left without an entry."""
  excluded = excluded_leaves(roles, exclude)
  before = roles_lib.leaves_with_role(roles, 'select')
  after = roles_lib.leaves_with_role(selected_roles, 'select')
  return {
    'level': level,
    'entries': int(sum(int(np.size(v)) for v in indices.values())),
    'excluded': excluded,
    'no_entry': [p for p in before if p not in after and p not in excluded],
  }


def select_neuron_indices(scores: Mapping[str, Any], k: int, roles: Any) -> dict[str, jax.Array]:
  """{path: int32 (neurons, k)} top-K of |score| per neuron of every `select`
  leaf: indices into the neuron's flattened fan-in, sorted ascending.

  `scores` is {path: array} or a nested dict with an entry for every `select`
  leaf (others are ignored).
  """
  return select(scores, k, roles, 'neuron')[0]


def select_neuron_topk(
  scores: Mapping[str, Any], k: int, roles: Any
) -> tuple[dict[str, jax.Array], dict]:
  """Per-neuron top-K of |score| for every leaf whose role is `select`.

  Returns:
    indices: as `select_neuron_indices`.
    masks: nested bool pytree with the parameters' shapes, as `element_masks`.
  """
  indices = select_neuron_indices(scores, k, roles)
  return indices, tree_lib.unflat(element_masks(indices, roles))
