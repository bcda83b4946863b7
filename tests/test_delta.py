"""Delta manifests and tools (gps_jax.delta): checked against NumPy references."""

import collections
import dataclasses
import datetime
import json
import os

import numpy as np
import pytest
from cli_run import REPO
from delta_env import (
  K,
  MODEL,
  assert_params,
  make_manifest,
  make_result,
  np_scatter,
  reference_apply,
  save_at,
  sha_of,
)

from gps_jax import checkpoint
from gps_jax import delta as delta_lib
from gps_jax.vit_npz import save_vit_npz


# ----------------------------------------------------------------------------- manifest


def test_manifest_is_written_next_to_the_checkpoint_and_read_back(env):
  result = make_result(env, 1)
  path = save_at(env, 'm', result)
  assert os.path.isfile(path + '.manifest.json') and os.path.isdir(path)
  m = checkpoint.load_manifest(path)
  assert m == checkpoint.load_manifest(path + '.manifest.json')
  assert m['format'] == 'gps_jax.delta/1' and m['method'] == 'gps' and m['k'] == K
  assert m['base'] == {'path': os.path.abspath(env['base_file']), 'sha256': sha_of(env['base_file'])}
  assert m['model']['hidden_size'] == 16 and m['model']['mean'] == [0.5, 0.5, 0.5]
  assert m['fan_in_ndim'] == {p: r.fan_in_ndim for p, r in env['select'].items()}
  assert (
    m['fan_in_ndim']['Transformer/encoderblock_0/MultiHeadDotProductAttention_1/out/kernel'] == 2
  )
  assert m['shapes']['embedding/kernel'] == [4, 4, 3, 16]
  datetime.datetime.fromisoformat(m['created'])
  # load_delta is unchanged.
  loaded = checkpoint.load_delta(path)
  for part in checkpoint.PARTS:
    assert sorted(loaded[part]) == sorted(result[part])

  # A save without a manifest removes the stale one; load_manifest names the file.
  checkpoint.save_delta(path, result)
  assert not os.path.exists(path + '.manifest.json')
  with pytest.raises(FileNotFoundError, match=r'm\.manifest\.json'):
    checkpoint.load_manifest(path)
  old = delta_lib.inspect_delta(delta_lib.load(path, require_manifest=False))
  assert (old['method'], old['k'], old['total']['bytes']) == (None, K, 5140)
  with open(path + '.manifest.json', 'w') as f:
    f.write('{"format": "gps_jax.delta/1", "method"')
  with pytest.raises(ValueError, match=r'm\.manifest\.json.*not a valid JSON'):
    checkpoint.load_manifest(path)
  with open(path + '.manifest.json', 'w') as f:
    json.dump({'format': 'gps_jax.delta/1', 'method': 'gps'}, f)
  with pytest.raises(ValueError, match=r"m\.manifest\.json: the manifest lacks \['k'"):
    checkpoint.load_manifest(path)
  with pytest.raises(ValueError, match='fan_in_ndim'):  # must name exactly the delta leaves
    bad = make_manifest(env)
    bad['fan_in_ndim'].pop('embedding/kernel')
    bad['shapes'].pop('embedding/kernel')
    checkpoint.save_delta(path, result, bad)


# ----------------------------------------------------------------------------- apply


def test_apply_equals_a_numpy_scatter_and_writes_a_dense_npz(env, tmp_path):
  result = make_result(env, 2)
  d = delta_lib.load(save_at(env, 'a', result))
  params = delta_lib.apply_delta(d, env['base_file'])
  ref = reference_apply(env, result)
  assert_params(params, ref)
  assert params['head/kernel'].shape == (16, 5)
  out = str(tmp_path / 'tuned.npz')
  delta_lib.write_npz(out, params)
  with np.load(out, allow_pickle=False) as npz:
    assert_params({k: npz[k] for k in npz.files}, ref)


