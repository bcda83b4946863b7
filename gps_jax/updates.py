"""Update rules: how a method's trainable state is parameterised around the frozen base.

The trainer (`gps_jax.trainer`) holds one rule and never asks which one it is.
Every rule implements the same operations on flat {path: array} dicts:

* ``init(params) -> (frozen, trainable, aux)``: split the base parameters into
  the part that never enters the optimizer, the trainable state, and the
  non-trainable arrays the step needs besides them (indices, masks);
* ``combine(frozen, aux, trainable) -> params``: the full parameters (the eval
  step's, and what a checkpoint merges to);
* ``forward(apply_fn, frozen, aux, trainable, *args, **kwargs)``, optional: the
  training forward pass when the rule has a cheaper one than `plain_forward`
  (``apply_fn`` on ``combine``): the sparse rule's K-entry weight gradients
  (`gps_jax.sparse_grad`);
* ``optimizer(inner) -> tx``: the optimizer's view of the trainable state;
* ``apply_gradients(tx, trainable, opt_state, grads, frozen, aux)``: one
  optimizer update, returning ``(trainable, opt_state)``;
* ``export(base, trainable) -> {'indices', 'train', 'delta'[, 'factors']}``: the
  task's result as a delta (sparse entries, trained leaves and, for the factored
  rules, the factors that merge into the base), whatever the parameterisation.

`frozen`, `trainable` and `aux` are arguments of the jitted step (never
constants closed over), so each is placed on the device mesh by the one
sharding rule of `gps_jax.sharding`. A low-rank delta (LoRA) or a per-channel
scale and shift (SSF) is another rule (`Factored`): a function of the frozen base
plus a few trainable arrays (`gps_jax.factors`), registered in RULES.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from gps_jax import factors as factors_lib
from gps_jax import roles as roles_lib
from gps_jax import selection
from gps_jax import sparse
from gps_jax import sparse_grad
from gps_jax import tree as tree_lib

Flat = Mapping[str, jax.Array]


def plain_forward(rule, apply_fn, frozen, aux, trainable, *args, **kwargs):
  """The model on the rule's full parameters."""
  return apply_fn({'params': tree_lib.unflat(rule.combine(frozen, aux, trainable))}, *args, **kwargs)


@dataclasses.dataclass(frozen=True, eq=False)
class SparseDelta:
  """GPS's own parameterisation: (neurons, K) delta values at the selected indices.

  The optimizer sees only the trained leaves (head, biases) and the delta values,
  so its state is a few MB for ViT-B/16; the base is a non-differentiated input.
  Weight decay acts on the effective weights (base + delta at the indices), as it
  would on the dense parameters. `grad` (``config.train.sparse_grad``) says where
  the training forward keeps the base kernels and adds the delta's term with its
  K-entry weight gradient (`gps_jax.sparse_grad`): 'auto' by the measured rule,
  'on' for every matmul-like kernel, 'off' nowhere (effective kernels, autodiff's
  dense weight gradients). The values are the same either way.
  """

  roles: Any
  indices: Flat
  grad: str = 'off'
  name: str = 'sparse'

  @property
  def layout(self) -> dict[str, int]:
    return sparse.fan_in_layout(self.roles)

  def init(self, params: Flat):
    frozen, trainable = sparse.split(params, self.roles, self.indices)
    return frozen, trainable, dict(self.indices)

  def combine(self, frozen, aux, trainable):
    return sparse.combine(frozen, aux, trainable, self.layout)

  def forward(self, apply_fn, frozen, aux, trainable, *args, **kwargs):
    if self.grad == 'off':
      return plain_forward(self, apply_fn, frozen, aux, trainable, *args, **kwargs)
    layout = self.layout
    entries = {p: (aux[p], v, layout[p]) for p, v in trainable['delta'].items()}
    params = tree_lib.unflat({**frozen, **trainable['train']})
    out, _ = sparse_grad.forward(apply_fn, params, entries, self.grad, *args, **kwargs)
    return out

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


