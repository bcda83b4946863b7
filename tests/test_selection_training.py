"""Training a layer- or net-level selection (the paper's Table 6 ablations): the sparse
step changes exactly the selected entries, the delta it writes applies to its base, and a
run's mask statistics count the entries of that delta."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from selection_refs import distinct_scores, make_stage, np_masks, stage_config
from tiny import TINY

from gps_jax import delta as delta_lib
from gps_jax import experiment, selection
from gps_jax import roles as roles_lib
from gps_jax import tree as tree_lib
from gps_jax.data import splits as splits_lib
from gps_jax.trainer import MaskedFinetuner


@pytest.fixture(scope='module')
def stage(tmp_path_factory):
  return make_stage(tmp_path_factory.mktemp('stage'))


# ----------------------------------------------------------------------------- training


@pytest.mark.slow
@pytest.mark.parametrize('level,exclude', [('layer', ()), ('net', (r'encoderblock_1/',))])
def test_sparse_training_of_a_level_selection_and_its_delta(stage, tmp_path, level, exclude):
  bb = stage['bb']
  base = stage['params']
  scores = distinct_scores(roles_lib.leaves_with_role(bb.roles, 'select'), seed=9)
  indices, roles = selection.select(scores, 2, bb.roles, level, exclude)
  config = stage_config(k=2, level=level, exclude=exclude)
  config.optim.lr = 1e-2
  config.optim.warmup_epochs = 0
  tuner = MaskedFinetuner(bb.model.apply, roles, indices, config, num_classes=5, total_steps=4)
  assert tuner.mode == 'sparse'
  state, frozen, aux = tuner.init(base)
  rng = np.random.default_rng(2)
  for _ in range(4):
    batch = {
      'image': rng.normal(size=(8, 8, 8, 3)).astype(np.float32),
      'label': rng.integers(0, 5, size=8).astype(np.int32),
    }
    state, _ = tuner.train_step(state, frozen, aux, batch, jax.random.PRNGKey(0))
  final = {p: np.asarray(v) for p, v in tuner.compose_jit(frozen, aux, state.trainable).items()}
  masks = np_masks(roles, indices)
  bits = lambda a: np.asarray(a, np.float32).view(np.uint32)
  for p, r in tree_lib.flat(roles).items():
    m = masks[p]
    np.testing.assert_array_equal(bits(final[p])[~m], bits(base[p])[~m], err_msg=p)
    if r.role == 'select':
      assert np.all(final[p][m] != base[p][m]), p
  frozen_kernels = [
    p for p, r in tree_lib.flat(roles).items() if r.role == 'freeze' and 'kernel' in p
  ]
  assert len(frozen_kernels) == (6 if exclude else 0)  # the excluded block's kernels

  # The delta the run writes applies to its base and gives the trained model.
  workdir = str(tmp_path / 'run')
  experiment.write_delta(config, dataclasses.replace(bb, roles=roles), tuner, state, workdir)
  d = delta_lib.load(os.path.join(workdir, 'checkpoint'))
  assert set(d.indices) == set(indices)
  applied = delta_lib.apply_delta(d, stage['base_file'])
  assert set(applied) == set(final)
  for p, v in final.items():
    np.testing.assert_allclose(applied[p], v, rtol=0, atol=1e-6, err_msg=p)


@pytest.mark.slow
def test_run_writes_the_mask_statistics_of_its_selection(stage, tmp_path, monkeypatch):
  """experiment.run at the net level with an excluded block: mask_stats.json (written after
  the selection) counts the entries of the delta it saves. Random scores (no pass over the
  data) are not saved: they cost less to draw again than to store."""
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, size=(16, 8, 8, 3), dtype=np.uint8)
  monkeypatch.setattr(splits_lib, 'num_classes', lambda data: 5)
  monkeypatch.setattr(
    splits_lib,
    'open_split',
    lambda data, role: splits_lib.memory_split(f'toy:{role}', images, np.arange(16) % 5, 5),
  )
  c = stage_config(k=1, level='net', exclude=(r'encoderblock_1/',), score='random')
  c.model.update({k: v for k, v in TINY.items() if k != 'num_classes'}, variant='')
  c.data.val_split = ''
  c.data.eval_batch_size = 8
  c.train.steps = 2
  c.optim.warmup_epochs = 0
  workdir = tmp_path / 'run'
  results, _ = experiment.run(c, str(workdir))
  with open(workdir / 'mask_stats.json') as f:
    stats = json.load(f)
  d = delta_lib.load(str(workdir / 'checkpoint'))
  entries = sum(v.size for v in d.indices.values())
  assert entries == stats['selected_entries'] == 16 + 112  # the neurons not excluded, K = 1
  assert stats['level'] == 'net' and results['selection']['level'] == 'net'
  assert not any('encoderblock_1/' in p for p in d.indices)
  assert stats['blocks']['encoderblock_1']['trainable'] == 112  # its biases only
  assert results['trainable'] == stats['trainable']
  assert not (workdir / 'scores.npz').exists()