def test_apply_to_a_loaded_base_serves_any_class_count_and_leaves_it_unchanged(env):
  result = make_result(env, 12)
  d = delta_lib.load(save_at(env, 'to', result))
  # One base in memory, loaded with a head of another class count than the delta's (5).
  base = delta_lib.load_base(env['base_file'], MODEL, 7)
  before = {p: v.copy() for p, v in base.items()}
  params = delta_lib.apply_to(d, base)
  assert_params(params, reference_apply(env, result))
  assert params['head/kernel'].shape == (16, 5)
  assert base.keys() == before.keys()
  assert all(np.array_equal(base[p], before[p]) for p in base)


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('fan_in_ndim', [1, 2, 3])
def test_the_host_scatter_of_apply_equals_the_trainers_jax_scatter(dtype, fan_in_ndim):
  import jax.numpy as jnp

  from gps_jax import sparse
  from gps_jax.delta.apply import _scatter

  rng = np.random.default_rng(fan_in_ndim)
  shape = (3, 4, 5, 6)  # the leading fan_in_ndim axes are inputs, the rest neurons
  base = rng.normal(size=shape).astype(jnp.dtype(dtype))
  fan_in = int(np.prod(shape[:fan_in_ndim]))
  neurons = int(np.prod(shape[fan_in_ndim:]))
  idx = np.argsort(rng.random((neurons, fan_in)), axis=1)[:, :2].astype(np.int32)
  values = rng.normal(size=(neurons, 2)).astype(np.float32)
  got = _scatter(base, idx, values, fan_in_ndim)
  want = sparse.scatter_add(jnp.asarray(base), jnp.asarray(idx), jnp.asarray(values), fan_in_ndim)
  assert got.dtype == want.dtype == np.float32  # a bfloat16 base keeps the delta whole
  np.testing.assert_array_equal(got, np.asarray(want))
  np.testing.assert_array_equal(got, np_scatter(base, idx, values, fan_in_ndim).astype(np.float32))


def test_apply_refuses_another_base_naming_both_hashes(env):
  d = delta_lib.load(save_at(env, 'a2', make_result(env, 3)))
  want, got = sha_of(env['base_file']), sha_of(env['other_file'])
  with pytest.raises(ValueError) as e:
    delta_lib.apply_delta(d, env['other_file'])
  assert want in str(e.value) and got in str(e.value) and '--force' in str(e.value)
  warned = []
  params = delta_lib.apply_delta(d, env['other_file'], force=True, warn=warned.append)
  assert len(warned) == 1 and want in warned[0] and got in warned[0]
  assert params['head/kernel'].shape == (16, 5)
  m = json.loads(json.dumps(d.manifest))
  m['base'] = {'path': None, 'sha256': None}  # trained from a random init: no base file
  with pytest.raises(ValueError, match='random init'):
    delta_lib.apply_delta(dataclasses.replace(d, manifest=m), env['base_file'])


# ----------------------------------------------------------------------------- compose


def _disjoint_pair(env):
  rng = np.random.default_rng(10)
  first, second = {}, {}
  for p, r in env['select'].items():
    order = np.argsort(rng.random((r.num_neurons, r.fan_in)), axis=1).astype(np.int32)
    first[p], second[p] = order[:, :K], order[:, K : 2 * K]
  return make_result(env, 11, first), make_result(env, 12, second)


def test_compose_of_disjoint_deltas_equals_applying_both(env):
  r1, r2 = _disjoint_pair(env)
  d1, d2 = delta_lib.load(save_at(env, 'c1', r1)), delta_lib.load(save_at(env, 'c2', r2))
  params, report = delta_lib.compose_deltas([d1, d2], env['base_file'], head_from=1)
  assert report['shared'] == 0
  assert report['positions'] == 2 * sum(r.num_neurons * K for r in env['select'].values())
  ref = dict(env['backbone'])
  for p, r in env['select'].items():
    ref[p] = np_scatter(ref[p], r1['indices'][p], r1['delta'][p], r.fan_in_ndim)
    ref[p] = np_scatter(ref[p], r2['indices'][p], r2['delta'][p], r.fan_in_ndim)
  for p in env['trained']:  # biases: both changes from the base; the head of delta 1
    if p.startswith('head/'):
      ref[p] = r2['train'][p]
    else:
      ref[p] = r1['train'][p] + r2['train'][p] - env['backbone'][p]
  assert_params(params, ref, atol=1e-5)
  assert report['head'].startswith('delta 1')

  # Heads differ: refused unless chosen or dropped.
  with pytest.raises(ValueError, match='different heads.*--head-from.*--no-head'):
    delta_lib.compose_deltas([d1, d2], env['base_file'])
  no_head, _ = delta_lib.compose_deltas([d1, d2], env['base_file'], no_head=True)
  assert sorted(no_head) == sorted(p for p in ref if not p.startswith('head/'))
  # 'error' has no selected overlap here, but every bias is trained by both deltas.
  with pytest.raises(ValueError, match='--train-rule'):
    delta_lib.compose_deltas([d1, d2], env['base_file'], overlap='error', head_from=1)
  strict, _ = delta_lib.compose_deltas(
    [d1, d2], env['base_file'], overlap='error', train_rule='sum', head_from=1
  )
  assert_params(strict, ref, atol=1e-5)


