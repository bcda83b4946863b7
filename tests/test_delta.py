"""Delta manifests and tools (gps_jax.delta): checked against NumPy references."""

import collections
import dataclasses
import datetime
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from tiny import TINY, random_params, tiny_shapes

from gps_jax import checkpoint
from gps_jax import delta as delta_lib
from gps_jax import roles as roles_lib
from gps_jax import tree as tree_lib
from gps_jax.errors import UserError
from gps_jax.vit_npz import save_vit_npz

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = {'name': 'vit', 'variant': '', **TINY, 'mean': (0.5, 0.5, 0.5), 'std': (0.5, 0.5, 0.5)}
K = 2


def _sha(path):
  return hashlib.sha256(open(path, 'rb').read()).hexdigest()


def _np_scatter(w, idx, values, fan_in_ndim):
  """Independent reference: NumPy add.at into the (fan_in, neurons) view."""
  rows = np.array(w, np.float64).reshape(int(np.prod(w.shape[:fan_in_ndim])), -1)
  np.add.at(rows, (idx, np.arange(idx.shape[0])[:, None]), values)
  return rows.reshape(w.shape)


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  root = tmp_path_factory.mktemp('delta')
  shapes = tiny_shapes()
  roles = roles_lib.assign_roles(shapes)
  base = random_params(shapes, seed=0)
  backbone = {p: v for p, v in base.items() if not p.startswith('head/')}
  base_file = str(root / 'base.npz')
  save_vit_npz(base_file, tree_lib.unflat(backbone))
  other_file = str(root / 'other.npz')
  save_vit_npz(other_file, tree_lib.unflat(random_params(shapes, seed=1)))
  return {
    'root': root,
    'roles': roles,
    'select': roles_lib.leaves_with_role(roles, 'select'),
    'trained': roles_lib.leaves_with_role(roles, 'train'),
    'backbone': backbone,
    'base_file': base_file,
    'other_file': other_file,
  }


def _result(env, seed, indices=None, k=K):
  """Random indices (K distinct inputs per neuron), values and trained leaves."""
  rng = np.random.default_rng(seed)
  idx, values = {}, {}
  for p, r in env['select'].items():
    if indices is None:
      idx[p] = np.argsort(rng.random((r.num_neurons, r.fan_in)), axis=1)[:, :k].astype(np.int32)
    else:
      idx[p] = indices[p]
    values[p] = rng.normal(size=idx[p].shape).astype(np.float32)
  train = {}
  for p, r in env['trained'].items():
    noise = rng.normal(size=r.shape).astype(np.float32)
    train[p] = noise if p.startswith('head/') else env['backbone'][p] + 0.1 * noise
  return {'indices': idx, 'delta': values, 'train': train}


def _manifest(env, base_file=None, k=K):
  base_file = base_file or env['base_file']
  return checkpoint.make_manifest(
    method='gps',
    k=k,
    model=MODEL,
    base_path=base_file,
    base_sha256=checkpoint.file_sha256(base_file),
    select_roles=env['select'],
  )


def _save(env, name, result, **kw):
  path = str(env['root'] / name)
  checkpoint.save_delta(path, result, _manifest(env, **kw))
  return path


def _reference_apply(env, result):
  ref = dict(env['backbone'])
  for p, r in env['select'].items():
    ref[p] = _np_scatter(ref[p], result['indices'][p], result['delta'][p], r.fan_in_ndim)
  ref.update(result['train'])
  return ref


def _assert_params(params, ref, atol=1e-6):
  assert sorted(params) == sorted(ref)
  for p in ref:
    assert params[p].shape == np.shape(ref[p]), p
    np.testing.assert_allclose(params[p], ref[p], rtol=1e-6, atol=atol, err_msg=p)


# ----------------------------------------------------------------------------- manifest


