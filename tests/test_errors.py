"""User errors become one ``error:`` line and exit status 1; bugs keep their traceback."""

import os

import numpy as np
import pytest
from cli_run import run_module

from gps_jax import errors
from gps_jax import methods


def _raised(fn):
  try:
    fn()
  except Exception as e:  # noqa: BLE001  (the test classifies whatever it raised)
    return e
  raise AssertionError('no exception')


def test_user_errors_and_bugs_are_told_apart():
  user = [
    errors.UserError('config.train.epochs=-2: must be a number > 0'),
    _raised(lambda: open('/no/such/file')),
    _raised(lambda: methods.get('nope')),  # a ValueError raised by gps_jax's own check
  ]
  for e in user:
    assert errors.user_message(e) == str(e)
  bugs = [
    _raised(lambda: np.zeros(3).reshape(2, 2)),  # a ValueError from inside NumPy
    _raised(lambda: len(None)),
    _raised(lambda: None.shape),
    KeyError('x'),
    RuntimeError('boom'),
  ]
  for e in bugs:
    assert errors.user_message(e) is None, repr(e)


def test_run_prints_one_line_or_reraises(capsys, monkeypatch):
  monkeypatch.delenv(errors.TRACEBACK_ENV, raising=False)

  def bad_input():
    raise errors.UserError('config.gps.k=0: must be an integer > 0')

  assert errors.run(bad_input) == 1
  assert capsys.readouterr().err == 'error: config.gps.k=0: must be an integer > 0\n'
  with pytest.raises(TypeError):
    errors.run(lambda: len(None))
  assert capsys.readouterr().err == ''
  assert errors.run(lambda: None) == 0
  monkeypatch.setenv(errors.TRACEBACK_ENV, '1')
  assert errors.run(bad_input) == 1
  err = capsys.readouterr().err
  assert 'Traceback' in err and err.endswith('error: config.gps.k=0: must be an integer > 0\n')


def _main(*args):
  env = {k: v for k, v in os.environ.items() if k != errors.TRACEBACK_ENV}
  return run_module('gps_jax.main', *args, env=env)


def test_main_bad_value_is_one_error_line(tmp_path):
  workdir = tmp_path / 'run'
  proc = _main('--config=configs/demo.py', f'--workdir={workdir}', '--config.train.epochs=-2')
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert proc.stderr.splitlines() == ['error: config.train.epochs=-2: must be a number > 0']
  assert not (workdir / 'results.json').exists() and not workdir.exists()


def test_main_unknown_key_names_the_nearest(tmp_path):
  proc = _main('--config=configs/demo.py', f'--workdir={tmp_path}', '--config.train.not_a_key=3')
  assert proc.returncode == 1, proc.stderr[-3000:]
  lines = proc.stderr.splitlines()
  assert len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith(
    'error: --config.train.not_a_key: no such key in config.train; nearest: train.'
  )


def test_main_help_has_no_tensorflow_start_up_lines():
  proc = _main('--helpshort')
  out = proc.stdout + proc.stderr
  assert 'oneDNN' not in out and 'absl::InitializeLog' not in out, out[-3000:]
  assert out.count('Command line: python -m gps_jax.main') == 1, out[-3000:]
  assert '--workdir' in proc.stdout