def test_overlap_counts_and_rules_match_numpy(env):
  results = [make_result(env, 20 + i, k=3) for i in range(3)]
  deltas = [delta_lib.load(save_at(env, f'o{i}', r, k=3)) for i, r in enumerate(results)]
  report = delta_lib.overlap_report(deltas)
  total = 0
  for p, r in env['select'].items():
    shared = 0
    for n in range(r.num_neurons):
      c = collections.Counter(i for res in results for i in set(res['indices'][p][n].tolist()))
      shared += sum(v >= 2 for v in c.values())
    assert report['leaves'][p]['shared'] == shared, p
    total += shared
  assert report['shared'] == total > 0
  assert set(report['shared_trained_leaves']) == {
    p for p in env['trained'] if not p.startswith('head/')
  }

  def reference(rule):
    ref = dict(env['backbone'])
    for p, r in env['select'].items():
      num = np.zeros(r.shape)
      cnt = np.zeros(r.shape)
      for res in results:
        num = np_scatter(num, res['indices'][p], res['delta'][p], r.fan_in_ndim)
        cnt = np_scatter(cnt, res['indices'][p], np.ones(res['indices'][p].shape), r.fan_in_ndim)
      ref[p] = ref[p] + (num / np.maximum(cnt, 1) if rule == 'mean' else num)
    for p in env['trained']:
      if p.startswith('head/'):
        ref[p] = results[2]['train'][p]
        continue
      changes = [res['train'][p] - env['backbone'][p] for res in results]
      ref[p] = env['backbone'][p] + (np.mean if rule == 'mean' else np.sum)(changes, axis=0)
    return ref

  for rule in ('sum', 'mean'):
    params, rep = delta_lib.compose_deltas(deltas, env['base_file'], overlap=rule, head_from=2)
    assert rep['shared'] == total and rep['overlap_rule'] == rep['train_rule'] == rule
    assert_params(params, reference(rule), atol=1e-5)
  with pytest.raises(ValueError, match=f'share {total} selected positions'):
    delta_lib.compose_deltas(deltas, env['base_file'], overlap='error', head_from=2)


def test_compose_refuses_other_bases_and_models(env):
  r = make_result(env, 30)
  d1 = delta_lib.load(save_at(env, 'b1', r))
  d2 = delta_lib.load(save_at(env, 'b2', r, base_file=env['other_file']))
  with pytest.raises(ValueError, match='different bases') as e:
    delta_lib.compose_deltas([d1, d2], env['base_file'], head_from=0)
  assert sha_of(env['base_file']) in str(e.value) and sha_of(env['other_file']) in str(e.value)
  m = json.loads(json.dumps(d1.manifest))
  m['model']['mlp_dim'] = 64
  m['model']['drop_path_rate'] = 0.1  # not architecture: ignored
  with pytest.raises(ValueError, match=r"differ in \['mlp_dim'\]"):
    delta_lib.compose_deltas([d1, dataclasses.replace(d1, manifest=m)], env['base_file'])


# ----------------------------------------------------------------------------- export


