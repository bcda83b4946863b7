"""FSDP gathers weights, not activations (gps_jax.sharding.batch_sharded): through
tools/fsdp_memory.py on 8 simulated devices, the compiled train step's per-device memory
with fsdp=8 is at most data=8's at the same global batch, and no all-gather moves a batch
of activations."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A ViT whose weights have no axis of the batch size (64 wide, 256 MLP, 4 x 16 heads, 192
# patch inputs, 10 classes), so that a gather of batch-sized leading axis is never a weight.
BATCH, CLASSES = 48, 10
MODEL = ['--model=Ti/8', '--image-size=64', f'--classes={CLASSES}', f'--batch={BATCH}']
MODEL += [f'--set={kv}' for kv in ('hidden_size=64', 'num_layers=4', 'num_heads=4', 'mlp_dim=256')]


@pytest.fixture(scope='module')
def steps(tmp_path_factory):
  path = tmp_path_factory.mktemp('fsdp') / 'out.json'
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  cmd = [sys.executable, 'tools/fsdp_memory.py', *MODEL, f'--json={path}']
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '| gps | on | fsdp=8 |' in proc.stdout  # the table
  return json.loads(path.read_text())


@pytest.mark.slow
@pytest.mark.parametrize('run', ['gps:off', 'gps:on', 'full:off'])
def test_fsdp_needs_no_more_memory_than_data_parallel(steps, run):
  data, fsdp = steps[f'{run}:data=8'], steps[f'{run}:fsdp=8']
  assert fsdp['live_mib'] <= data['live_mib'], (fsdp['live_mib'], data['live_mib'])
  assert data['all_gathers'] == []  # nothing is split but the batch
  assert fsdp['all_gathers']  # the weights are gathered
  # No all-gather of a batch of activations (tokens, images, features). The one batch-
  # sized gather allowed is the logits' gradient for the head's weight gradient
  # (BATCH x CLASSES numbers), when the head kernel is split along its input axis.
  batchy = [s for s in fsdp['all_gathers'] if s and s[0] in (BATCH, 2 * BATCH)]
  assert all(s == [BATCH, CLASSES] for s in batchy), batchy


def test_bad_flags_are_one_line():
  for bad in (['--runs=gps:maybe'], ['--batch=60'], ['--set=hidden_size'], ['--model=Q/16']):
    proc = subprocess.run(
      [sys.executable, 'tools/fsdp_memory.py', *bad], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stderr.startswith('error: '), proc.stderr
    assert 'Traceback' not in proc.stderr
