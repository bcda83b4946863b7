"""config.train.remat: rematerialised blocks keep the parameter names, the values and the
gradients, and lower the compiled step's memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gps_jax import roles as roles_lib
from gps_jax import sparse_grad
from gps_jax import tree as tree_lib
from gps_jax import updates
from gps_jax.config_defaults import experiment_config
from gps_jax.models import ViT
from gps_jax.models.layers import blocks
from gps_jax.trainer import MaskedFinetuner

from tiny import FAMILIES, TINY, model_shapes, random_params



@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_remat_keeps_names_values_and_gradients(family):
  plain, remat = FAMILIES[family](), FAMILIES[family](remat='nothing_saveable')
  shapes = model_shapes(plain)
  assert jax.tree.map(lambda s: s.shape, model_shapes(remat)) == jax.tree.map(lambda s: s.shape, shapes)
  params = tree_lib.unflat({p: jnp.asarray(v) for p, v in random_params(shapes).items()})
  s = plain.image_size
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, s, s, 3)), jnp.float32)

  def loss(model, p):
    logits, _ = model.apply({'params': p}, x, train=True, rngs={'dropout': jax.random.PRNGKey(1)})
    return jnp.sum(jnp.sin(logits))

  ref_v, ref_g = jax.value_and_grad(lambda p: loss(plain, p))(params)
  v, g = jax.jit(jax.value_and_grad(lambda p: loss(remat, p)))(params)
  np.testing.assert_allclose(v, ref_v, rtol=1e-5)
  for (path, a), b in zip(tree_lib.flat(ref_g).items(), tree_lib.flat(g).values()):
    np.testing.assert_allclose(b, a, atol=1e-5, err_msg=path)


def test_unknown_policy_is_refused():
  with pytest.raises(ValueError, match=r"config.train.remat='everything': use one of"):
    blocks(object, 'everything')


def _step_memory(model, grad='off'):
  shapes = model_shapes(model)
  roles = roles_lib.assign_roles(shapes)
  indices = {
    p: np.zeros((r.num_neurons, 1), np.int32)
    for p, r in roles_lib.leaves_with_role(roles, 'select').items()
  }
  cfg = experiment_config()
  cfg.train.sparse_grad = grad
  tuner = MaskedFinetuner(model.apply, roles, indices, cfg, num_classes=5, total_steps=1)
  parts = jax.eval_shape(tuner._parts, tree_lib.flat(shapes))
  s = model.image_size
  batch = {
    'image': jax.ShapeDtypeStruct((16, s, s, 3), jnp.float32),
    'label': jax.ShapeDtypeStruct((16,), jnp.int32),
  }
  compiled = tuner.train_step.lower(*parts, batch, jax.random.PRNGKey(0)).compile()
  return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.xfail(
  strict=True,
  reason='measured: XLA:CPU schedules the recomputed forward passes early, so its compiled '
  'peak does not drop (README "The cost of a step"); to be measured on a GPU',
)
def test_remat_lowers_the_step_memory():
  """A ViT with 6 blocks of 65 tokens: the rematerialised step would keep one block's
  activations instead of six."""
  grad = 'off'
  kw = dict(
    num_classes=5,
    patch_size=4,
    hidden_size=32,
    num_layers=6,
    num_heads=2,
    mlp_dim=128,
    image_size=32,
  )
  plain = _step_memory(ViT(**kw), grad)
  remat = _step_memory(ViT(**kw, remat='nothing_saveable'), grad)
  assert remat < 0.6 * plain, (remat, plain)


def test_k_entry_gradients_inside_remat_blocks():
  model = ViT(**TINY, remat='nothing_saveable')
  shapes = model_shapes(model)
  base = {p: jnp.asarray(v) for p, v in random_params(shapes).items()}
  roles = roles_lib.assign_roles(shapes)
  rng = np.random.default_rng(0)
  indices = {
    p: jnp.asarray(rng.integers(0, r.fan_in, size=(r.num_neurons, 1)), jnp.int32)
    for p, r in roles_lib.leaves_with_role(roles, 'select').items()
  }
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
  grads = {}
  for grad in ('off', 'on'):
    rule = updates.SparseDelta(roles, indices, grad=grad)
    frozen, trainable, aux = rule.init(base)
    trainable['delta'] = {p: v + 0.1 for p, v in trainable['delta'].items()}

    def loss(t, rule=rule, frozen=frozen, aux=aux):
      return jnp.sum(jnp.sin(rule.forward(model.apply, frozen, aux, t, x, train=False)[0]))

    grads[grad] = jax.jit(jax.grad(loss))(trainable)['delta']
  for p in grads['off']:
    np.testing.assert_allclose(grads['on'][p], grads['off'][p], atol=1e-5, err_msg=p)
  entries = {
    p: (
      indices[p],
      jnp.zeros(indices[p].shape),
      roles_lib.leaves_with_role(roles, 'select')[p].fan_in_ndim,
    )
    for p in indices
  }
  _, seen = sparse_grad.forward(model.apply, tree_lib.unflat(base), entries, 'on', x, train=False)
  assert set(seen) == set(indices) and set(seen.values()) == {'sparse'}
