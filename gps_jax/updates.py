"""Update rules: how a method's trainable state is parameterised around the frozen base.

The trainer (`gps_jax.trainer`) holds one rule and never asks which one it is.
Every rule implements the same five operations on flat {path: array} dicts:

* ``init(params) -> (frozen, trainable, aux)``: split the base parameters into
  the part that never enters the optimizer, the trainable state, and the
  non-trainable arrays the step needs besides them (indices, masks);
* ``combine(frozen, aux, trainable) -> params``: the full parameters of the
  forward pass;
* ``optimizer(inner) -> tx``: the optimizer's view of the trainable state;
* ``apply_gradients(tx, trainable, opt_state, grads, frozen, aux)``: one
  optimizer update, returning ``(trainable, opt_state)``;
* ``export(base, trainable) -> {'indices', 'train', 'delta'}``: the task's
  result as a sparse delta, whatever the parameterisation.

`frozen`, `trainable` and `aux` are arguments of the jitted step (never
constants closed over), so each is placed on the device mesh by the one
sharding rule of `gps_jax.sharding`. A low-rank delta (LoRA) or a per-channel
scale and shift (SSF) is another rule: a function of the frozen base plus a few
trainable arrays, registered in RULES.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from gps_jax import selection
from gps_jax import sparse
from gps_jax import tree as tree_lib

Flat = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True, eq=False)
class SparseDelta:
  """GPS's own parameterisation: (neurons, K) delta values at the selected indices.

  The optimizer sees only the trained leaves (head, biases) and the delta values,
  so its state is a few MB for ViT-B/16; the base is a non-differentiated input.
  Weight decay acts on the effective weights (base + delta at the indices), as it
  would on the dense parameters.
  """

  roles: Any
  indices: Flat
  name: str = 'sparse'

  @property
  def layout(self) -> dict[str, int]:
    return sparse.fan_in_layout(self.roles)

  def init(self, params: Flat):
    frozen, trainable = sparse.split(params, self.roles, self.indices)
    return frozen, trainable, dict(self.indices)

  def combine(self, frozen, aux, trainable):
    return sparse.combine(frozen, aux, trainable, self.layout)

  def optimizer(self, inner: optax.GradientTransformation) -> optax.GradientTransformation:
    return inner

  def apply_gradients(self, tx, trainable, opt_state, grads, frozen, aux):
    decay_params = sparse.effective_values(frozen, aux, trainable, self.layout)
    updates, opt_state = tx.update(grads, opt_state, decay_params)
    return optax.apply_updates(trainable, updates), opt_state

  def export(self, base: Flat, trainable) -> dict:
    del base  # the delta is the trainable state itself
    return {'indices': dict(self.indices), **trainable}


@dataclasses.dataclass(frozen=True, eq=False)
class DenseMasked:
  """Full parameters in the optimizer, with element masks on gradients and updates.

  The original code's behaviour done right: ``optax.masked`` keeps no optimizer
  state for leaves without a trainable entry, and the final update goes through
  ``where(mask)`` so that neither Adam nor weight decay can move a frozen entry
  (it stays bit-identical). Costs the memory of full fine-tuning; kept as the
  reference the sparse rule is tested against.
  """

  roles: Any
  indices: Flat
  name: str = 'dense'

  def init(self, params: Flat):
    return {}, dict(params), selection.element_masks(self.indices, self.roles)

  def combine(self, frozen, aux, trainable):
    del frozen, aux
    return trainable

  def optimizer(self, inner: optax.GradientTransformation) -> optax.GradientTransformation:
    has_entries = {p: r.role != 'freeze' for p, r in tree_lib.flat(self.roles).items()}
    return optax.masked(inner, has_entries)

  def apply_gradients(self, tx, trainable, opt_state, grads, frozen, aux):
    del frozen
    grads = jax.tree.map(lambda g, m: jnp.where(m, g, 0), grads, aux)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    # where() instead of adding a zero update: frozen entries stay bit-identical.
    trainable = jax.tree.map(
      lambda p, u, m: jnp.where(m, p + u.astype(p.dtype), p), trainable, updates, aux
    )
    return trainable, opt_state

  def export(self, base: Flat, trainable) -> dict:
    return {
      'indices': dict(self.indices),
      **sparse.delta_from_dense(base, trainable, self.roles, self.indices),
    }


# name -> constructor(roles, indices). `config.train.update_mode` names one for the
# masked methods; a method of gps_jax.methods may name its own (`Method.update`).
RULES: dict[str, Callable[..., Any]] = {'sparse': SparseDelta, 'dense': DenseMasked}


def make(name: str, roles: Any, indices: Flat):
  """The update rule `name` for these roles and selected indices."""
  if name not in RULES:
    raise ValueError(f'config.train.update_mode={name!r}: use one of {", ".join(RULES)}')
  return RULES[name](roles, dict(indices))
