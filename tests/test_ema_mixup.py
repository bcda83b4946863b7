"""The EMA of the trainable weights and mixup / cutmix in MaskedFinetuner's step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gps_jax import tree as tree_lib
from gps_jax.trainer import MaskedFinetuner

from trainer_setup import SMOOTHING, STEPS, build_setup, copy_of, make_config


@pytest.fixture(scope='module')
def setup():
  return build_setup()


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
