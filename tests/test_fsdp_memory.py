"""FSDP gathers weights, not activations: on 8 simulated devices, the compiled train step's
per-device memory with fsdp=8 is at most data=8's at the same global batch, and no
all-gather moves a batch of token activations (gps_jax.sharding.batch_sharded)."""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(__file__)


@pytest.fixture(scope='module')
def steps():
  env = {
    **os.environ,
    'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
    'PYTHONPATH': os.pathsep.join([HERE, os.environ.get('PYTHONPATH', '')]),
    'JAX_PLATFORMS': 'cpu',
  }
  proc = subprocess.run(
    [sys.executable, os.path.join(HERE, 'fsdp_memory_run.py')],
    env=env, capture_output=True, text=True, check=True,
  )  # fmt: skip
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize('run', ['gps_off', 'gps_on', 'full_off'])
def test_fsdp_needs_no_more_memory_than_data_parallel(steps, run):
  from fsdp_memory_run import BATCH, CLASSES

  data, fsdp = steps[f'{run}:data8'], steps[f'{run}:fsdp8']
  assert fsdp['live'] <= data['live'], (fsdp['live'], data['live'])
  assert data['all_gathers'] == []  # nothing is split but the batch
  assert fsdp['all_gathers']  # the weights are gathered
  # No all-gather of a batch of activations (tokens, images, features). The one batch-
  # sized gather allowed is the logits' gradient for the head's weight gradient
  # (BATCH x CLASSES numbers), when the head kernel is split along its input axis.
  batchy = [s for s in fsdp['all_gathers'] if s and s[0] in (BATCH, 2 * BATCH)]
  assert all(s == [BATCH, CLASSES] for s in batchy), batchy
