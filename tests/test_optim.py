"""config.optim -> optax: Adam / AdamW / SGD steps and weight-decay rules against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gps_jax import optim
from gps_jax.config_defaults import experiment_config

LR, WD = 0.1, 0.05
B1, B2, EPS = 0.8, 0.99, 1e-3  # not optax's defaults: proves optim.py reads them
NO_DECAY_BIASES = ((r'(^|/)bias$', 0.0), (r'^head/', 0.5), ('.*', 1.0))


def _cfg(name='adamw', wd=WD, rules=(('.*', 1.0),), **kw):
  c = experiment_config().optim
  c.name, c.lr, c.weight_decay, c.weight_decay_rules = name, LR, wd, rules
  c.b1, c.b2, c.eps = B1, B2, EPS
  for k, v in kw.items():
    c[k] = v
  return c


def _run(tx, params, grads_seq, decay_params=None):
  """Steps of `tx`; decay_params(params) is what the optimizer gets as `params`."""
  state = tx.init(params)
  for g in grads_seq:
    dp = decay_params(params) if decay_params else params
    updates, state = tx.update(g, state, dp)
    params = optax.apply_updates(params, updates)
  return jax.tree.map(np.asarray, params)


def _adamw_numpy(p, d, grads, mult):
  """Decoupled AdamW by hand: p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * mult * d)."""
  p = np.array(p, np.float64)
  m = v = np.zeros_like(p)
  for t, g in enumerate(grads, 1):
    g = np.asarray(g, np.float64)
    m = B1 * m + (1 - B1) * g
    v = B2 * v + (1 - B2) * g * g
    u = (m / (1 - B1**t)) / (np.sqrt(v / (1 - B2**t)) + EPS)
    decay_of = d(p) if callable(d) else p
    p = p - LR * (u + WD * mult * decay_of)
  return p


def _leaves():
  rng = np.random.default_rng(0)
  params = {
    'enc/dense/kernel': rng.normal(size=(3, 4)).astype(np.float32),
    'enc/dense/bias': rng.normal(size=(4,)).astype(np.float32),
    'head/kernel': rng.normal(size=(4, 2)).astype(np.float32),
  }
  grads = [
    {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()} for _ in range(3)
  ]
  return params, grads


def test_zero_gradient_step_is_pure_decoupled_decay():
  # With a zero gradient Adam's direction is 0/(0+eps) = 0: only the decay moves p.
  params, _ = _leaves()
  tx = optim.optimizer(_cfg(rules=NO_DECAY_BIASES), LR)
  zeros = {k: np.zeros_like(v) for k, v in params.items()}
  got = _run(tx, params, [zeros])
  k = params['enc/dense/kernel']
  np.testing.assert_allclose(got['enc/dense/kernel'], k - LR * WD * k, rtol=1e-6)
  np.testing.assert_array_equal(got['enc/dense/bias'], params['enc/dense/bias'])  # no decay
  h = params['head/kernel']
  np.testing.assert_allclose(got['head/kernel'], h - LR * WD * 0.5 * h, rtol=1e-6)


def test_adamw_with_rules_matches_numpy_dense_tree():
  params, grads = _leaves()
  got = _run(optim.optimizer(_cfg(rules=NO_DECAY_BIASES), LR), params, grads)
  mults = {'enc/dense/kernel': 1.0, 'enc/dense/bias': 0.0, 'head/kernel': 0.5}
  for p, m in mults.items():
    want = _adamw_numpy(params[p], None, [g[p] for g in grads], m)
    np.testing.assert_allclose(got[p], want, rtol=2e-5, atol=1e-6, err_msg=p)


def test_sparse_tree_paths_drop_the_train_delta_keys_and_decay_effective_values():
  # The sparse rule's state: trained leaves and (neurons, K) deltas; the optimizer
  # gets base + delta as `params`, so decay pulls the effective weight to zero.
  rng = np.random.default_rng(1)
  base = rng.normal(size=(5, 2)).astype(np.float32)  # base values at the selected entries
  state = {
    'train': {'enc/dense/bias': rng.normal(size=(4,)).astype(np.float32),
              'head/kernel': rng.normal(size=(4, 2)).astype(np.float32)},
    'delta': {'enc/dense/kernel': np.zeros((5, 2), np.float32)},
  }  # fmt: skip
  grads = [
    jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), state) for _ in range(2)
  ]

  def effective(s):
    return {
      'train': s['train'],
      'delta': {'enc/dense/kernel': base + s['delta']['enc/dense/kernel']},
    }

  # '^head/' only matches when 'train' is not part of the path; '^train' never matches.
  rules = ((r'^train', 7.0), (r'(^|/)bias$', 0.0), (r'^head/', 0.5), ('.*', 1.0))
  got = _run(optim.optimizer(_cfg(rules=rules), LR), state, grads, effective)
  for group, p, m, d in (
    ('train', 'enc/dense/bias', 0.0, None),
    ('train', 'head/kernel', 0.5, None),
    ('delta', 'enc/dense/kernel', 1.0, lambda x: base + x),
  ):
    want = _adamw_numpy(state[group][p], d, [g[group][p] for g in grads], m)
    np.testing.assert_allclose(got[group][p], want, rtol=2e-5, atol=1e-6, err_msg=p)


def test_rules_inside_optax_masked_as_the_dense_rule_wraps_them():
  # updates.DenseMasked wraps the optimizer in optax.masked (frozen leaves keep no state).
  params, grads = _leaves()
  has_entries = {'enc/dense/kernel': True, 'enc/dense/bias': True, 'head/kernel': False}
  tx = optax.masked(optim.optimizer(_cfg(rules=NO_DECAY_BIASES), LR), has_entries)
  got = _run(tx, params, grads)
  for p, m in (('enc/dense/kernel', 1.0), ('enc/dense/bias', 0.0)):
    want = _adamw_numpy(params[p], None, [g[p] for g in grads], m)
    np.testing.assert_allclose(got[p], want, rtol=2e-5, atol=1e-6, err_msg=p)


def test_default_rules_are_bit_identical_to_optax_adamw():
  # Existing configs (decay everything) must train exactly as before the rules.
  params, grads = _leaves()
  lr = optax.linear_schedule(0.1, 0.01, 3)
  c = _cfg()
  assert tuple(map(tuple, experiment_config().optim.weight_decay_rules)) == (('.*', 1.0),)
  got = _run(optim.optimizer(c, lr), params, grads)
  want = _run(optax.adamw(lr, b1=B1, b2=B2, eps=EPS, weight_decay=WD), params, grads)
  for p in params:
    np.testing.assert_array_equal(got[p], want[p], err_msg=p)


def test_sgd_couples_the_rule_scaled_decay_into_the_gradient():
  params, grads = _leaves()
  got = _run(optim.optimizer(_cfg('sgd', rules=NO_DECAY_BIASES, momentum=0.7), LR), params, grads)
  mults = {'enc/dense/kernel': 1.0, 'enc/dense/bias': 0.0, 'head/kernel': 0.5}
  for p, m in mults.items():
    x, trace = params[p].astype(np.float64), 0.0
    for g in grads:
      trace = 0.7 * trace + g[p] + WD * m * x  # optax.sgd: trace = g + momentum * trace
      x = x - LR * trace
    np.testing.assert_allclose(got[p], x, rtol=2e-5, atol=1e-6, err_msg=p)


def test_a_path_without_a_rule_is_an_error_at_init():
  params, _ = _leaves()
  tx = optim.optimizer(_cfg(rules=((r'kernel$', 1.0),)), LR)
  with pytest.raises(ValueError, match="matches parameter 'enc/dense/bias'"):
    tx.init(params)


def test_schedule_reads_warmup_and_end_lr():
  c = _cfg(warmup_init_lr=0.01, end_lr=0.002)
  lr = optim.schedule(c, total_steps=20, warmup_steps=5)
  np.testing.assert_allclose([lr(0), lr(5), lr(20)], [0.01, LR, 0.002], rtol=1e-6)


def test_unknown_optimizer_is_an_error():
  with pytest.raises(ValueError, match="config.optim.name='lamb'"):
    optim.optimizer(_cfg('lamb'), LR)


def test_jitted_update_with_rules():
  # The multipliers are Python floats resolved while tracing: the step jits.
  params, grads = _leaves()
  tx = optim.optimizer(_cfg(rules=NO_DECAY_BIASES), LR)
  state = tx.init(params)
  step = jax.jit(lambda g, s, p: tx.update(g, s, p))
  updates, _ = step(grads[0], state, params)
  eager, _ = tx.update(grads[0], state, params)
  for p in params:
    np.testing.assert_allclose(updates[p], eager[p], rtol=1e-6, err_msg=p)
  assert jnp.asarray(updates['enc/dense/bias']).dtype == jnp.float32


# ---------------------------------------------------------------- lr schedules

PEAK, WARMUP_LR, MIN_LR = 3e-3, 1e-7, 1e-8  # the reference's --lr (cub), --warmup-lr, --min-lr


def _schedule_cfg(name):
  c = experiment_config().optim
  c.lr, c.warmup_init_lr, c.end_lr, c.schedule = PEAK, WARMUP_LR, MIN_LR, name
  return c


def _timm_epoch_lrs(epochs, warmup, cooldown):
  """The lr of every epoch as train_gps.py on timm ran it: timm's CosineLRScheduler with
  create_scheduler's arguments (cycle_limit 1, no noise, k_decay 1, no warm-up prefix),
  the lr read during each epoch and `step(epoch + 1)` at its end."""
  torch = pytest.importorskip('torch')
  scheduler = pytest.importorskip('timm.scheduler')
  opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=PEAK)
  sched = scheduler.CosineLRScheduler(
    opt, t_initial=epochs, lr_min=MIN_LR, warmup_t=warmup, warmup_lr_init=WARMUP_LR,
    cycle_mul=1.0, cycle_decay=0.5, cycle_limit=1, k_decay=1.0, noise_range_t=None,
    t_in_epochs=True,
  )  # fmt: skip
  num_epochs = sched.get_cycle_length() + cooldown  # create_scheduler's count
  lrs = []
  for epoch in range(num_epochs):
    lrs.append(opt.param_groups[0]['lr'])
    sched.step_update(num_updates=(epoch + 1) * 3)  # a no-op for t_in_epochs=True
    sched.step(epoch + 1)
  return np.array(lrs)


@pytest.mark.parametrize(
  'epochs,warmup,cooldown,steps_per_epoch',
  [(100, 10, 10, 7), (100, 10, 10, 1), (30, 3, 5, 4), (20, 0, 2, 3)],
)
def test_timm_epoch_cosine_matches_timms_scheduler(epochs, warmup, cooldown, steps_per_epoch):
  want = _timm_epoch_lrs(epochs, warmup, cooldown)
  assert len(want) == epochs + cooldown  # the reference trains the cooldown epochs too
  lr = optim.schedule(
    _schedule_cfg('timm_epoch_cosine'), total_steps=epochs * steps_per_epoch,
    warmup_steps=warmup * steps_per_epoch, steps_per_epoch=steps_per_epoch,
  )  # fmt: skip
  # Every step of an epoch has that epoch's lr, through the cooldown epochs at MIN_LR.
  steps = np.arange((epochs + cooldown) * steps_per_epoch)
  got = np.asarray(lr(steps))
  np.testing.assert_allclose(got, np.repeat(want, steps_per_epoch), rtol=1e-6, atol=0)
  assert np.all(got[epochs * steps_per_epoch :] == np.float32(MIN_LR))
  assert float(jax.jit(lr)(jnp.int32(10**6))) == np.float32(MIN_LR)  # long after the end
  # One lr per epoch: as the optimizer's count (an int32 array) under jit.
  k = min(warmup, epochs - 1) * steps_per_epoch + steps_per_epoch - 1
  assert float(jax.jit(lr)(jnp.int32(k))) == got[k]


def test_the_two_schedules_at_the_issue_epochs():
  # 100 epochs, 10 of warm-up: timm's per-epoch cosine from epoch 0 against the per-step
  # cosine after the warm-up, at the start of epochs 10 / 50 / 90.
  spe = 50
  timm_lr = optim.schedule(_schedule_cfg('timm_epoch_cosine'), 100 * spe, 10 * spe, spe)
  step_lr = optim.schedule(_schedule_cfg('warmup_cosine'), 100 * spe, 10 * spe)
  at = np.array([10, 50, 90]) * spe
  np.testing.assert_allclose(np.asarray(timm_lr(at)) / PEAK, [0.976, 0.500, 0.024], atol=6e-4)
  np.testing.assert_allclose(np.asarray(step_lr(at)) / PEAK, [1.000, 0.587, 0.030], atol=6e-4)


def test_default_schedule_is_optax_warmup_cosine_bit_for_bit():
  # The demo and every non-paper config keep this schedule: the same numbers as before.
  c = experiment_config().optim
  assert c.schedule == 'warmup_cosine'
  c.lr = PEAK
  lr = optim.schedule(c, total_steps=40, warmup_steps=8, steps_per_epoch=4)
  want = optax.warmup_cosine_decay_schedule(c.warmup_init_lr, PEAK, 8, 40, c.end_lr)
  steps = jnp.arange(60)  # past total_steps: the cooldown at end_lr
  np.testing.assert_array_equal(np.asarray(lr(steps)), np.asarray(want(steps)))
  assert float(lr(55)) == np.float32(c.end_lr)


def test_schedule_errors():
  with pytest.raises(ValueError, match='steps per epoch'):
    optim.schedule(_schedule_cfg('timm_epoch_cosine'), 100, 10)
  with pytest.raises(ValueError, match="config.optim.schedule='step'"):
    optim.schedule(_schedule_cfg('step'), 100, 10)
