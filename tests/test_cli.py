"""The command line end to end: upstream → select → fine-tune → evaluate, in seconds."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gps_jax import checkpoint
from gps_jax import metrics
from gps_jax import report

from tb_events import events

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny version of configs/demo.py: 16-wide, 1 block, a few steps everywhere.
TINY = [
  '--config.model.hidden_size=16',
  '--config.model.num_layers=1',
  '--config.model.num_heads=2',
  '--config.model.mlp_dim=32',
  '--config.upstream.model.hidden_size=16',
  '--config.upstream.model.num_layers=1',
  '--config.upstream.model.num_heads=2',
  '--config.upstream.model.mlp_dim=32',
  '--config.upstream.train.steps=5',
  '--config.train.steps=4',
  '--config.gps.k=2',
]


def _run(workdir, cache, *extra, env_extra=None):
  env = dict(os.environ, GPS_JAX_CACHE=str(cache), **(env_extra or {}))
  cmd = [
    sys.executable,
    '-m',
    'gps_jax.main',
    '--config=configs/demo.py',
    f'--workdir={workdir}',
    *TINY,
    *extra,
  ]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc.stdout


@pytest.mark.slow
def test_demo_cli_end_to_end(tmp_path):
  out = _run(tmp_path / 'run', tmp_path / 'cache', "--config.compare_methods=('gps','linear')")
  assert '[upstream] pretraining the backbone' in out
  assert 'img/s' in out
  # The comparison table names both methods.
  table = (tmp_path / 'run' / 'comparison.txt').read_text()
  assert table.splitlines()[1].split()[0] == 'gps' and table.splitlines()[2].split()[0] == 'linear'

  gps = json.loads((tmp_path / 'run' / 'gps' / 'results.json').read_text())
  assert gps['method'] == 'gps' and gps['dataset'] == 'mnist_5k' and gps['k'] == 2
  assert 0.0 <= gps['test_accuracy'] <= 1.0 and 0.0 <= gps['best_val_accuracy'] <= 1.0
  assert gps['selection']['batches'] == 800 // 32
  # 1 block of width 16, mlp 32, patch 7 on RGB: neurons = 16 (embedding) +
  # 48 (q,k,v) + 16 (out) + 32 (fc1) + 16 (fc2) = 128; biases the same count.
  assert gps['trainable_without_head'] == 128 * 2 + 128
  stats = json.loads((tmp_path / 'run' / 'gps' / 'mask_stats.json').read_text())
  assert stats['neurons'] == 128
  # The curves of metrics.jsonl are in TensorBoard's event files too.
  records = metrics.read(str(tmp_path / 'run' / 'gps'))
  scalars = events(tmp_path / 'run' / 'gps')
  train = [r for r in records if r['kind'] == 'train']
  assert train and all(scalars['train/loss', r['step']] == pytest.approx(r['loss']) for r in train)
  final = next(r for r in records if r['kind'] == 'final')
  assert scalars['final/test', final['step']] == pytest.approx(final['test'])

  # The checkpoint holds the sparse delta only: indices + values + trained leaves.
  delta = checkpoint.load_delta(str(tmp_path / 'run' / 'gps' / 'checkpoint'))
  kernel = 'Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel'
  assert delta['indices'][kernel].shape == (32, 2) and delta['delta'][kernel].shape == (32, 2)
  assert delta['indices'][kernel].dtype == np.int32
  assert 'head/kernel' in delta['train'] and kernel not in delta['train']
  assert not any(k.endswith('kernel') and k != 'head/kernel' for k in delta['train'])
  assert np.any(delta['delta'][kernel] != 0)

  linear = json.loads((tmp_path / 'run' / 'linear' / 'results.json').read_text())
  assert linear['k'] is None and linear['trainable_without_head'] == 0

  # python -m gps_jax.report on the comparison: curves, gps's mask, accuracy vs share, summary.
  assert report.main([str(tmp_path / 'run')]) == 0
  made = sorted(p.name for p in (tmp_path / 'run' / 'report').iterdir())
  assert made == ['accuracy_vs_share.png', 'curves.png', 'mask_gps.png', 'summary.md']
  summary = (tmp_path / 'run' / 'report' / 'summary.md').read_text()
  assert '| gps | gps | mnist_5k | 2 |' in summary
  assert f'{100 * gps["test_accuracy"]:.2f}' in summary

  # A second run reuses the cached upstream backbone.
  out2 = _run(
    tmp_path / 'run2', tmp_path / 'cache', '--config.compare_methods=()', '--config.method=bitfit'
  )
  assert '[upstream] using cached backbone' in out2
  assert json.loads((tmp_path / 'run2' / 'results.json').read_text())['method'] == 'bitfit'


def test_cli_rejects_unknown_method(tmp_path):
  env = dict(os.environ, GPS_JAX_CACHE=str(tmp_path / 'cache'))
  cmd = [
    sys.executable,
    '-m',
    'gps_jax.main',
    '--config=configs/demo.py',
    f'--workdir={tmp_path}',
    *TINY,
    '--config.compare_methods=()',
    '--config.method=nope',
  ]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 1
  assert proc.stderr.startswith("error: config.method='nope'"), proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr and not (tmp_path / 'cache').exists()  # no upstream run


# The single-process, single-device gps run the sharded runs are compared with. K-entry
# weight gradients ('on': the tiny model's K / fan-in is above auto's threshold).
ONE = ('--config.compare_methods=()', '--config.method=gps', '--config.train.sparse_grad=on')


@pytest.fixture(scope='module')
def one_run(tmp_path_factory):
  """(workdir of the `ONE` run, the upstream cache it filled): shared by the tests of this
  module that run on the same worker (each pretrains no upstream of its own)."""
  root = tmp_path_factory.mktemp('one')
  _run(root / 'one', root / 'cache', *ONE)
  return root / 'one', root / 'cache'


@pytest.mark.slow
def test_cli_on_8_simulated_devices_matches_one_device(tmp_path, one_run):
  """The same command sharded over a (data 4, fsdp 2) mesh: same mask, same delta."""
  one_dir, cache = one_run
  out = _run(
    tmp_path / 'eight', cache, *ONE, '--config.mesh.data=4', '--config.mesh.fsdp=2',
    env_extra={'XLA_FLAGS': '--xla_force_host_platform_device_count=8', 'JAX_PLATFORMS': 'cpu'},
  )  # fmt: skip
  assert "mesh {'data': 4, 'fsdp': 2} over 8 devices" in out
  a = checkpoint.load_delta(str(one_dir / 'checkpoint'))
  b = checkpoint.load_delta(str(tmp_path / 'eight' / 'checkpoint'))
  assert a['indices'].keys() == b['indices'].keys()
  for k in a['indices']:
    np.testing.assert_array_equal(a['indices'][k], b['indices'][k], err_msg=k)
  for part in ('delta', 'train'):
    for k in a[part]:
      if k.endswith('/key/bias'):
        # No effect on any output (softmax is shift-invariant): its true gradient is 0 and
        # Adam (eps 1e-8) turns reduction-order noise into steps of ~1e-4; never compared.
        continue
      np.testing.assert_allclose(a[part][k], b[part][k], atol=1e-5, err_msg=k)
  ra = json.loads((one_dir / 'results.json').read_text())
  rb = json.loads((tmp_path / 'eight' / 'results.json').read_text())
  assert ra['test_accuracy'] == rb['test_accuracy']


def _free_port():
  import socket

  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_on_localhost_match_one_process(tmp_path, one_run):
  """jax.distributed over 127.0.0.1 (gloo): each process reads its slice of every batch,
  process 0 writes; the mask and the delta equal the single-process run's."""
  one_dir, cache = one_run
  port = _free_port()
  env = dict(os.environ, GPS_JAX_CACHE=str(cache), JAX_PLATFORMS='cpu')
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        '-m',
        'gps_jax.main',
        '--config=configs/demo.py',
        f'--workdir={tmp_path / "two"}',
        *TINY,
        *ONE,
        f'--coordinator_address=127.0.0.1:{port}',
        '--num_processes=2',
        f'--process_id={i}',
      ],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )  # fmt: skip
    for i in range(2)
  ]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
  assert 'final:' in outs[0] and 'final:' not in outs[1]  # one writer of the log
  a = checkpoint.load_delta(str(one_dir / 'checkpoint'))
  b = checkpoint.load_delta(str(tmp_path / 'two' / 'checkpoint'))
  for k in a['indices']:
    np.testing.assert_array_equal(a['indices'][k], b['indices'][k], err_msg=k)
  for part in ('delta', 'train'):
    for k in a[part]:
      if not k.endswith('/key/bias'):  # see test_cli_on_8_simulated_devices_matches_one_device
        np.testing.assert_allclose(a[part][k], b[part][k], atol=1e-6, err_msg=k)
  ra = json.loads((one_dir / 'results.json').read_text())
  rb = json.loads((tmp_path / 'two' / 'results.json').read_text())
  assert ra['test_accuracy'] == rb['test_accuracy']


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_delta(tmp_path, one_run):
  """SIGKILL mid-training, rerun the same command: it resumes from the latest checkpoint
  and ends with the delta of an uninterrupted run."""
  import signal
  import time

  cache = one_run[1]  # the upstream backbone is pretrained already
  args = (
    '--config.compare_methods=()', '--config.method=gps', '--config.train.steps=120',
    '--config.train.checkpoint_every_steps=10', '--config.train.log_every=10',
  )  # fmt: skip
  _run(tmp_path / 'full', cache, *args)
  cmd = [sys.executable, '-m', 'gps_jax.main', '--config=configs/demo.py',
         f'--workdir={tmp_path / "killed"}', *TINY, *args]  # fmt: skip
  env = dict(os.environ, GPS_JAX_CACHE=str(cache))
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  steps_dir = tmp_path / 'killed' / 'train_state'
  deadline = time.time() + 300
  while time.time() < deadline and not (steps_dir / '20').is_dir():
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  saved = sorted(int(p.name) for p in steps_dir.iterdir() if p.name.isdigit())
  assert saved and saved[-1] < 120, saved  # killed mid-training
  from gps_jax.checkpoint import TrainCheckpoints

  ckpts = TrainCheckpoints(str(steps_dir))
  meta = ckpts.restore_meta(saved[-1])
  ckpts.close()
  assert meta['data_position'] == {'step': saved[-1], 'examples': saved[-1] * 32}
  assert meta['base']['sha256'] and meta['mask_stats']['k'] == 2
  out = _run(tmp_path / 'killed', cache, *args)
  assert f'resuming from the checkpoint of step {saved[-1]}' in out
  a = checkpoint.load_delta(str(tmp_path / 'full' / 'checkpoint'))
  b = checkpoint.load_delta(str(tmp_path / 'killed' / 'checkpoint'))
  for k in a['indices']:
    np.testing.assert_array_equal(a['indices'][k], b['indices'][k], err_msg=k)
  for part in ('delta', 'train'):
    for k in a[part]:
      np.testing.assert_allclose(a[part][k], b[part][k], atol=1e-6, rtol=0, err_msg=k)


@pytest.mark.slow
def test_resuming_under_another_config_is_refused(tmp_path, one_run):
  cache = one_run[1]
  args = ('--config.compare_methods=()', '--config.method=gps', '--config.train.steps=10',
          '--config.train.checkpoint_every_steps=5')  # fmt: skip
  _run(tmp_path / 'run', cache, *args)
  out = _run(tmp_path / 'run', cache, *args, '--config.train.log_every=1')  # harmless change
  assert 'resuming from the checkpoint of step 10' in out
  env = dict(os.environ, GPS_JAX_CACHE=str(cache))
  cmd = [sys.executable, '-m', 'gps_jax.main', '--config=configs/demo.py',
         f'--workdir={tmp_path / "run"}', *TINY, *args, '--config.gps.k=3']  # fmt: skip
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode != 0
  assert 'holds checkpoints of a run with another config (changed: gps.k)' in proc.stderr
