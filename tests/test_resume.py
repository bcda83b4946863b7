"""Resumable runs: TrainCheckpoints with fit — NaN stops keep the last good step, damage is named."""

import os

import jax
import numpy as np
import pytest

from gps_jax import checkpoint
from gps_jax import metrics
from gps_jax import roles as roles_lib
from gps_jax.config_defaults import experiment_config
from gps_jax.models import ViT
from gps_jax.trainer import MaskedFinetuner, fit

from tiny import TINY, random_params, tiny_shapes


@pytest.fixture(scope='module')
def setup():
  model = ViT(**TINY)
  shapes = tiny_shapes()
  params = random_params(shapes)
  roles = roles_lib.assign_roles(shapes)
  rng = np.random.default_rng(0)
  indices = {
    p: np.sort(rng.permuted(np.tile(np.arange(r.fan_in), (r.num_neurons, 1)), axis=1)[:, :2])
    for p, r in roles_lib.leaves_with_role(roles, 'select').items()
  }
  indices = {p: v.astype(np.int32) for p, v in indices.items()}
  batches = [
    {
      'image': rng.normal(size=(4, 8, 8, 3)).astype(np.float32),
      'label': rng.integers(0, 5, size=4).astype(np.int32),
    }
    for _ in range(20)
  ]
  return model, params, roles, indices, batches


def _tuner(setup, steps=20):
  model, _, roles, indices, _ = setup
  cfg = experiment_config()
  cfg.optim.lr = 1e-2
  return MaskedFinetuner(model.apply, roles, indices, cfg, num_classes=5, total_steps=steps)


def _fit(setup, ckpts, batches, start=0, log=None, log_every=100):
  tuner = _tuner(setup)
  return fit(
    tuner,
    setup[1],
    iter(batches[start:]),
    20,
    jax.random.PRNGKey(0),
    log_every=log_every,
    log=log,
    restore=(lambda t: ckpts.restore_state(start, t)) if start else None,
    save=lambda step, state: ckpts.save(step, state, setup[3], {'step': step}),
    save_every=5,
  )


def test_resume_from_a_middle_step_equals_an_uninterrupted_run(setup, tmp_path):
  import shutil

  full = checkpoint.TrainCheckpoints(str(tmp_path / 'full'), keep=10)
  want = _fit(setup, full, setup[4])['state']
  full.close()
  # What a run killed after step 10 leaves behind: the steps up to 10.
  for step in ('5', '10'):
    shutil.copytree(tmp_path / 'full' / step, tmp_path / 'killed' / step)
  part = checkpoint.TrainCheckpoints(str(tmp_path / 'killed'), keep=10)
  assert part.latest_step() == 10
  got = _fit(setup, part, setup[4], start=10)['state']
  part.close()
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6),
    got.trainable,
    want.trainable,
  )
  assert int(got.step) == 20


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(setup, tmp_path):
  batches = [dict(b) for b in setup[4]]
  batches[13] = {**batches[13], 'image': np.full_like(batches[13]['image'], np.nan)}  # step 14
  ckpts = checkpoint.TrainCheckpoints(str(tmp_path / 'nan'))
  with pytest.raises(FloatingPointError, match=r'loss is nan at step 15.*last checkpoint'):
    _fit(setup, ckpts, batches)
  assert ckpts.latest_step() == 10
  state = ckpts.restore_state(10, _tuner(setup).init(setup[1])[0])
  assert int(state.step) == 10
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.trainable))
  assert ckpts.restore_indices(10).keys() == setup[3].keys()
  ckpts.close()


def test_a_damaged_step_is_named_and_earlier_steps_stay_readable(setup, tmp_path):
  ckpts = checkpoint.TrainCheckpoints(str(tmp_path / 'bad'), keep=3)
  _fit(setup, ckpts, setup[4])
  assert ckpts.latest_step() == 20
  for root, _, files in os.walk(tmp_path / 'bad' / '20' / 'state'):
    for f in files:
      with open(os.path.join(root, f), 'wb') as fh:
        fh.write(b'garbage')
  target = _tuner(setup).init(setup[1])[0]
  with pytest.raises(
    ValueError, match=r'cannot restore the checkpoint of step 20 in .*bad.*\[10, 15\]'
  ):
    ckpts.restore_state(20, target)
  assert int(ckpts.restore_state(15, target).step) == 15
  ckpts.close()


def test_metrics_jsonl_has_every_logged_step_and_a_resumed_run_appends(setup, tmp_path):
  """A run that dies of a NaN at step 15 and is resumed from its step-10 checkpoint leaves
  one metrics.jsonl whose train records are those of an uninterrupted run."""
  whole = tmp_path / 'whole'
  whole.mkdir()
  ckpts = checkpoint.TrainCheckpoints(str(whole / 'ckpt'), keep=10)
  _fit(setup, ckpts, setup[4], log=metrics.MetricsLog(str(whole)), log_every=5)
  ckpts.close()
  want = [r for r in metrics.read(str(whole)) if r['kind'] == 'train']
  assert [r['step'] for r in want] == [5, 10, 15, 20]
  assert all(set(r) >= {'loss', 'accuracy', 'lr', 'images_per_s', 'time'} for r in want)

  run = tmp_path / 'resumed'
  run.mkdir()
  batches = [dict(b) for b in setup[4]]
  batches[13] = {**batches[13], 'image': np.full_like(batches[13]['image'], np.nan)}
  ckpts = checkpoint.TrainCheckpoints(str(run / 'ckpt'), keep=10)
  with pytest.raises(FloatingPointError):
    _fit(setup, ckpts, batches, log=metrics.MetricsLog(str(run)), log_every=5)
  _fit(setup, ckpts, setup[4], start=10, log=metrics.MetricsLog(str(run)), log_every=5)
  ckpts.close()
  got = [r for r in metrics.read(str(run)) if r['kind'] == 'train']
  assert [r['step'] for r in got] == [5, 10, 15, 20]
  for g, w in zip(got, want):
    assert g['loss'] == pytest.approx(w['loss'], abs=1e-5) and g['lr'] == pytest.approx(w['lr'])
  # A line cut off by a kill mid-write is skipped; a bad line in the middle is an error.
  path = run / metrics.FILENAME
  with open(path, 'a') as f:
    f.write('{"kind": "train", "st')
  assert len(metrics.read(str(path))) == len(got)
  with open(path, 'a') as f:
    f.write('\n{"kind": "train"}\n')
  with pytest.raises(ValueError, match='metrics.jsonl: a line that is not JSON'):
    metrics.read(str(path))
