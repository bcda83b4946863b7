"""config_defaults is the single source of truth: configs/*.py set only declared keys."""

import importlib.util
import os

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from gps_jax import models
from gps_jax.config_defaults import experiment_config, upstream_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Each config file with a couple of arguments (every backbone family among them).
CASES = [
  ('demo.py', None),
  ('vtab.py', 'cifar100'),
  ('vtab.py', 'dtd,val,folder'),
  ('fgvc.py', 'cub'),
  ('fgvc.py', 'stanford_dogs,swin_b,val'),
  ('fgvc.py', 'cub,convnext_b,tfds'),
  ('cifar100.py', None),
  ('cifar100.py', 'val'),
]

# The module fields a model config may set besides the declared model keys
# (config_defaults: "the keys of gps_jax.models.vit_config / swin_config / convnext_config").
FAMILY_FIELDS = {
  'vit': set(models.vit_config('B/16', num_classes=0, image_size=224)),
  'swin': set(models.swin_config('B', num_classes=0, image_size=224)),
  'convnext': set(models.convnext_config('B', num_classes=0, image_size=224)),
}


def _get_config(file, arg):
  spec = importlib.util.spec_from_file_location(file, os.path.join(REPO, 'configs', file))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()


def undeclared(config, declared, prefix=''):
  """Dotted keys of `config` that `declared` lacks (model family fields allowed)."""
  out = []
  for key, value in config.items():
    name = f'{prefix}{key}'
    if key not in declared:
      family = FAMILY_FIELDS.get(config.get('name')) if prefix.endswith('model.') else None
      if not family or key not in family:
        out.append(name)
      continue
    default = declared[key]
    if key == 'upstream' and value is not None:
      out += undeclared(value, upstream_config(), f'{name}.')
    elif key == 'method_overrides':  # {method: overrides of declared keys}
      for method, overrides in value.items():
        out += undeclared(overrides, experiment_config(), f'{name}.{method}.')
    elif isinstance(default, ml_collections.ConfigDict) and isinstance(
      value, ml_collections.ConfigDict
    ):
      out += undeclared(value, default, f'{name}.')
  return out


@pytest.mark.parametrize('file,arg', CASES)
def test_config_files_set_only_declared_keys(file, arg):
  assert undeclared(_get_config(file, arg), experiment_config()) == []


def test_the_check_can_fail():
  c = experiment_config()
  c.train.warmup_steps = 3  # not a key of gps_jax
  c.model.patch_size = 7  # a ViT field: allowed
  c.model.window_size = 7  # a Swin field, not a ViT one
  c.method_overrides = {'full': {'optim': {'lr': 1e-3, 'lr_scale': 2.0}}}
  c.upstream = experiment_config()  # lacks upstream_config's name and cache_dir ...
  c.upstream.seed_offset = 1  # ... which is fine; this is not
  assert sorted(undeclared(c, experiment_config())) == [
    'method_overrides.full.optim.lr_scale',
    'model.window_size',
    'train.warmup_steps',
    'upstream.seed_offset',
  ]


def test_upstream_config_declares_its_cache_keys():
  u = upstream_config()
  assert (u.name, u.cache_dir) == ('upstream', '')
  assert set(u) - set(experiment_config()) == {'name', 'cache_dir'}
  demo = _get_config('demo.py', None)
  assert demo.upstream.name == 'demo-vit-fashion-mnist' and demo.upstream.cache_dir == ''


def test_command_line_overrides_reach_the_declared_keys():
  argv = [
    'prog',
    f'--config={os.path.join(REPO, "configs", "demo.py")}',
    '--config.optim.b1=0.8',
    '--config.optim.b2=0.95',
    '--config.optim.eps=1e-6',
    '--config.optim.momentum=0.5',
    "--config.optim.weight_decay_rules=(('bias$', 0.0), ('.*', 1.0))",
    '--config.upstream.cache_dir=/tmp/gps_cache',
  ]
  fv = flags.FlagValues()
  # config_flags registers the override flags from the argv it is given.
  config_flags.DEFINE_config_file('config', flag_values=fv, sys_argv=argv)
  fv(argv)
  o = fv.config.optim
  assert (o.b1, o.b2, o.eps, o.momentum) == (0.8, 0.95, 1e-6, 0.5)
  assert tuple(map(tuple, o.weight_decay_rules)) == (('bias$', 0.0), ('.*', 1.0))
  assert fv.config.upstream.cache_dir == '/tmp/gps_cache'
