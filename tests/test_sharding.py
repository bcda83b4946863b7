"""Sharded selection and training on 8 simulated CPU devices against the 1-device run."""

import os
import subprocess
import sys

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from gps_jax import sharding as shard_lib

HERE = os.path.dirname(__file__)


def test_array_spec_picks_the_largest_divisible_axis():
  assert shard_lib.array_spec((16, 2, 8), 2) == P('fsdp', None, None)
  assert shard_lib.array_spec((3, 16), 4) == P(None, 'fsdp')
  assert shard_lib.array_spec((96, 1), 8) == P('fsdp', None)  # (neurons, K): the neuron axis
  assert shard_lib.array_spec((8, 8), 8) == P('fsdp', None)  # ties: the first axis
  assert shard_lib.array_spec((3, 5), 2) == P()  # nothing divides: replicated
  assert shard_lib.array_spec((), 2) == P() and shard_lib.array_spec((16,), 1) == P()


def test_make_mesh_errors_name_the_config():
  with pytest.raises(ValueError, match='config.mesh has unknown axes'):
    shard_lib.make_mesh({'model': 2})
  with pytest.raises(ValueError, match=r'config.mesh=.* needs 4 devices, found 1'):
    shard_lib.make_mesh({'data': 2, 'fsdp': 2})
  assert shard_lib.make_mesh({'data': -1}).shape == {'data': 1, 'fsdp': 1}


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  out = tmp_path_factory.mktemp('sharded') / 'runs.npz'
  env = {
    **os.environ,
    'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
    'PYTHONPATH': os.pathsep.join([HERE, os.environ.get('PYTHONPATH', '')]),
    'JAX_PLATFORMS': 'cpu',
  }
  subprocess.run(
    [sys.executable, os.path.join(HERE, 'sharded_run.py'), str(out)], env=env, check=True
  )
  with np.load(out, allow_pickle=False) as z:
    return {k: z[k] for k in z.files}


@pytest.mark.slow
@pytest.mark.parametrize('mesh', ['data4_fsdp2', 'fsdp8'])
def test_sharded_run_matches_the_single_device_run(runs, mesh):
  assert int(runs[f'{mesh}:devices']) == 8 and int(runs['single:devices']) == 1
  assert int(runs[f'{mesh}:num_sharded_frozen']) > 0  # the frozen base is really split
  keys = [k.split(':', 1)[1] for k in runs if k.startswith('single:indices/')]
  assert keys
  for k in keys:  # the same mask
    np.testing.assert_array_equal(runs[f'{mesh}:{k}'], runs[f'single:{k}'], err_msg=k)
  np.testing.assert_allclose(runs[f'{mesh}:losses'], runs['single:losses'], rtol=0, atol=1e-5)
  assert runs['single:losses'][-1] < runs['single:losses'][0]  # it does train
  for k in [k.split(':', 1)[1] for k in runs if k.startswith('single:final/')]:
    np.testing.assert_allclose(runs[f'{mesh}:{k}'], runs[f'single:{k}'], atol=1e-5, err_msg=k)
  assert runs[f'{mesh}:accuracy'] == runs['single:accuracy']


@pytest.mark.slow
@pytest.mark.parametrize('mesh', ['single', 'data4_fsdp2', 'fsdp8'])
def test_chunked_selection_pass_matches_the_single_device_scores(runs, mesh):
  """gps.score_chunks=2 (GradCache) on each mesh: the scores of the one-chunk pass on one device."""
  keys = [k.split(':', 1)[1] for k in runs if k.startswith('single:scores/')]
  assert keys
  for k in keys:
    want = runs[f'single:{k}']
    got = runs[f'{mesh}:chunked/' + k.split('/', 1)[1]]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max(), err_msg=k)


@pytest.mark.slow
def test_k_entry_weight_gradients_train_like_autodiff(runs):
  """The single-device run with K-entry weight gradients ('on', also the sharded runs')
  against effective kernels and dense gradients ('off'): same losses, same delta."""
  np.testing.assert_allclose(runs['single:losses'], runs['single_off:losses'], rtol=0, atol=1e-5)
  keys = [k.split(':', 1)[1] for k in runs if k.startswith('single:final/')]
  assert keys
  for k in keys:
    np.testing.assert_allclose(runs[f'single:{k}'], runs[f'single_off:{k}'], atol=1e-5, err_msg=k)


@pytest.mark.slow
@pytest.mark.parametrize('rule', ['lora', 'ssf'])
@pytest.mark.parametrize('mesh', ['data4_fsdp2', 'fsdp8'])
def test_factored_rules_shard_like_the_single_device_run(runs, rule, mesh):
  """LoRA and SSF through the same sharded step: the losses and the merged parameters
  after 20 steps equal the single-device run's."""
  np.testing.assert_allclose(
    runs[f'{mesh}:{rule}_losses'], runs[f'single:{rule}_losses'], rtol=0, atol=1e-5
  )
  assert runs[f'single:{rule}_losses'][-1] < runs[f'single:{rule}_losses'][0]
  keys = [k.split(':', 1)[1] for k in runs if k.startswith(f'single:{rule}_final/')]
  assert len(keys) > 10
  for k in keys:
    np.testing.assert_allclose(runs[f'{mesh}:{k}'], runs[f'single:{k}'], atol=1e-5, err_msg=k)
