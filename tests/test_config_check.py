"""Tests of gps_jax.config_check: one bad key, one UserError naming it, before anything runs."""

import pytest

from gps_jax import config_check
from gps_jax.config_defaults import experiment_config, upstream_config
from gps_jax.errors import UserError


def _config(**overrides):
  c = experiment_config()
  for key, value in overrides.items():
    node = c
    *groups, name = key.split('.')
    for g in groups:
      node = node[g]
    node[name] = value
  return c


def test_defaults_are_valid(tmp_path):
  config_check.validate(_config())
  weights = tmp_path / 'base.npz'
  weights.write_bytes(b'')
  config_check.validate(_config(**{'model.checkpoint': str(weights), 'train.steps': 5}))
  config_check.validate(_config(**{'train.steps': 5, 'train.epochs': 0}))  # steps win
  # The reference's recipe: timm's per-epoch schedule, 10 cooldown epochs, timm's head.
  config_check.validate(
    _config(**{
      'optim.schedule': 'timm_epoch_cosine', 'train.cooldown_epochs': 10,
      'model.head_init': 'trunc_normal',
    })
  )  # fmt: skip
  config_check.validate(_config(**{'train.cooldown_epochs': 0}))  # 0 = no cooldown


BAD = [
  ('train.epochs', -2, 'config.train.epochs=-2: must be a number > 0'),
  ('train.epochs', 0, 'config.train.epochs=0'),
  ('optim.lr', float('nan'), 'config.optim.lr=nan'),
  ('train.steps', -1, 'config.train.steps=-1: must be a number >= 0'),
  ('data.batch_size', 0, 'config.data.batch_size=0'),
  ('data.eval_batch_size', -8, 'config.data.eval_batch_size=-8'),
  ('gps.batch_size', -1, 'config.gps.batch_size=-1'),
  ('optim.lr', 0.0, 'config.optim.lr=0.0'),
  ('train.log_every', 0, 'config.train.log_every=0'),
  ('train.keep_checkpoints', 0, 'config.train.keep_checkpoints=0'),
  ('optim.warmup_epochs', -1.0, 'config.optim.warmup_epochs=-1.0'),
  ('gps.k', 0, 'config.gps.k=0: must be an integer > 0'),
  ('gps.k', -3, 'config.gps.k=-3'),
  ('method', 'nope', "config.method='nope'"),
  ('gps.score', 'nope', "config.gps.score='nope'"),
  ('train.update_mode', 'nope', "config.train.update_mode='nope'"),
  ('optim.name', 'nope', "config.optim.name='nope'"),
  ('optim.schedule', 'cosine', "config.optim.schedule='cosine': use one of warmup_cosine, timm"),
  ('train.cooldown_epochs', -1, 'config.train.cooldown_epochs=-1: must be a number >= 0'),
  ('model.head_init', 'normal', "config.model.head_init='normal': use one of zeros, trunc_normal"),
  ('data.source', 'nope', "config.data.source='nope'"),
  ('data.recipe', 'nope', "config.data.recipe='nope'"),
  ('model.checkpoint', '/no/such/file.npz', "config.model.checkpoint='/no/such/file.npz'"),
  (
    'optim.weight_decay_rules',
    (('(bias', 0.0),),
    "config.optim.weight_decay_rules[0]=('(bias', 0.0): not a regular expression",
  ),
  (
    'optim.weight_decay_rules',
    (('bias', -1.0), ('.*', 1.0)),
    'config.optim.weight_decay_rules[0] multiplier=-1.0: must be a number >= 0',
  ),
  ('optim.weight_decay_rules', (('.*',),), 'config.optim.weight_decay_rules[0]=(\'.*\',): want'),
  ('data.train_interpolation', 'nearest', "config.data.train_interpolation='nearest'"),
  ('data.eval_interpolation', 'random', "config.data.eval_interpolation='random'"),
  ('lora.rank', 0, 'config.lora.rank=0: must be an integer > 0'),
  ('lora.alpha', -1.0, 'config.lora.alpha=-1.0'),
  ('adapter.dim', 0, 'config.adapter.dim=0'),
  ('vpt.tokens', -5, 'config.vpt.tokens=-5: must be an integer >= 0'),
]


@pytest.mark.parametrize('key,value,message', BAD, ids=[f'{k}={v}' for k, v, _ in BAD])
def test_a_bad_value_is_named(key, value, message):
  with pytest.raises(UserError) as e:
    config_check.validate(_config(**{key: value}))
  assert str(e.value).startswith(message), str(e.value)
  assert isinstance(e.value, ValueError)  # callers that catch ValueError keep working


def test_compare_methods_are_checked():
  with pytest.raises(UserError, match="config.method='nope'"):
    config_check.validate(_config(compare_methods=('gps', 'nope')))


def test_upstream_stage(tmp_path):
  upstream = upstream_config()
  upstream.train.epochs = -1
  with pytest.raises(UserError, match=r'^config.upstream: config.train.epochs=-1'):
    config_check.validate(_config(upstream=upstream))
  weights = tmp_path / 'mine.npz'
  weights.write_bytes(b'')
  c = _config(upstream=upstream_config(), **{'model.checkpoint': str(weights)})
  with pytest.raises(UserError, match='config.upstream.*would replace it'):
    config_check.validate(c)


def test_unknown_key_names_the_nearest():
  c = _config()
  assert config_check.unknown_key(c, 'train.epochs') is None
  msg = config_check.unknown_key(c, 'train.epoch')
  assert msg.startswith('--config.train.epoch: no such key in config.train; nearest: train.epochs')
  assert config_check.unknown_key(c, 'trian.steps').startswith(
    '--config.trian.steps: no such key in the config; nearest: train'
  )
  assert 'not a group of keys' in config_check.unknown_key(c, 'seed.x')
