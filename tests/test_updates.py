"""The update-rule interface: the trainer holds a rule and never asks which one it is."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gps_jax import methods
from gps_jax import roles as roles_lib
from gps_jax import updates
from gps_jax.config_defaults import experiment_config
from gps_jax.models import ViT
from gps_jax.trainer import MODES, MaskedFinetuner

from tiny import TINY, random_params, tiny_shapes

STEPS = 4


@dataclasses.dataclass(frozen=True, eq=False)
class ScaledHead:
  """A rule the trainer has never seen: the head kernel is base * (1 + s) with one trainable
  scale per class, the head bias is trained, everything else is frozen. A stand-in for the
  per-channel scale/shift (SSF) and low-rank (LoRA) rules the interface must take."""

  name: str = 'scaled_head'

  def init(self, params):
    frozen = dict(params)
    trainable = {
      'scale': jnp.zeros(params['head/kernel'].shape[-1:]),
      'bias': frozen.pop('head/bias'),
    }
    return frozen, trainable, {}

  def combine(self, frozen, aux, trainable):
    del aux
    return {
      **frozen,
      'head/kernel': frozen['head/kernel'] * (1.0 + trainable['scale']),
      'head/bias': trainable['bias'],
    }

  def optimizer(self, inner):
    return inner

  def apply_gradients(self, tx, trainable, opt_state, grads, frozen, aux):
    updates_, opt_state = tx.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates_), opt_state

  def export(self, base, trainable):
    raise NotImplementedError


@pytest.fixture(scope='module')
def setup():
  model = ViT(**TINY)
  shapes = tiny_shapes()
  params = random_params(shapes)
  rng = np.random.default_rng(0)
  batches = [
    {
      'image': rng.normal(size=(4, 8, 8, 3)).astype(np.float32),
      'label': rng.integers(0, 5, size=4).astype(np.int32),
    }
    for _ in range(STEPS)
  ]
  return model, params, shapes, batches


def _config():
  cfg = experiment_config()
  cfg.optim.name, cfg.optim.lr, cfg.optim.end_lr = 'sgd', 0.1, 0.1
  cfg.optim.momentum, cfg.optim.warmup_init_lr = 0.0, 0.1
  return cfg


def _loss(model, params, batch):
  from gps_jax import tree as tree_lib
  from gps_jax.losses import cross_entropy

  logits, _ = model.apply({'params': tree_lib.unflat(params)}, batch['image'], train=False)
  return cross_entropy(logits, batch['label'], 5, 0.0).mean()


def test_a_new_rule_plugs_into_the_trainer_unchanged(setup):
  """The trainer runs a rule it has no code for; its steps equal plain SGD on the rule's
  parameterisation computed here with jax.grad, and the frozen base never moves."""
  model, params, shapes, batches = setup
  roles = roles_lib.assign_roles(shapes, methods.LINEAR_RULES)
  rule = ScaledHead()
  tuner = MaskedFinetuner(
    model.apply, roles, {}, _config(), num_classes=5, total_steps=STEPS, update=rule
  )
  assert tuner.mode == 'scaled_head'
  state, frozen, aux = tuner.init(params)
  for b in batches:
    state, _ = tuner.train_step(state, frozen, aux, b, jax.random.PRNGKey(0))

  # Reference: SGD (lr 0.1) on (scale, bias) of the same function, by hand.
  ref = {'scale': np.zeros(5, np.float32), 'bias': np.asarray(params['head/bias'])}
  base = {p: jnp.asarray(v) for p, v in params.items()}

  def loss_of(t, batch):
    full = {**base, 'head/kernel': base['head/kernel'] * (1.0 + t['scale']), 'head/bias': t['bias']}
    return _loss(model, full, batch)

  for b in batches:
    g = jax.grad(loss_of)(ref, b)
    ref = {k: ref[k] - 0.1 * np.asarray(g[k]) for k in ref}
  for k in ref:
    np.testing.assert_allclose(np.asarray(state.trainable[k]), ref[k], atol=1e-5)
  assert np.abs(ref['scale']).max() > 1e-3  # the test would see a rule that does nothing
  for p, v in frozen.items():
    np.testing.assert_array_equal(np.asarray(v), params[p])


def test_registered_rules_and_the_unknown_name_message(setup):
  _, params, shapes, _ = setup
  roles = roles_lib.assign_roles(shapes)
  assert MODES == tuple(updates.MASKED_RULES) == ('sparse', 'dense')
  assert set(updates.RULES) == {'sparse', 'dense', 'lora', 'ssf'}
  with pytest.raises(ValueError, match=r"config.train.update_mode='lowrank': use one of sparse, dense"):
    updates.make('lowrank', roles, {})
  with pytest.raises(ValueError, match=r'the lora update rule needs the run config'):
    updates.make('lora', roles, {})
  # Both rules export the same sparse delta for the same trainable entries.
  rng = np.random.default_rng(0)
  indices = {
    p: np.sort(rng.permuted(np.tile(np.arange(r.fan_in), (r.num_neurons, 1)), axis=1)[:, :2])
    for p, r in roles_lib.leaves_with_role(roles, 'select').items()
  }
  indices = {p: jnp.asarray(v, jnp.int32) for p, v in indices.items()}
  sparse_rule, dense_rule = (updates.make(n, roles, indices) for n in ('sparse', 'dense'))
  base = {p: jnp.asarray(v) for p, v in params.items()}
  frozen, trainable, aux = sparse_rule.init(base)
  trainable['delta'] = {p: jnp.full(v.shape, 0.5) for p, v in trainable['delta'].items()}
  tuned = sparse_rule.combine(frozen, aux, trainable)
  from_dense = dense_rule.export(base, tuned)
  from_sparse = sparse_rule.export(base, trainable)
  for part in ('indices', 'delta', 'train'):
    for p in from_sparse[part]:
      np.testing.assert_allclose(
        np.asarray(from_dense[part][p]), np.asarray(from_sparse[part][p]), atol=1e-6
      )
