"""Tests of gps_jax.sparse and the MaskedFinetuner (sparse and dense modes)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gps_jax import methods
from gps_jax import roles as roles_lib
from gps_jax import tree as tree_lib
from gps_jax import sparse
from gps_jax.config_defaults import experiment_config
from gps_jax.models import ViT
from gps_jax.trainer import MaskedFinetuner

from tiny import TINY, random_params

K = 2
STEPS = 10
# Adam eps 1e-4: the key bias has an exactly-zero true gradient (softmax is shift-invariant),
# and with eps 1e-8 Adam would blow its rounding noise (~1e-9) up to full-size steps.
LR, WD, EPS, B1, B2, SMOOTHING = 1e-2, 0.1, 1e-4, 0.9, 0.999, 0.1


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


def random_indices(rng, fan_in, neurons, k):
  return np.stack([np.sort(rng.choice(fan_in, k, replace=False)) for _ in range(neurons)]).astype(
    np.int32
  )


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


# ----------------------------------------------------------------------------
# A tiny run in both modes
# ----------------------------------------------------------------------------
def make_config(method='gps', mode='sparse'):
  cfg = experiment_config()
  cfg.method = method
  cfg.optim.name = 'adamw'
  cfg.optim.lr = LR
  cfg.optim.weight_decay = WD
  cfg.optim.eps = EPS
  cfg.optim.b1 = B1
  cfg.optim.b2 = B2
  cfg.optim.end_lr = 0.0
  cfg.optim.grad_clip_norm = 0.0
  cfg.train.update_mode = mode
  cfg.train.label_smoothing = SMOOTHING
  return cfg


def make_batches(num, b, seed=0):
  rng = np.random.default_rng(seed)
  return [
    {
      'image': rng.normal(size=(b, 8, 8, 3)).astype(np.float32),
      'label': rng.integers(0, 5, size=b).astype(np.int32),
    }
    for _ in range(num)
  ]


@pytest.fixture(scope='module')
def setup():
  model = ViT(**TINY)
  shapes = jax.eval_shape(
    lambda r: model.init(r, jnp.zeros((1, 8, 8, 3)), train=False), jax.random.PRNGKey(0)
  )['params']
  base = random_params(shapes)
  roles = roles_lib.assign_roles(shapes)
  rng = np.random.default_rng(1)
  indices = {
    p: random_indices(rng, r.fan_in, r.num_neurons, K)
    for p, r in roles_lib.leaves_with_role(roles, 'select').items()
  }
  return model, base, roles, indices, make_batches(STEPS, 8)


def copy_of(base):
  return {p: np.array(v, copy=True) for p, v in base.items()}


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


# ----------------------------------------------------------------------------
# EMA of the trainable weights, mixup / cutmix in the step
# ----------------------------------------------------------------------------
def _tuner(setup, mode='sparse', **train_overrides):
  model, _, roles, sel, _ = setup
  cfg = make_config(mode=mode)
  cfg.train.update(train_overrides)
  return MaskedFinetuner(
    model.apply,
    roles,
    {p: jnp.asarray(v) for p, v in sel.items()},
    cfg,
    num_classes=5,
    total_steps=STEPS,
    mode=mode,
  )


@pytest.mark.parametrize('mode', ['sparse', 'dense'])
def test_ema_follows_the_recurrence_and_does_not_change_training(setup, mode):
  _, base, _, _, batches = setup
  decay = 0.8
  tuner = _tuner(setup, mode, ema_decay=decay)
  plain = _tuner(setup, mode)
  state, frozen, aux = tuner.init(copy_of(base))
  pstate, _, _ = plain.init(copy_of(base))
  rng = jax.random.PRNGKey(3)
  # NumPy recurrence over the trainable values seen after every step.
  want = jax.tree.map(lambda v: np.asarray(v, np.float64), state.trainable)
  for b in batches[:4]:
    state, _ = tuner.train_step(state, frozen, aux, b, rng)
    pstate, _ = plain.train_step(pstate, frozen, aux, b, rng)
    want = jax.tree.map(lambda w, v: decay * w + (1 - decay) * np.asarray(v), want, state.trainable)
  jax.tree.map(
    lambda e, w: np.testing.assert_allclose(np.asarray(e), w, rtol=1e-5, atol=1e-6), state.ema, want
  )
  # The EMA is a passenger: the trained weights are those of a run without it.
  jax.tree.map(
    lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
    state.trainable,
    pstate.trainable,
  )
  assert pstate.ema is None
  head = tuner.compose_jit(frozen, aux, state.trainable)['head/kernel']
  head_ema = tuner.compose_jit(frozen, aux, state.ema)['head/kernel']
  assert not np.allclose(np.asarray(head), np.asarray(head_ema))
  # Evaluating with ema=True uses the EMA weights.
  batch = {**batches[0], 'mask': np.ones(8, bool)}
  params_ema = tuner.compose_jit(frozen, aux, state.ema)
  logits, _ = setup[0].apply({'params': tree_lib.unflat(params_ema)}, batch['image'], train=False)
  want_acc = float(np.mean(np.asarray(logits).argmax(-1) == batch['label']))
  assert tuner.evaluate(frozen, aux, state, [batch], ema=True) == pytest.approx(want_acc)
  with pytest.raises(ValueError, match='ema_decay'):
    plain.evaluate(frozen, aux, pstate, [batch], ema=True)


def test_bad_ema_decay_is_an_error(setup):
  with pytest.raises(ValueError, match=r'config.train.ema_decay=1.0'):
    _tuner(setup, ema_decay=1.0)


def test_mixing_with_probability_zero_is_the_plain_smoothed_step(setup):
  """mix_prob 0: targets are the smoothed one-hots, i.e. the unmixed step's loss."""
  _, base, _, _, batches = setup
  mixed = _tuner(setup, mixup=0.8, cutmix=1.0, mix_prob=0.0)
  plain = _tuner(setup)
  state, frozen, aux = mixed.init(copy_of(base))
  pstate, _, _ = plain.init(copy_of(base))
  _, m = mixed.train_step(state, frozen, aux, batches[0], jax.random.PRNGKey(3))
  _, pm = plain.train_step(pstate, frozen, aux, batches[0], jax.random.PRNGKey(3))
  assert float(m['loss']) == pytest.approx(float(pm['loss']), rel=1e-5)


