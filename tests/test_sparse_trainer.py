"""MaskedFinetuner in its sparse and dense modes on a tiny ViT: the same parameters, a NumPy
AdamW reference, frozen entries bit-identical, optimizer state for trainable entries only."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gps_jax import methods
from gps_jax import roles as roles_lib
from gps_jax import sparse
from gps_jax import tree as tree_lib
from gps_jax.trainer import MaskedFinetuner

from trainer_setup import (
  B1, B2, EPS, K, LR, SMOOTHING, STEPS, WD, build_setup, copy_of, make_config,
)  # fmt: skip


@pytest.fixture(scope='module')
def setup():
  return build_setup()


def masks_np(roles, indices):
  """Element masks built in NumPy from the indices."""
  out = {}
  for p, r in tree_lib.flat(roles).items():
    if r.role == 'select':
      m = np.zeros((r.fan_in, r.num_neurons), bool)
      for j, row in enumerate(indices[p]):
        m[row, j] = True
      out[p] = m.reshape(r.shape)
    else:
      out[p] = np.full(r.shape, r.role == 'train')
  return out


def train(setup, mode, rules=None, indices=None, steps=STEPS):
  model, base, roles, sel, batches = setup
  if rules is not None:
    roles = roles_lib.assign_roles(tree_lib.unflat(base), rules)
  indices = sel if indices is None else indices
  tuner = MaskedFinetuner(
    model.apply,
    roles,
    {p: jnp.asarray(v) for p, v in indices.items()},
    make_config(mode=mode),
    num_classes=5,
    total_steps=steps,
    mode=mode,
  )
  state, frozen, aux = tuner.init(copy_of(base))
  rng = jax.random.PRNGKey(3)
  for b in batches[:steps]:
    state, _ = tuner.train_step(state, frozen, aux, b, rng)
  final = {p: np.asarray(v) for p, v in tuner.compose_jit(frozen, aux, state.trainable).items()}
  return dict(tuner=tuner, state=state, frozen=frozen, aux=aux, final=final, roles=roles)


@pytest.fixture(scope='module')
def runs(setup):
  return {mode: train(setup, mode) for mode in ('sparse', 'dense')}


@pytest.mark.slow
def test_sparse_and_dense_agree(setup, runs):
  base = setup[1]
  s, d = runs['sparse']['final'], runs['dense']['final']
  assert set(s) == set(d) == set(base)
  for p in base:
    np.testing.assert_allclose(s[p], d[p], rtol=1e-5, atol=1e-5, err_msg=p)
  # And they did train (not trivially equal to the base).
  assert any(not np.allclose(s[p], base[p]) for p in base)


def own_ce(logits, labels):
  t = jax.nn.one_hot(labels, 5) * (1 - SMOOTHING) + SMOOTHING / 5
  return -(t * jax.nn.log_softmax(logits)).sum(-1).mean()


@pytest.mark.slow
def test_dense_matches_numpy_masked_adamw(setup, runs):
  """Masked AdamW written out in NumPy (float64 state), gradients from jax.grad of the
  plain model: decoupled weight decay on the trainable entries only, cosine lr."""
  model, base, roles, indices, batches = setup
  masks = masks_np(roles, indices)

  @jax.jit
  def grad_fn(params, images, labels):
    def loss(p):
      logits, _ = model.apply(
        {'params': tree_lib.unflat(p)}, images, train=True, rngs={'dropout': jax.random.PRNGKey(0)}
      )
      return own_ce(logits, labels)

    return jax.grad(loss)(params)

  w = {p: v.astype(np.float64) for p, v in base.items()}
  mu = {p: np.zeros_like(v) for p, v in w.items()}
  nu = {p: np.zeros_like(v) for p, v in w.items()}
  for t, b in enumerate(batches):
    lr = 0.5 * LR * (1 + math.cos(math.pi * t / STEPS))  # cosine to end_lr 0, no warm-up
    g = grad_fn({p: v.astype(np.float32) for p, v in w.items()}, b['image'], b['label'])
    for p in w:
      m = masks[p]
      gp = np.where(m, np.asarray(g[p], np.float64), 0.0)
      mu[p] = B1 * mu[p] + (1 - B1) * gp
      nu[p] = B2 * nu[p] + (1 - B2) * gp * gp
      mhat = mu[p] / (1 - B1 ** (t + 1))
      vhat = nu[p] / (1 - B2 ** (t + 1))
      step = mhat / (np.sqrt(vhat) + EPS) + WD * w[p]
      w[p] = np.where(m, w[p] - lr * step, w[p])
  for p in base:
    np.testing.assert_allclose(runs['dense']['final'][p], w[p], rtol=1e-4, atol=2e-5, err_msg=p)


def bits(a):
  return np.asarray(a, np.float32).view(np.uint32)


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['sparse', 'dense'])
def test_frozen_entries_bit_identical(setup, runs, mode):
  _, base, roles, indices, _ = setup
  final = runs[mode]['final']
  masks = masks_np(roles, indices)
  flat_roles = tree_lib.flat(roles)
  for p, r in flat_roles.items():
    m = masks[p]
    np.testing.assert_array_equal(bits(final[p])[~m], bits(base[p])[~m], err_msg=p)
    if r.role == 'select':
      # Every selected entry moved (Adam and weight decay on a non-zero weight).
      assert np.all(final[p][m] != base[p][m]), p
    elif r.role == 'train':
      assert np.mean(final[p] != base[p]) > 0.9, p
    else:
      assert not m.any()
  assert any(r.role == 'freeze' for r in flat_roles.values())


def adam_moments(opt_state):
  """(mu, nu) of the one Adam state inside an optax state."""
  found = []

  def visit(x):
    if hasattr(x, 'mu') and hasattr(x, 'nu'):
      found.append((x.mu, x.nu))
    elif hasattr(x, 'inner_state'):
      visit(x.inner_state)
    elif isinstance(x, (tuple, list)):
      for y in x:
        visit(y)

  visit(opt_state)
  assert len(found) == 1, found
  return found[0]


def count(tree):
  return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


@pytest.mark.slow
def test_optimizer_state_holds_only_trainable_entries(setup, runs):
  _, base, roles, indices, _ = setup
  flat_roles = tree_lib.flat(roles)
  n_train = sum(r.size for r in flat_roles.values() if r.role == 'train')
  n_selected = sum(r.num_neurons * K for r in flat_roles.values() if r.role == 'select')
  assert n_selected == sum(v.size for v in indices.values())
  model_size = sum(v.size for v in base.values())
  # By hand for the tiny ViT: biases 16 + 2 * 112, head 16 * 5 + 5; neurons 16 + 2 * 112.
  assert n_train == 16 + 2 * 112 + 85
  assert n_selected == (16 + 2 * 112) * K
  mu, nu = adam_moments(runs['sparse']['state'].opt_state)
  assert count(mu) == count(nu) == n_train + n_selected
  assert count(mu) < 0.25 * model_size
  assert sparse.count_entries(runs['sparse']['state'].trainable) == n_train + n_selected
  # Dense mode keeps moments for every leaf with a trainable entry and none for frozen leaves.
  mu, nu = adam_moments(runs['dense']['state'].opt_state)
  n_not_frozen = sum(r.size for r in flat_roles.values() if r.role != 'freeze')
  assert count(mu) == count(nu) == n_not_frozen


@pytest.mark.slow
def test_delta_from_dense_equals_sparse_state(setup, runs):
  base = setup[1]
  from_dense = runs['dense']['tuner'].sparse_result(copy_of(base), runs['dense']['state'])
  from_sparse = runs['sparse']['tuner'].sparse_result(copy_of(base), runs['sparse']['state'])
  assert set(from_dense) == set(from_sparse) == {'indices', 'train', 'delta'}
  for part in ('train', 'delta'):
    assert set(from_dense[part]) == set(from_sparse[part])
    for p in from_sparse[part]:
      np.testing.assert_allclose(
        np.asarray(from_dense[part][p]),
        np.asarray(from_sparse[part][p]),
        rtol=1e-5,
        atol=1e-5,
        err_msg=f'{part}/{p}',
      )
  # The delta is the change of the selected entries: tuned - base, gathered in NumPy.
  masks = masks_np(setup[2], setup[3])
  for p, idx in setup[3].items():
    r = tree_lib.flat(setup[2])[p]
    tuned = runs['dense']['final'][p].reshape(r.fan_in, -1)
    b0 = base[p].reshape(r.fan_in, -1)
    cols = np.arange(r.num_neurons)[:, None]
    np.testing.assert_allclose(
      np.asarray(from_dense['delta'][p]), tuned[idx, cols] - b0[idx, cols], rtol=1e-5, atol=1e-6
    )
    assert masks[p].sum() == idx.size


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['sparse', 'dense'])
def test_linear_method_changes_only_the_head(setup, mode):
  base = setup[1]
  run = train(setup, mode, rules=methods.METHODS['linear'].rules, indices={}, steps=3)
  for p in base:
    if p.startswith('head/'):
      assert np.mean(run['final'][p] != base[p]) > 0.9, p
    else:
      np.testing.assert_array_equal(bits(run['final'][p]), bits(base[p]), err_msg=p)
  if mode == 'sparse':
    mu, _ = adam_moments(run['state'].opt_state)
    assert count(mu) == 16 * 5 + 5


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['sparse', 'dense'])
def test_init_does_not_consume_callers_params(setup, mode):
  """The caller's base parameters (jax arrays) stay valid and unchanged after a train step:
  `sparse_result(base, state)` and evaluation of the base need them."""
  model, base, roles, indices, batches = setup
  params = {p: jnp.asarray(v) for p, v in base.items()}
  tuner = MaskedFinetuner(
    model.apply, roles, indices, make_config(mode=mode), num_classes=5, total_steps=2, mode=mode
  )
  state, frozen, aux = tuner.init(params)
  state, _ = tuner.train_step(state, frozen, aux, batches[0], jax.random.PRNGKey(0))
  deleted = [p for p, v in params.items() if v.is_deleted()]
  assert not deleted, f"train_step donated the caller's arrays: {deleted[:3]} ..."
  for p, v in params.items():
    np.testing.assert_array_equal(np.asarray(v), base[p])
  tuner.sparse_result(params, state)


@pytest.mark.parametrize('mode', ['sparse', 'dense'])
def test_init_from_numpy_params_puts_everything_on_device(setup, mode):
  """The pipeline hands `init` host (NumPy) parameters. The frozen base must become device
  arrays once, not stay NumPy (which the jitted step would copy to the device at every
  step), and `compose` of the initial state must give back the base."""
  model, base, roles, indices, _ = setup
  tuner = MaskedFinetuner(
    model.apply, roles, indices, make_config(mode=mode), num_classes=5, total_steps=2, mode=mode
  )
  state, frozen, aux = tuner.init(copy_of(base))
  host = [
    p
    for p, v in {**frozen, **tree_lib.flat(state.trainable)}.items()
    if not isinstance(v, jax.Array)
  ]
  assert not host, f'init left NumPy arrays in the state or frozen part: {host[:3]} ...'
  composed = tuner.compose(frozen, aux, state.trainable)
  for p in base:
    np.testing.assert_array_equal(np.asarray(composed[p]), base[p], err_msg=p)