def test_manifest_is_written_next_to_the_checkpoint_and_read_back(env):
  result = _result(env, 1)
  path = _save(env, 'm', result)
  assert os.path.isfile(path + '.manifest.json') and os.path.isdir(path)
  m = checkpoint.load_manifest(path)
  assert m == checkpoint.load_manifest(path + '.manifest.json')
  assert m['format'] == 'gps_jax.delta/1' and m['method'] == 'gps' and m['k'] == K
  assert m['base'] == {'path': os.path.abspath(env['base_file']), 'sha256': _sha(env['base_file'])}
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
    bad = _manifest(env)
    bad['fan_in_ndim'].pop('embedding/kernel')
    bad['shapes'].pop('embedding/kernel')
    checkpoint.save_delta(path, result, bad)


# ----------------------------------------------------------------------------- apply


def test_apply_equals_a_numpy_scatter_and_writes_a_dense_npz(env, tmp_path):
  result = _result(env, 2)
  d = delta_lib.load(_save(env, 'a', result))
  params = delta_lib.apply_delta(d, env['base_file'])
  ref = _reference_apply(env, result)
  _assert_params(params, ref)
  assert params['head/kernel'].shape == (16, 5)
  out = str(tmp_path / 'tuned.npz')
  delta_lib.write_npz(out, params)
  with np.load(out, allow_pickle=False) as npz:
    _assert_params({k: npz[k] for k in npz.files}, ref)


def test_apply_refuses_another_base_naming_both_hashes(env):
  d = delta_lib.load(_save(env, 'a2', _result(env, 3)))
  want, got = _sha(env['base_file']), _sha(env['other_file'])
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
  return _result(env, 11, first), _result(env, 12, second)


def test_compose_of_disjoint_deltas_equals_applying_both(env):
  r1, r2 = _disjoint_pair(env)
  d1, d2 = delta_lib.load(_save(env, 'c1', r1)), delta_lib.load(_save(env, 'c2', r2))
  params, report = delta_lib.compose_deltas([d1, d2], env['base_file'], head_from=1)
  assert report['shared'] == 0
  assert report['positions'] == 2 * sum(r.num_neurons * K for r in env['select'].values())
  ref = dict(env['backbone'])
  for p, r in env['select'].items():
    ref[p] = _np_scatter(ref[p], r1['indices'][p], r1['delta'][p], r.fan_in_ndim)
    ref[p] = _np_scatter(ref[p], r2['indices'][p], r2['delta'][p], r.fan_in_ndim)
  for p in env['trained']:  # biases: both changes from the base; the head of delta 1
    if p.startswith('head/'):
      ref[p] = r2['train'][p]
    else:
      ref[p] = r1['train'][p] + r2['train'][p] - env['backbone'][p]
  _assert_params(params, ref, atol=1e-5)
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
  _assert_params(strict, ref, atol=1e-5)


def test_overlap_counts_and_rules_match_numpy(env):
  results = [_result(env, 20 + i, k=3) for i in range(3)]
  deltas = [delta_lib.load(_save(env, f'o{i}', r, k=3)) for i, r in enumerate(results)]
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
        num = _np_scatter(num, res['indices'][p], res['delta'][p], r.fan_in_ndim)
        cnt = _np_scatter(cnt, res['indices'][p], np.ones(res['indices'][p].shape), r.fan_in_ndim)
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
    _assert_params(params, reference(rule), atol=1e-5)
  with pytest.raises(ValueError, match=f'share {total} selected positions'):
    delta_lib.compose_deltas(deltas, env['base_file'], overlap='error', head_from=2)


def test_compose_refuses_other_bases_and_models(env):
  r = _result(env, 30)
  d1 = delta_lib.load(_save(env, 'b1', r))
  d2 = delta_lib.load(_save(env, 'b2', r, base_file=env['other_file']))
  with pytest.raises(ValueError, match='different bases') as e:
    delta_lib.compose_deltas([d1, d2], env['base_file'], head_from=0)
  assert _sha(env['base_file']) in str(e.value) and _sha(env['other_file']) in str(e.value)
  m = json.loads(json.dumps(d1.manifest))
  m['model']['mlp_dim'] = 64
  m['model']['drop_path_rate'] = 0.1  # not architecture: ignored
  with pytest.raises(ValueError, match=r"differ in \['mlp_dim'\]"):
    delta_lib.compose_deltas([d1, dataclasses.replace(d1, manifest=m)], env['base_file'])


# ----------------------------------------------------------------------------- export