@dataclasses.dataclass(frozen=True, eq=False)
class Factored:
  """The frozen base plus a few new arrays that merge into it: LoRA or SSF (`gps_jax.factors`).

  The trainable state is {'train': the `train` leaves (the head), 'factors': {name:
  array}}; `spec` (JSON data, saved in the delta's manifest) says where the factors go.
  The forward pass uses the merged parameters, so the eval step is the plain model's.
  Weight decay acts on the factors themselves.
  """

  roles: Any
  spec: dict
  seed: int = 0
  name: str = 'factored'

  def init(self, params: Flat):
    rl = tree_lib.flat(self.roles)
    frozen = {p: v for p, v in params.items() if rl[p].role != 'train'}
    train = {p: v for p, v in params.items() if rl[p].role == 'train'}
    shapes = {p: tuple(v.shape) for p, v in params.items()}
    fresh = factors_lib.init(self.spec, shapes, jax.random.PRNGKey(self.seed))
    return frozen, {'train': train, 'factors': fresh}, {}

  def combine(self, frozen, aux, trainable):
    del aux
    return factors_lib.merge(self.spec, {**frozen, **trainable['train']}, trainable['factors'])

  def optimizer(self, inner: optax.GradientTransformation) -> optax.GradientTransformation:
    return inner

  def apply_gradients(self, tx, trainable, opt_state, grads, frozen, aux):
    del frozen, aux
    updates_, opt_state = tx.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates_), opt_state

  def export(self, base: Flat, trainable) -> dict:
    del base
    return {
      'indices': {},
      'delta': {},
      'train': dict(trainable['train']),
      'factors': dict(trainable['factors']),
    }


def _flat_roles(roles) -> tuple[dict, dict]:
  flat = tree_lib.flat(roles)
  return {p: r.shape for p, r in flat.items()}, {p: r.role for p, r in flat.items()}


def _lora(roles, indices, config, seed):
  del indices
  shapes, role_of = _flat_roles(roles)
  spec = factors_lib.lora_spec(
    shapes,
    role_of,
    family=config.model.name,
    targets=config.lora.targets,
    rank=config.lora.rank,
    alpha=config.lora.alpha,
    fan_in_rules=config.fan_in_rules or roles_lib.DEFAULT_FAN_IN_RULES,
  )
  return Factored(roles, spec, seed, name='lora')


def _ssf(roles, indices, config, seed):
  del indices
  shapes, role_of = _flat_roles(roles)
  spec = factors_lib.ssf_spec(
    shapes, role_of, targets=config.ssf.targets, family=config.model.name
  )
  return Factored(roles, spec, seed, name='ssf')


# The masked rules, by name: `config.train.update_mode` of the selecting methods.
MASKED_RULES: dict[str, Callable[..., Any]] = {'sparse': SparseDelta, 'dense': DenseMasked}
# Every rule: name -> constructor(roles, indices, config, seed). A method of
# gps_jax.methods names its own (`Method.update`); the masked methods take update_mode's.
def _sparse(roles, indices, config=None, seed=0):
  del seed  # K and the indices say everything
  grad = 'off' if config is None else config.train.sparse_grad
  if grad not in sparse_grad.MODES:
    raise ValueError(f'config.train.sparse_grad={grad!r}: use one of {", ".join(sparse_grad.MODES)}')
  return SparseDelta(roles, dict(indices), grad=grad)


def _dense(roles, indices, config=None, seed=0):
  del config, seed
  return DenseMasked(roles, dict(indices))


RULES: dict[str, Callable[..., Any]] = {
  'sparse': _sparse,
  'dense': _dense,
  'lora': _lora,
  'ssf': _ssf,
}


def make(name: str, roles: Any, indices: Flat, config=None, seed: int = 0):
  """The update rule `name` for these roles and selected indices; `config` gives the
  hyper-parameters of the factored rules (config.lora, config.ssf), `seed` their init."""
  if name not in RULES:
    raise ValueError(f'config.train.update_mode={name!r}: use one of {", ".join(MASKED_RULES)}')
  if name not in MASKED_RULES and config is None:
    raise ValueError(f'the {name} update rule needs the run config')
  return RULES[name](roles, dict(indices), config, seed)


def trainable_counts(rule, params: Flat) -> dict[str, int]:
  """{'trainable', 'head'}: scalars the rule trains, in all and in the head, from shapes."""
  abstract = {p: jax.ShapeDtypeStruct(v.shape, v.dtype) for p, v in params.items()}
  trainable = jax.eval_shape(lambda p: rule.init(p)[1], abstract)
  total = head = 0
  for part in trainable.values():
    for p, v in part.items():
      total += v.size
      head += v.size if tree_lib.is_head(p) else 0
  return {'trainable': int(total), 'head': int(head)}
