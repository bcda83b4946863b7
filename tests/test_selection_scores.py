"""The paper's selection criteria and score reuse (Table 6): the head + CE criterion against
a hand-written gradient, and scores saved once by a pass and selected from many times
(scores_from, resume)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from selection_refs import (
  BLOCK0,
  NEURONS,
  count,
  make_stage,
  ref_layer,
  ref_net,
  ref_neuron,
  select_stage,
  stage_config,
  tiny_selection,
)
from tiny import TINY

from gps_jax import scoring
from gps_jax import select_stage as select_stage_lib
from gps_jax import roles as roles_lib
from gps_jax import scores as scores_lib
from gps_jax import tree as tree_lib
from gps_jax.checkpoint import file_sha256
from gps_jax.errors import UserError
from gps_jax.models import ViT


@pytest.fixture(scope='module')
def tiny():
  return tiny_selection()


@pytest.fixture(scope='module')
def stage(tmp_path_factory):
  return make_stage(tmp_path_factory.mktemp('stage'))


# ----------------------------------------------------------------------------- head + CE


@pytest.mark.slow
def test_head_ce_scores_are_the_gradient_through_a_random_head(tiny):
  params, roles, select = tiny
  model = ViT(**TINY, drop_path_rate=0.3)
  rng = np.random.default_rng(4)
  b = 6
  batch = {
    'image': rng.normal(size=(2 * b, 8, 8, 3)).astype(np.float32),
    'label': rng.integers(0, 5, size=b).astype(np.int32),
  }
  key = jax.random.PRNGKey(11)
  flat = {p: jnp.asarray(v) for p, v in params.items()}
  x = scoring.ScoreInputs(model.apply, flat, roles, key, lambda: [batch], num_classes=5)
  got, info = scoring.SCORERS['head_ce'](x)
  assert set(got) == set(select) and info['batches'] == 1 and info['images'] == b

  # By hand: a N(0, 0.02^2) head from the first half of the key, drop-path from the second
  # (batch 0: fold_in(., 0)), CE on the first views only.
  head_key, drop_key = jax.random.split(key)
  kernel = 0.02 * jax.random.normal(head_key, (TINY['hidden_size'], 5), jnp.float32)

  def ce(p):
    _, feats = model.apply(
      {'params': tree_lib.unflat(p)},
      batch['image'][:b],
      train=True,
      rngs={'dropout': jax.random.fold_in(drop_key, 0)},
    )
    logp = jax.nn.log_softmax(feats @ kernel)
    return -jnp.mean(logp[jnp.arange(b), batch['label']])

  want = jax.jit(jax.grad(ce))(flat)
  supcon, _ = scoring.accumulate_scores(model.apply, flat, roles, [batch], key)
  for p in select:
    scale = float(np.abs(want[p]).max())
    assert scale > 0, p
    np.testing.assert_allclose(
      np.asarray(got[p]), np.asarray(want[p]), atol=1e-5 * scale, rtol=1e-4
    )
    assert not np.allclose(np.asarray(got[p]), np.asarray(supcon[p]), atol=1e-3 * scale)


# ----------------------------------------------------------------------------- run stages


@pytest.fixture(scope='module')
def saved(stage):
  """A first run's SupCon selection at K=1, neuron level, which saves its scores."""
  workdir = str(stage['root'] / 'first')
  indices, roles, info = select_stage(stage, stage_config(k=1), workdir)
  return {'workdir': workdir, 'indices': indices, 'roles': roles, 'info': info}


@pytest.mark.slow
def test_a_pass_saves_its_scores(stage, saved):
  npz = os.path.join(saved['workdir'], 'scores.npz')
  with open(os.path.join(saved['workdir'], 'scores.json')) as f:
    meta = json.load(f)
  assert meta['source'] == 'supcon' and meta['method'] == 'gps'
  assert meta['base']['sha256'] == file_sha256(stage['base_file'])
  assert meta['selection']['batches'] == 2  # 16 images, batches of 8
  bb = stage['bb']
  select = roles_lib.leaves_with_role(bb.roles, 'select')
  assert meta['shapes'] == {p: list(r.shape) for p, r in select.items()}
  with np.load(npz, allow_pickle=False) as z:
    assert set(z.files) == set(select)
    saved_scores = {p: z[p] for p in z.files}
  assert all(v.dtype == np.float32 for v in saved_scores.values())
  # The saved scores are those the first run selected from (neuron level, K = 1).
  for p, r in select.items():
    np.testing.assert_array_equal(
      np.asarray(saved['indices'][p]), ref_neuron(saved_scores[p], r.fan_in_ndim, 1)
    )
  assert saved['info']['level'] == 'neuron' and saved['info']['entries'] == NEURONS
  # gps.save_scores=False: the same selection, no file.
  workdir = stage['root'] / 'unsaved'
  indices, _, _ = select_stage(stage, stage_config(k=1, save_scores=False), str(workdir))
  assert not (workdir / 'scores.npz').exists() and not (workdir / 'scores.json').exists()
  for p in select:
    np.testing.assert_array_equal(np.asarray(indices[p]), np.asarray(saved['indices'][p]))


