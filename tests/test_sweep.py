"""Tests of the run orchestration: method overrides, the comparison table, the upstream cache key."""

import pytest

from gps_jax import sweep
from gps_jax import upstream
from gps_jax.config_defaults import experiment_config, upstream_config


def _config():
  c = experiment_config()
  c.optim.lr = 1e-2
  c.method_overrides = {'full': {'optim': {'lr': 1e-3}, 'train': {'epochs': 7}}}
  return c


def test_method_config_applies_only_its_overrides():
  c = _config()
  full = sweep.method_config(c, 'full')
  gps = sweep.method_config(c, 'gps')
  assert (full.method, full.optim.lr, full.train.epochs) == ('full', 1e-3, 7)
  assert (gps.method, gps.optim.lr, gps.train.epochs) == ('gps', 1e-2, 100)
  # The original config is untouched.
  assert (c.method, c.optim.lr) == ('gps', 1e-2)


def test_method_config_rejects_unknown_key():
  c = _config()
  c.method_overrides = {'full': {'optim': {'learning_rate': 1e-3}}}
  with pytest.raises(ValueError, match=r'config.method_overrides.full.optim.learning_rate'):
    sweep.method_config(c, 'full')


def _row(method, acc, val, seed):
  return {
    'method': method,
    'seed': seed,
    'test_accuracy': acc,
    'best_val_accuracy': val,
    'trainable_without_head': 1234,
    'share_without_head_pct': 0.5,
    'selection_seconds': 2.0,
    'train_seconds': 4.0,
  }


def test_format_comparison_mean_and_sample_std():
  rows = [_row('gps', 0.70, 0.60, 1), _row('gps', 0.74, 0.64, 2), _row('linear', 0.5, 0.4, 1)]
  lines = sweep.format_comparison(rows).splitlines()
  gps = lines[1].split()
  # mean 72 %, sample std of (70, 74) = sqrt(((-2)^2 + 2^2) / 1) = 2.83.
  assert gps[:4] == ['gps', '2', '72.00±2.83', '62.00±2.83']
  assert lines[2].split()[:4] == ['linear', '1', '50.00', '40.00']


def test_upstream_cache_key_follows_the_config(tmp_path):
  a = upstream_config()  # the config of an upstream stage: experiment keys + name, cache_dir
  a.cache_dir = str(tmp_path)
  b = upstream_config()
  b.cache_dir = str(tmp_path)
  assert upstream.cache_path(a) == upstream.cache_path(b)
  assert upstream.cache_path(a).startswith(str(tmp_path))
  b.train.epochs = 3
  assert upstream.cache_path(a) != upstream.cache_path(b)
  assert upstream.recipe(b) == {'train.epochs': 3}  # what differs from the defaults


def test_upstream_cache_key_survives_a_new_default_key(tmp_path, monkeypatch):
  """A key added to the defaults later, at its default value, keeps every cache file;
  set to another value it is part of the recipe."""
  a = upstream_config()
  a.cache_dir = str(tmp_path)
  before = upstream.cache_path(a)

  def with_new_key():
    c = upstream_config()
    c.train.new_knob = 'same'
    return c

  monkeypatch.setattr(upstream, 'upstream_config', with_new_key)
  b = with_new_key()
  b.cache_dir = str(tmp_path)
  assert upstream.cache_path(b) == before
  b.train.new_knob = 'other'
  assert upstream.cache_path(b) != before


def test_run_config_checks_the_config_before_anything_runs(tmp_path):
  c = _config()
  c.train.epochs = -2
  with pytest.raises(ValueError, match=r'^config.train.epochs=-2'):
    sweep.run_config(c, str(tmp_path / 'run'))
  c = _config()
  c.compare_methods = ('gps', 'full')
  c.method_overrides = {'full': {'optim': {'lr': -1.0}}}
  with pytest.raises(ValueError, match=r'^config.method_overrides.full: config.optim.lr=-1.0'):
    sweep.run_config(c, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()
