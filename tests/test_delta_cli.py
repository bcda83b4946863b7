"""python -m gps_jax.delta end to end, and broken checkpoints: one error line, no traceback."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from cli_run import REPO, run_module
from delta_env import (
  assert_params,
  make_result,
  reference_apply,
  save_at,
  sha_of,
)

from gps_jax import checkpoint
from gps_jax import delta as delta_lib
from gps_jax.errors import UserError


# ----------------------------------------------------------------------------- command line


def _cli(*args):
  return run_module('gps_jax.delta', *args)


def test_cli_inspect_and_apply(env, tmp_path):
  result = make_result(env, 60)
  path = save_at(env, 'cli', result)
  proc = _cli('inspect', path, '--json')
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout)
  assert report['total']['bytes'] == 5140 and report['base']['sha256'] == sha_of(env['base_file'])

  out = str(tmp_path / 'tuned.npz')
  proc = _cli('apply', path, '--base', env['base_file'], '--out', out)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with np.load(out, allow_pickle=False) as npz:
    assert_params({k: npz[k] for k in npz.files}, reference_apply(env, result))

  proc = _cli('apply', path, '--base', env['other_file'], '--out', str(tmp_path / 'x.npz'))
  assert proc.returncode == 1 and not os.path.exists(tmp_path / 'x.npz')
  assert sha_of(env['base_file']) in proc.stderr and sha_of(env['other_file']) in proc.stderr


def _garbage(env, tmp_path, kind):
  """A delta path whose files are broken in the way `kind` names."""
  import shutil

  good = save_at(env, f'garbage_src_{kind}', make_result(env, 70))
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
  good = save_at(env, 'orbax_is_asked', make_result(env, 71))
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