@pytest.mark.parametrize('suffix', ['.safetensors', '.npz'])
def test_export_round_trip(env, tmp_path, suffix):
  result = _result(env, 40)
  path = _save(env, 'e' + suffix.strip('.'), result)
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
  d = delta_lib.load(_save(env, 'i', _result(env, 50)))
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
  assert report['base']['sha256'] == _sha(env['base_file'])
  text = delta_lib.format_inspect(report)
  assert '5,140' in text and _sha(env['base_file']) in text


# ----------------------------------------------------------------------------- command line


def _cli(*args):
  return subprocess.run(
    [sys.executable, '-m', 'gps_jax.delta', *args],
    check=False,
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_cli_inspect_and_apply(env, tmp_path):
  result = _result(env, 60)
  path = _save(env, 'cli', result)
  proc = _cli('inspect', path, '--json')
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout)
  assert report['total']['bytes'] == 5140 and report['base']['sha256'] == _sha(env['base_file'])

  out = str(tmp_path / 'tuned.npz')
  proc = _cli('apply', path, '--base', env['base_file'], '--out', out)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with np.load(out, allow_pickle=False) as npz:
    _assert_params({k: npz[k] for k in npz.files}, _reference_apply(env, result))

  proc = _cli('apply', path, '--base', env['other_file'], '--out', str(tmp_path / 'x.npz'))
  assert proc.returncode == 1 and not os.path.exists(tmp_path / 'x.npz')
  assert _sha(env['base_file']) in proc.stderr and _sha(env['other_file']) in proc.stderr


def _garbage(env, tmp_path, kind):
  """A delta path whose files are broken in the way `kind` names."""
  import shutil

  good = _save(env, f'garbage_src_{kind}', _result(env, 70))
  path = str(tmp_path / 'ckpt')
  if kind.startswith('export'):
    path = str(tmp_path / ('delta' + kind[len('export') :]))
    with open(path, 'wb') as f:
      f.write(np.random.default_rng(0).bytes(500))
    return path
  shutil.copytree(good, path)
  shutil.copy(checkpoint.manifest_path(good), checkpoint.manifest_path(path))
  files = [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs]
  rng = np.random.default_rng(1)
  if kind == 'manifest_not_json':
    with open(checkpoint.manifest_path(path), 'w') as f:
      f.write('{"format": not json')
  elif kind == 'manifest_binary':
    with open(checkpoint.manifest_path(path), 'wb') as f:
      f.write(b'\xff\xfe\x00' + rng.bytes(100))
  elif kind == 'random_bytes':  # every file of the orbax directory
    for file in files:
      with open(file, 'wb') as f:
        f.write(rng.bytes(max(os.path.getsize(file), 64)))
  elif kind == 'random_array_bytes':  # the array data only, the metadata intact
    for file in files:
      if f'{os.sep}d{os.sep}' in file:
        with open(file, 'wb') as f:
          f.write(rng.bytes(os.path.getsize(file)))
  elif kind == 'missing_arrays':
    for file in files:
      if os.path.basename(file) not in ('_METADATA', '_CHECKPOINT_METADATA'):
        os.remove(file)
  elif kind == 'empty_dir':
    shutil.rmtree(path)
    os.mkdir(path)
  else:
    raise AssertionError(kind)
  return path


GARBAGE = (
  'manifest_not_json',
  'manifest_binary',
  'random_bytes',
  'random_array_bytes',
  'missing_arrays',
  'empty_dir',
  'export.npz',
  'export.safetensors',
)


@pytest.mark.parametrize('kind', GARBAGE)
def test_cli_inspect_of_garbage_is_one_error_line(env, tmp_path, capsys, kind):
  path = _garbage(env, tmp_path, kind)
  capsys.readouterr()
  assert delta_lib.main(['inspect', path]) == 1
  out, err = capsys.readouterr()
  assert out == ''
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), err
  assert path in lines[0] or os.path.abspath(path) in lines[0], err
  with pytest.raises((ValueError, FileNotFoundError)) as e:
    delta_lib.load(path, require_manifest=False)
  assert '\n' not in str(e.value) and path in str(e.value)