@pytest.mark.parametrize('suffix', ['.safetensors', '.npz'])
def test_export_round_trip(env, tmp_path, suffix):
  result = make_result(env, 40)
  path = save_at(env, 'e' + suffix.strip('.'), result)
  d = delta_lib.load(path)
  out = str(tmp_path / ('delta' + suffix))
  delta_lib.export_delta(d, out)
  arrays, manifest = delta_lib.read_export(out)
  assert manifest == d.manifest
  expected = {f'{p}/indices': v for p, v in result['indices'].items()}
  expected.update({f'{p}/values': v for p, v in result['delta'].items()})
  expected.update(result['train'])
  assert sorted(arrays) == sorted(expected)
  for k, v in expected.items():
    assert arrays[k].dtype == v.dtype and np.array_equal(arrays[k], v), k
  if suffix == '.npz':  # plain arrays only: no pickle needed
    with np.load(out, allow_pickle=False) as npz:
      member = npz['__manifest__']
      assert member.dtype == np.uint8
      assert json.loads(member.tobytes().decode('utf-8')) == d.manifest
  else:
    from safetensors import safe_open

    with safe_open(out, framework='numpy') as f:
      assert json.loads(f.metadata()['gps_jax_manifest']) == d.manifest
  # An export is a delta too.
  again = delta_lib.load(out)
  for part in ('indices', 'delta', 'train'):
    got, want = getattr(again, part), getattr(d, part)
    assert sorted(got) == sorted(want) and all(np.array_equal(got[p], want[p]) for p in want)


# ----------------------------------------------------------------------------- inspect


def test_inspect_bytes_by_hand(env):
  d = delta_lib.load(save_at(env, 'i', make_result(env, 50)))
  report = delta_lib.inspect_delta(d)
  # A block of the tiny ViT (width 16, 2 heads of 8, mlp 32): neurons = 3 x 16 (q, k, v) + 16
  # (out) + 32 (fc1) + 16 (fc2) = 112, and as many bias entries. K = 2, 4 bytes each.
  block = report['blocks']['encoderblock_0']
  assert block['delta_entries'] == 224 and block['train_entries'] == 112
  assert (block['values_bytes'], block['indices_bytes'], block['train_bytes']) == (896, 896, 448)
  assert block['bytes'] == 2240 and block['entries'] == 336
  # Patch embedding: 16 neurons of fan-in 4*4*3; its bias 16. Head: 16 x 5 kernel + 5 bias.
  assert report['blocks']['embedding']['bytes'] == 128 + 128 + 64
  assert report['blocks']['head']['bytes'] == 85 * 4
  assert report['total']['bytes'] == 2 * 2240 + 320 + 340
  assert (report['k'], report['method']) == (K, 'gps')
  assert report['base']['sha256'] == sha_of(env['base_file'])
  text = delta_lib.format_inspect(report)
  assert '5,140' in text and sha_of(env['base_file']) in text


def test_experiment_run_writes_the_manifest_of_its_base(tmp_path):
  import importlib.util

  from gps_jax import experiment, weights

  spec = importlib.util.spec_from_file_location('demo', os.path.join(REPO, 'configs', 'demo.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.model.update({'hidden_size': 16, 'num_layers': 1, 'num_heads': 2, 'mlp_dim': 32})
  c.train.steps = 2
  c.gps.k = 2
  c.gps.score = 'random'  # the SupCon pass is tested elsewhere
  c.data.val_split = ''
  c.optim.warmup_epochs = 0
  base_config = {**c.model.to_dict(), 'num_classes': 0}
  base = weights.init_params(weights.build_model(base_config))
  base_file = str(tmp_path / 'backbone.npz')
  save_vit_npz(base_file, base)
  c.model.checkpoint = base_file

  _, final_params = experiment.run(c, str(tmp_path / 'run'))
  ckpt = str(tmp_path / 'run' / 'checkpoint')
  m = checkpoint.load_manifest(ckpt)
  assert m['base'] == {'path': os.path.abspath(base_file), 'sha256': sha_of(base_file)}
  assert (m['method'], m['k'], m['model']['num_classes']) == ('gps', 2, 10)
  d = delta_lib.load(ckpt)
  assert set(m['fan_in_ndim']) == set(d.delta) and len(d.delta) == 7  # embedding + 6 per block
  # The delta applied to its base is the model the run evaluated.
  params = delta_lib.apply_delta(d, base_file)
  want = {p: np.asarray(v) for p, v in final_params.items()}
  assert_params(params, want, atol=1e-6)
