"""Roles of parameter leaves: which are selected per neuron, trained or frozen.

Roles come from ordered regex rules (data in the config, first match wins)
applied to the '/'-joined path of every leaf, e.g.
``Transformer/encoderblock_3/MlpBlock_3/Dense_0/kernel``.

* ``select``: GPS candidate; every neuron (output unit) keeps its top-K inputs.
* ``train``: trained in full (head, biases, ...).
* ``freeze``: never changes.

For a ``select`` leaf, the neuron layout says which leading axes are the fan-in
(inputs of a neuron); the remaining trailing axes index neurons. In the Flax
layout fan-in axes always lead: Dense (in, out) → 1; attention query/key/value
(in, heads, head_dim) → 1; attention out (heads, head_dim, out) → 2; conv
(kh, kw, in, out) → 3. ``fan_in_rules`` map a path regex to that number, and
-1 means "all axes but the last".
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Iterable, Mapping, Sequence

import jax

from gps_jax.tree import flat, path_str

ROLES = ('select', 'train', 'freeze')

# Ordered (regex, role) pairs; the first whose regex matches a leaf path gives its role.
Rules = tuple[tuple[str, str], ...]

# The reference GPS roles: head and every bias trained, layer-scale gammas
# trained, normalisation layers, position embeddings and the class token
# frozen, every other weight tensor selected per neuron. Swin's relative
# position bias tables are frozen too, like position embeddings: they encode
# geometry, not features. This is our choice: the original's rule (every
# tensor of two or more dims but norms, position embedding and class token)
# would select a (positions, heads) table per head.
GPS_RULES: Rules = (
  (r'^head/', 'train'),
  (r'(^|/)(LayerNorm[^/]*|[^/]*norm[^/]*)/', 'freeze'),
  (r'pos_embedding$', 'freeze'),
  (r'(^|/)relative_position_bias_table$', 'freeze'),
  (r'^cls$', 'freeze'),
  (r'(^|/)bias$', 'train'),
  (r'(^|/)gamma$', 'train'),
  (r'.*', 'select'),
)


DEFAULT_FAN_IN_RULES: tuple[tuple[str, int], ...] = (
  (r'(^|/)(query|key|value)/kernel$', 1),
  (r'(^|/)out/kernel$', 2),
  (r'.*', -1),
)


@dataclasses.dataclass(frozen=True)
class LeafRole:
  """The role of one parameter leaf, with what selection needs to know.

  A frozen dataclass, so JAX treats it as a leaf of a roles pytree.
  """

  path: str
  role: str
  shape: tuple[int, ...]
  fan_in_ndim: int = 0  # leading axes that form a neuron's inputs (select only)

  @property
  def size(self) -> int:
    return math.prod(self.shape)

  @property
  def fan_in(self) -> int:
    return math.prod(self.shape[: self.fan_in_ndim])

  @property
  def num_neurons(self) -> int:
    return math.prod(self.shape[self.fan_in_ndim :])


def _compile(rules: Iterable[Sequence[Any]], what: str) -> list[tuple[re.Pattern, Any]]:
  compiled = []
  for i, rule in enumerate(rules):
    if len(rule) != 2:
      raise ValueError(f'{what} rule #{i} must be a (regex, value) pair, got {rule!r}')
    pattern, value = rule
    try:
      compiled.append((re.compile(pattern), value))
    except re.error as e:
      raise ValueError(f'{what} rule #{i}: bad regex {pattern!r}: {e}') from None
  return compiled


def _first_match(compiled, path: str, what: str):
  for pattern, value in compiled:
    if pattern.search(path):
      return value
  raise ValueError(
    f'no {what} rule matches parameter {path!r}; '
    f"end the rules with a catch-all such as ('.*', 'freeze')"
  )


def assign_roles(
  params: Any,
  rules: Iterable[Sequence[Any]] = GPS_RULES,
  fan_in_rules: Iterable[Sequence[Any]] = DEFAULT_FAN_IN_RULES,
) -> Any:
  """Returns a pytree of `LeafRole`s with the structure of `params`.

  `params` may hold arrays or `jax.ShapeDtypeStruct`s (from `jax.eval_shape`).
  """
  rules = _compile(rules, 'role')
  for _, role in rules:
    if role not in ROLES:
      raise ValueError(f'unknown role {role!r} in role rules; use one of {ROLES}')
  fan_rules = _compile(fan_in_rules, 'fan-in')

  def one(key_path, leaf):
    path = path_str(key_path)
    shape = tuple(leaf.shape)
    role = _first_match(rules, path, 'role')
    fan_in_ndim = 0
    if role == 'select':
      if len(shape) < 2:
        raise ValueError(
          f'parameter {path!r} of shape {shape} has role select, but only '
          'tensors with 2 or more axes have neurons; give it train or freeze'
        )
      fan_in_ndim = int(_first_match(fan_rules, path, 'fan-in'))
      if fan_in_ndim < 0:
        fan_in_ndim += len(shape)
      if not 0 < fan_in_ndim < len(shape):
        raise ValueError(
          f'fan-in rule gives {fan_in_ndim} leading axes for {path!r} '
          f'of shape {shape}; it must leave at least one neuron axis'
        )
    return LeafRole(path, role, shape, fan_in_ndim)

  return jax.tree_util.tree_map_with_path(one, params)


def leaves_with_role(roles: Mapping, role: str) -> dict[str, LeafRole]:
  """{path: LeafRole} for the leaves that have `role`, in path order."""
  return {p: r for p, r in flat(roles).items() if r.role == role}
