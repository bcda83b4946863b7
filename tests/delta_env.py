"""A tiny ViT base on disk and random deltas of it: shared by tests/test_delta.py and
tests/test_delta_cli.py (tests/ is on sys.path under pytest)."""

import hashlib

import numpy as np
import pytest
from tiny import TINY, random_params, tiny_shapes

from gps_jax import checkpoint
from gps_jax import roles as roles_lib
from gps_jax import tree as tree_lib
from gps_jax.vit_npz import save_vit_npz

MODEL = {'name': 'vit', 'variant': '', **TINY, 'mean': (0.5, 0.5, 0.5), 'std': (0.5, 0.5, 0.5)}
K = 2


def sha_of(path):
  return hashlib.sha256(open(path, 'rb').read()).hexdigest()


def np_scatter(w, idx, values, fan_in_ndim):
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


def make_result(env, seed, indices=None, k=K):
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


def make_manifest(env, base_file=None, k=K):
  base_file = base_file or env['base_file']
  return checkpoint.make_manifest(
    method='gps',
    k=k,
    model=MODEL,
    base_path=base_file,
    base_sha256=checkpoint.file_sha256(base_file),
    select_roles=env['select'],
  )


def save_at(env, name, result, **kw):
  path = str(env['root'] / name)
  checkpoint.save_delta(path, result, make_manifest(env, **kw))
  return path


def reference_apply(env, result):
  ref = dict(env['backbone'])
  for p, r in env['select'].items():
    ref[p] = np_scatter(ref[p], result['indices'][p], result['delta'][p], r.fan_in_ndim)
  ref.update(result['train'])
  return ref


def assert_params(params, ref, atol=1e-6):
  assert sorted(params) == sorted(ref)
  for p in ref:
    assert params[p].shape == np.shape(ref[p]), p
    np.testing.assert_allclose(params[p], ref[p], rtol=1e-6, atol=atol, err_msg=p)