@pytest.mark.slow
@pytest.mark.parametrize('level', ['layer', 'net'])
def test_scores_from_selects_as_a_fresh_pass_would(stage, saved, level):
  config = stage_config(k=2, level=level, exclude=(r'encoderblock_1/MlpBlock',))
  fresh, fresh_roles, _ = select_stage(stage, config)  # a new pass, nothing saved
  config.gps.scores_from = saved['workdir']
  reused, reused_roles, info = select_stage(stage, config)
  assert info['scores_from'] == os.path.join(saved['workdir'], 'scores.npz')
  assert info['level'] == level and len(info['excluded']) == 2
  assert set(reused) == set(fresh) and reused_roles == fresh_roles
  for p in fresh:
    np.testing.assert_array_equal(np.asarray(reused[p]), np.asarray(fresh[p]), err_msg=p)
  # And they are the NumPy top entries of the saved scores.
  with np.load(os.path.join(saved['workdir'], 'scores.npz')) as z:
    kept = {p: z[p] for p in z.files if 'encoderblock_1/MlpBlock' not in p}
  select = roles_lib.leaves_with_role(stage['bb'].roles, 'select')
  if level == 'net':
    want = ref_net(kept, sum(2 * select[p].num_neurons for p in kept))
  else:
    want = {p: ref_layer(s, 2 * select[p].num_neurons) for p, s in kept.items()}
  for p in kept:
    np.testing.assert_array_equal(np.asarray(reused.get(p, np.zeros((1, 0))))[0], want[p])


def test_scores_from_refuses_scores_that_do_not_fit(stage, saved, tmp_path):
  bb = stage['bb']
  src = saved['workdir']

  def copy_with(arrays=None, raw=None, meta=None):
    d = tmp_path / f'bad{len(os.listdir(tmp_path))}'
    d.mkdir()
    with np.load(os.path.join(src, 'scores.npz')) as z:
      data = {p: z[p] for p in z.files}
    if raw is not None:
      (d / 'scores.npz').write_bytes(raw)
    else:
      np.savez(d / 'scores.npz', **(arrays(data) if arrays else data))
    with open(os.path.join(src, 'scores.json')) as f:
      m = json.load(f)
    (d / 'scores.json').write_text(json.dumps(meta(m) if meta else m))
    return str(d)

  def load(where, **kw):
    args = {'source': 'supcon', 'base_sha256': bb.base_sha256, 'roles': bb.roles, **kw}
    return scores_lib.load(where, **args)

  assert set(load(src)[0]) == set(roles_lib.leaves_with_role(bb.roles, 'select'))
  leaf = f'{BLOCK0}MlpBlock_3/Dense_0/kernel'
  cases = [
    (copy_with(arrays=lambda a: {**a, leaf: a[leaf].T.copy()}), {}, rf'{leaf}.*shape \(32, 16\)'),
    (copy_with(arrays=lambda a: {p: v for p, v in a.items() if p != leaf}), {}, 'no scores for'),
    (copy_with(raw=b'not a zip file'), {}, 'not a readable scores file'),
    (copy_with(meta=lambda m: {**m, 'format': 'x'}), {}, 'format'),
    (src, {'source': 'head_ce'}, "source 'supcon'.*'head_ce'"),
    (src, {'base_sha256': '0' * 64}, 'sha256'),
    (str(tmp_path / 'nowhere'), {}, 'no scores file'),
  ]
  for where, kw, match in cases:
    with pytest.raises(UserError, match=match) as e:
      load(where, **kw)
    assert '\n' not in str(e.value) and ('scores' in str(e.value))
  # An excluded leaf needs no scores.
  config = stage_config(k=1, scores_from=cases[1][0], exclude=(leaf + '$',))
  indices, roles, _ = select_stage(stage, config)
  assert leaf not in indices and tree_lib.flat(roles)[leaf].role == 'freeze'
  assert count(indices) == NEURONS - 32
  # Through the run's stage: another score source than the saved one.
  config = stage_config(k=1, score='head_ce', scores_from=src)
  with pytest.raises(UserError, match=r"scores\.npz: scores of the source 'supcon'"):
    select_stage(stage, config)


def test_resume_rebuilds_the_roles_from_the_restored_indices(stage, saved):
  class Restored:  # what TrainCheckpoints gives a resumed run
    def __init__(self, indices):
      self.indices = {p: np.asarray(v) for p, v in indices.items()}

    def latest_step(self):
      return 4

    def check_resumable(self, step, config):
      pass

    def restore_indices(self, step):
      return self.indices

  config = stage_config(k=1, level='net', scores_from=saved['workdir'], exclude=('embedding',))
  fresh, fresh_roles, _ = select_stage(stage, config)
  step, bb, indices, info = select_stage_lib.restore_or_select(
    config, stage['bb'], Restored(fresh), stage['split'], None, 0
  )
  assert step == 4 and info == {'restored_from_step': 4} and set(indices) == set(fresh)
  assert bb.roles == fresh_roles and bb.params is stage['bb'].params
  assert tree_lib.flat(bb.roles)['embedding/kernel'].role == 'freeze'