def test_mixing_changes_the_loss_to_the_mixed_targets_loss(setup):
  """mixup only, prob 1: the step's loss is the CE against timm's mixed, smoothed targets."""
  from gps_jax.losses import cross_entropy
  from gps_jax.mixup import mix_batch

  model, base, _, _, batches = setup
  tuner = _tuner(setup, mixup=0.8, cutmix=0.0, mix_prob=1.0)
  state, frozen, aux = tuner.init(copy_of(base))
  rng = jax.random.PRNGKey(3)
  _, m = tuner.train_step(state, frozen, aux, batches[0], rng)
  # The step folds in the step number, splits off the mixing key, and mixes with it.
  _, rng_mix = jax.random.split(jax.random.fold_in(rng, 0))
  images, targets = mix_batch(
    rng_mix,
    jnp.asarray(batches[0]['image']),
    jnp.asarray(batches[0]['label']),
    5,
    mixup_alpha=0.8,
    cutmix_alpha=0.0,
    label_smoothing=SMOOTHING,
  )
  params = tree_lib.unflat({p: jnp.asarray(v) for p, v in base.items()})
  logits, _ = model.apply({'params': params}, images, train=False)  # TINY has no dropout.
  want = float(cross_entropy(logits, targets, 5).mean())
  assert float(m['loss']) == pytest.approx(want, rel=1e-4)
  assert not np.allclose(np.asarray(targets).max(-1), 1 - SMOOTHING + SMOOTHING / 5)
