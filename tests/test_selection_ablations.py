"""The paper's selection ablations (Table 6, Fig. 6): selection level, criteria, exclusion,
any K, and scores saved once and selected from many times; each against NumPy or a
hand-written reference."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny import TINY, random_params, tiny_shapes

from gps_jax import config_check, experiment, mask_stats, scoring, selection
from gps_jax import delta as delta_lib
from gps_jax import roles as roles_lib
from gps_jax import scores as scores_lib
from gps_jax import tree as tree_lib
from gps_jax.checkpoint import file_sha256
from gps_jax.config_defaults import experiment_config
from gps_jax.data import splits as splits_lib
from gps_jax.errors import UserError
from gps_jax.models import ViT
from gps_jax.trainer import MaskedFinetuner
from gps_jax.vit_npz import save_vit_npz

# The tiny ViT (width 16, MLP 32, 2 blocks): 16 patch-embedding neurons and 112 per block
# (q, k, v: 3 x 16, out: 16, MLP: 32 + 16), as tests/test_mask_stats.py counts by hand.
NEURONS = 16 + 2 * 112
BLOCK0 = 'Transformer/encoderblock_0/'


@pytest.fixture(scope='module')
def tiny():
  shapes = tiny_shapes()
  params = random_params(shapes)
  roles = roles_lib.assign_roles(shapes)
  select = roles_lib.leaves_with_role(roles, 'select')
  return params, roles, select


def distinct_scores(select, seed=0):
  """Signed scores whose magnitudes are all different over the whole net (no ties)."""
  rng = np.random.default_rng(seed)
  total = sum(r.size for r in select.values())
  mags = (rng.permutation(total) + 1).astype(np.float32) / total
  out, at = {}, 0
  for p, r in select.items():
    m = mags[at : at + r.size].reshape(r.shape)
    out[p] = np.where(rng.random(r.shape) < 0.5, -m, m).astype(np.float32)
    at += r.size
  return out


def ref_layer(score, n):
  """The n flattened positions of the largest |score| (NumPy, ascending)."""
  return np.sort(np.argsort(-np.abs(score).ravel(), kind='stable')[:n])


def ref_net(scores, n):
  """{path: positions}: the global top n of |score| over all leaves (NumPy)."""
  paths = sorted(scores)
  values = np.concatenate([np.abs(scores[p]).ravel() for p in paths])
  owner = np.concatenate([np.full(scores[p].size, i) for i, p in enumerate(paths)])
  pos = np.concatenate([np.arange(scores[p].size) for p in paths])
  top = np.argsort(-values, kind='stable')[:n]
  return {p: np.sort(pos[top][owner[top] == i]) for i, p in enumerate(paths)}


def ref_neuron(score, fan_in_ndim, k):
  fan_in = int(np.prod(score.shape[:fan_in_ndim]))
  rows = np.abs(score).reshape(fan_in, -1).T
  return np.sort(np.argsort(-rows, axis=1, kind='stable')[:, :k], axis=1)


def count(indices):
  return sum(int(np.size(v)) for v in indices.values())


def np_masks(roles, indices):
  """Element masks from the indices, by NumPy scatter into the (fan_in, neurons) view."""
  out = {}
  for p, r in tree_lib.flat(roles).items():
    if r.role == 'select':
      fan_in = int(np.prod(r.shape[: r.fan_in_ndim]))
      m = np.zeros((fan_in, int(np.prod(r.shape[r.fan_in_ndim :]))), bool)
      idx = np.asarray(indices[p])
      m[idx, np.arange(idx.shape[0])[:, None]] = True
      out[p] = m.reshape(r.shape)
    else:
      out[p] = np.full(r.shape, r.role == 'train')
  return out


# ----------------------------------------------------------------------------- levels


@pytest.mark.parametrize('k', [1, 3])
@pytest.mark.parametrize('level', ['neuron', 'layer', 'net'])
def test_levels_select_the_neuron_budget_and_the_top_entries(tiny, level, k):
  _, roles, select = tiny
  scores = distinct_scores(select, seed=k)
  indices, new_roles = selection.select(scores, k, roles, level)
  assert count(indices) == NEURONS * k  # the same entry count at every level
  new = tree_lib.flat(new_roles)
  if level == 'net':
    want = ref_net(scores, NEURONS * k)
  for p, r in select.items():
    if level == 'neuron':
      assert new[p] == r
      np.testing.assert_array_equal(np.asarray(indices[p]), ref_neuron(scores[p], r.fan_in_ndim, k))
      continue
    if level == 'net' and not want[p].size:
      assert p not in indices and new[p].role == 'freeze'
      continue
    # One neuron whose fan-in is the whole tensor; (1, n) positions into the flat tensor.
    assert new[p] == roles_lib.LeafRole(p, 'select', r.shape, len(r.shape))
    got = np.asarray(indices[p])
    assert got.dtype == np.int32 and got.shape[0] == 1
    expect = ref_layer(scores[p], k * r.num_neurons) if level == 'layer' else want[p]
    np.testing.assert_array_equal(got[0], expect, err_msg=p)
  # The dense masks of the selection mark exactly those entries.
  masks = selection.element_masks(indices, new_roles)
  assert sum(int(np.asarray(masks[p]).sum()) for p in select) == NEURONS * k
  want_masks = np_masks(new_roles, indices)
  for p in indices:
    np.testing.assert_array_equal(np.asarray(masks[p]), want_masks[p])


def test_net_level_differs_from_layer_level_and_a_leaf_can_get_nothing(tiny):
  _, roles, select = tiny
  scores = distinct_scores(select, seed=5)
  starved = f'{BLOCK0}MlpBlock_3/Dense_1/kernel'
  scores[starved] = scores[starved] * 1e-3  # far below every other leaf
  boosted = f'{BLOCK0}MlpBlock_3/Dense_0/kernel'
  scores[boosted] = scores[boosted] * 1e3
  indices, new_roles = selection.select(scores, 2, roles, 'net')
  new = tree_lib.flat(new_roles)
  assert starved not in indices and new[starved].role == 'freeze'
  assert indices[boosted].size > 2 * select[boosted].num_neurons  # more than its layer share
  assert count(indices) == 2 * NEURONS
  want = ref_net(scores, 2 * NEURONS)
  assert want[starved].size == 0
  for p in indices:
    np.testing.assert_array_equal(np.asarray(indices[p])[0], want[p])
  # Biases keep their role; the frozen kernel has no trainable entry in the statistics.
  assert new[starved.replace('kernel', 'bias')].role == 'train'
  stats = mask_stats.mask_statistics(new_roles, 2, indices=indices)
  assert stats['leaves'][starved]['trainable'] == 0
  assert stats['selected_entries'] == 2 * NEURONS
  # A resumed run rebuilds the same roles from the indices alone.
  restored = {p: np.asarray(v) for p, v in indices.items()}
  assert selection.roles_after_selection(roles, restored, 'net') == new_roles


def test_mask_statistics_count_the_indices_per_block(tiny):
  _, roles, select = tiny
  scores = distinct_scores(select, seed=7)
  for p in select:
    if p.startswith(BLOCK0):
      scores[p] = scores[p] * 10  # block 0 takes most of the net-level budget
  indices, new_roles = selection.select(scores, 1, roles, 'net')
  stats = mask_stats.mask_statistics(new_roles, 1, indices=indices)
  masks = np_masks(new_roles, indices)
  for block in ('encoderblock_0', 'encoderblock_1', 'embedding', 'head'):
    want = sum(int(m.sum()) for p, m in masks.items() if mask_stats.block_of(p) == block)
    params = sum(m.size for p, m in masks.items() if mask_stats.block_of(p) == block)
    assert stats['blocks'][block]['trainable'] == want, block
    assert stats['blocks'][block]['share_pct'] == pytest.approx(100 * want / params)
  assert stats['blocks']['encoderblock_0']['trainable'] > 112 * 2  # more than its neuron share
  assert stats['trainable'] == sum(int(m.sum()) for m in masks.values())
  # Without the indices a layer/net-level role would count one neuron's K: refused.
  with pytest.raises(ValueError, match='no indices'):
    mask_stats.mask_statistics(new_roles, 1, indices={})


def test_any_k_and_its_limits(tiny):
  _, roles, select = tiny
  scores = distinct_scores(select, seed=1)
  # Fan-in 16 (q, k, v, out): K = 16 is every input of those neurons, 17 too many.
  assert count(selection.select(scores, 16, roles, 'layer')[0]) == 16 * NEURONS
  with pytest.raises(ValueError, match=r'gps\.k=17: .*kernel'):
    selection.select(scores, 17, roles, 'layer')
  with pytest.raises(ValueError, match=r'K=17.*fan-in 16'):
    selection.select(scores, 17, roles, 'neuron')
  # The net level only needs the total: K = 17 fits, since other neurons have more inputs.
  assert count(selection.select(scores, 17, roles, 'net')[0]) == 17 * NEURONS
  total = sum(r.size for r in select.values())
  with pytest.raises(ValueError, match=rf'gps\.k=1000.*{total}'):
    selection.select(scores, 1000, roles, 'net')
  with pytest.raises(ValueError, match='level'):
    selection.select(scores, 1, roles, 'block')


# ----------------------------------------------------------------------------- exclusion


@pytest.mark.parametrize('level', ['neuron', 'layer', 'net'])
def test_exclusion_freezes_exactly_the_matching_leaves(tiny, level):
  _, roles, select = tiny
  scores = distinct_scores(select, seed=3)
  exclude = (r'encoderblock_0/', r'^embedding/')
  matching = [p for p in select if p.startswith((BLOCK0, 'embedding/'))]
  assert len(matching) == 7
  full, _ = selection.select(scores, 2, roles, level)
  indices, new_roles = selection.select(scores, 2, roles, level, exclude)
  new = tree_lib.flat(new_roles)
  for p, r in tree_lib.flat(roles).items():
    if p in matching:
      assert new[p].role == 'freeze' and p not in indices, p
    elif r.role != 'select':
      assert new[p] == r, p  # biases (in the excluded block too), head, norms unchanged
  assert new[f'{BLOCK0}MlpBlock_3/Dense_0/bias'].role == 'train'
  kept = [p for p in select if p not in matching]
  budget = sum(2 * select[p].num_neurons for p in kept)
  assert count(indices) == budget  # the net level's total is that of the kept leaves
  if level == 'net':
    want = ref_net({p: scores[p] for p in kept}, budget)
    for p in kept:
      np.testing.assert_array_equal(np.asarray(indices.get(p, np.zeros((1, 0))))[0], want[p])
  else:  # every other leaf keeps its count and its very entries
    for p in kept:
      np.testing.assert_array_equal(np.asarray(indices[p]), np.asarray(full[p]), err_msg=p)
  assert selection.excluded_leaves(roles, exclude) == matching
  info = selection.selection_summary(roles, new_roles, indices, level, exclude)
  assert info['excluded'] == matching and info['entries'] == budget
  # Excluded leaves need no scores; a regex that finds nothing is a mistake.
  selection.select({p: scores[p] for p in kept}, 2, roles, level, exclude)
  with pytest.raises(ValueError, match=r'gps\.exclude\[0\].*matches no'):
    selection.select(scores, 2, roles, level, (r'encoderblock_9/',))


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
def stage(tmp_path_factory):
  """A tiny backbone (its base on disk), a 16-image split and a config for the stages."""
  root = tmp_path_factory.mktemp('stage')
  shapes = tiny_shapes()
  params = random_params(shapes)
  base_file = str(root / 'base.npz')
  save_vit_npz(base_file, tree_lib.unflat({p: v for p, v in params.items() if 'head/' not in p}))
  model_config = {'name': 'vit', 'variant': '', **TINY, 'mean': (0.5,) * 3, 'std': (0.5,) * 3}
  model = ViT(**TINY)
  roles = roles_lib.assign_roles(shapes)
  bb = experiment.Backbone(
    model,
    model_config,
    5,
    {p: jnp.asarray(v) for p, v in params.items()},
    roles,
    None,
    base_file,
    file_sha256(base_file),
  )
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(16, 8, 8, 3), dtype=np.uint8)
  split = splits_lib.memory_split('toy:train', images, np.arange(16) % 5, 5)
  return {'root': root, 'bb': bb, 'split': split, 'base_file': base_file, 'params': params}


def stage_config(**gps):
  c = experiment_config()
  c.model.image_size = 8
  c.data.name = 'toy'
  c.data.batch_size = 8
  c.gps.batch_size = 8
  c.gps.update(gps)
  return c


def select_stage(stage, config, workdir=None, bb=None):
  return experiment.select_indices(
    config, bb or stage['bb'], stage['split'], jax.random.PRNGKey(1), 7, workdir
  )


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
  step, bb, indices, info = experiment.restore_or_select(
    config, stage['bb'], Restored(fresh), stage['split'], None, 0
  )
  assert step == 4 and info == {'restored_from_step': 4} and set(indices) == set(fresh)
  assert bb.roles == fresh_roles and bb.params is stage['bb'].params
  assert tree_lib.flat(bb.roles)['embedding/kernel'].role == 'freeze'


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


# ----------------------------------------------------------------------------- config


def test_config_check_names_the_selection_keys():
  def check(**gps):
    c = experiment_config()
    c.gps.update(gps)
    config_check.validate(c)

  check(level='net', score='head_ce', exclude=(r'encoderblock_(0|1)/',))
  for gps, match in [
    ({'level': 'block'}, r"^config\.gps\.level='block': use one of neuron, layer, net$"),
    ({'score': 'ce'}, r"^config\.gps\.score='ce': use one of .*head_ce"),
    ({'exclude': ('ok', '(unclosed')}, r"^config\.gps\.exclude\[1\]='\(unclosed': not a regular"),
  ]:
    with pytest.raises(UserError, match=match):
      check(**gps)