# Restores every broken checkpoint of argv[1:] several times in one process, collecting the
# garbage after each: the late asyncio records of a failed restore ('Task exception was never
# retrieved', 'Event loop is closed') are timing-dependent, and show up here if they exist.
_INSPECT_REPEATEDLY = """
import gc, sys, time
from gps_jax.delta.cli import main
for _ in range(4):
  for path in sys.argv[1:]:
    assert main(['inspect', path]) == 1
    gc.collect()
time.sleep(0.3)
gc.collect()
"""


def test_cli_inspect_of_garbage_has_no_traceback(env, tmp_path):
  kinds = ('random_bytes', 'random_array_bytes', 'missing_arrays')
  paths = [_garbage(env, tmp_path / kind, kind) for kind in kinds]
  proc = _cli('inspect', paths[-1])
  assert proc.returncode == 1 and proc.stdout == '', proc.stderr[-3000:]
  assert proc.stderr.startswith('error: ') and len(proc.stderr.splitlines()) == 1, proc.stderr
  assert paths[-1] in proc.stderr and 'arrays are missing' in proc.stderr
  proc = subprocess.run(
    [sys.executable, '-c', _INSPECT_REPEATEDLY, *paths],
    check=False, cwd=REPO, capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stderr.splitlines()
  assert len(lines) == 4 * len(paths) and all(line.startswith('error: ') for line in lines), (
    proc.stderr[-3000:]
  )


def test_missing_arrays_fail_before_orbax_reads(env, tmp_path, monkeypatch):
  """The arrays `_METADATA` lists are looked up first: orbax never starts reads that fail."""
  from gps_jax.delta import restore as restore_lib

  def no_orbax(path):
    raise AssertionError('orbax asked to restore a checkpoint with missing arrays')

  monkeypatch.setattr(restore_lib.checkpoint, 'load_delta', no_orbax)
  for kind, what in (('missing_arrays', 'arrays are missing'), ('random_array_bytes', 'damaged')):
    path = _garbage(env, tmp_path / kind, kind)
    with pytest.raises(UserError, match=what) as e:
      delta_lib.load(path, require_manifest=False)
    assert path in str(e.value)
  good = _save(env, 'orbax_is_asked', _result(env, 71))
  with pytest.raises(ValueError, match='orbax asked'):  # the good one reaches orbax
    delta_lib.load(good)


def test_failed_restore_leaves_no_asyncio_noise(tmp_path, caplog):
  """A read that failed after its restore gave up is logged by asyncio when collected; after
  a failed restore of a checkpoint, those of that checkpoint (only) are dropped."""
  import asyncio
  import gc
  import logging

  from gps_jax.delta import restore as restore_lib

  broken, other = str(tmp_path / 'broken'), str(tmp_path / 'other')

  async def read(path):
    raise ValueError(f'NOT_FOUND: Metadata at "x/.zarray" in OCDBT database at "{path}/"')

  def unretrieved_failed_read(path):
    loop = asyncio.new_event_loop()
    task = loop.create_task(read(path))
    loop.run_until_complete(asyncio.sleep(0.01))  # the read fails; nobody awaits it
    loop.close()
    del task
    gc.collect()

  restore_lib.quiet_failed_restore(broken)
  with caplog.at_level(logging.ERROR, logger='asyncio'):
    unretrieved_failed_read(broken)
    unretrieved_failed_read(other)
  records = [r for r in caplog.records if r.name == 'asyncio']
  assert len(records) == 1 and other in str(records[0].exc_info[1])
  assert records[0].getMessage().startswith('Task exception was never retrieved')


# ----------------------------------------------------------------------------- experiment


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
  assert m['base'] == {'path': os.path.abspath(base_file), 'sha256': _sha(base_file)}
  assert (m['method'], m['k'], m['model']['num_classes']) == ('gps', 2, 10)
  d = delta_lib.load(ckpt)
  assert set(m['fan_in_ndim']) == set(d.delta) and len(d.delta) == 7  # embedding + 6 per block
  # The delta applied to its base is the model the run evaluated.
  params = delta_lib.apply_delta(d, base_file)
  want = {p: np.asarray(v) for p, v in final_params.items()}
  _assert_params(params, want, atol=1e-6)
