"""Checks an experiment config once, before anything runs.

`validate(config)` raises one UserError (a ValueError) naming the first bad key:
positive durations and batch sizes, known method / score / update-mode /
optimizer / lr schedule / head init / data source / recipe names, a known
selection level and valid exclude regexes (gps.level, gps.exclude), K >= 1,
checkpoint files that exist, and no `upstream` stage beside a user-given
`model.checkpoint` (the upstream stage would replace it). A wrong value then
fails in a second with its key named, not after minutes of start-up, or never
(epochs=-2 once "trained" -50 steps and exited 0). Deeper checks (a data set
that is not prepared, a checkpoint that does not fit the model) stay where the
file is read.
"""

from __future__ import annotations

import difflib
import math
import os
import re

import ml_collections

from gps_jax import methods
from gps_jax import optim
from gps_jax import scoring
from gps_jax import selection
from gps_jax import sparse_grad
from gps_jax.data.augment import INTERPOLATIONS
from gps_jax.data.input_pipeline import RECIPES
from gps_jax.data.splits import SOURCES, task_of
from gps_jax.errors import UserError
from gps_jax.models.layers import REMAT_POLICIES
from gps_jax.models.model_config import HEAD_INITS
from gps_jax.trainer import MODES

# Keys that must be > 0, and keys that may also be 0 (0 = off / default).
POSITIVE = ('data.batch_size', 'data.eval_batch_size', 'optim.lr', 'train.log_every')
NON_NEGATIVE = (
  'train.steps',
  'gps.batch_size',
  'train.checkpoint_every_steps',
  'optim.warmup_epochs',
  'train.eval_every_epochs',
  'train.cooldown_epochs',
  'optim.weight_decay',
)


def _get(c: ml_collections.ConfigDict, key: str):
  node = c
  for part in key.split('.'):
    node = node[part]
  return node


def _one_of(key: str, value, choices) -> None:
  if value not in choices:
    raise UserError(f'config.{key}={value!r}: use one of {", ".join(map(str, choices))}')


def _number(key: str, value, *, zero_ok: bool = False, integer: bool = False) -> None:
  kinds = (int,) if integer else (int, float)
  ok = isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)
  if not ok or value < 0 or (value == 0 and not zero_ok):
    want = ('an integer' if integer else 'a number') + (' >= 0' if zero_ok else ' > 0')
    raise UserError(f'config.{key}={value!r}: must be {want}')


def validate(config: ml_collections.ConfigDict, *, what: str = 'config') -> None:
  """Raises a UserError naming the first key of `config` that cannot run."""
  try:
    _validate(config)
  except ValueError as e:  # methods.get and a nested stage raise their own
    if what == 'config' and isinstance(e, UserError):
      raise
    prefix = '' if what == 'config' else f'{what}: '
    raise UserError(f'{prefix}{e}') from None


def _validate(c: ml_collections.ConfigDict) -> None:
  methods.get(c.method)
  for method in c.compare_methods:
    methods.get(method)
  _gps(c.gps)
  _one_of('train.update_mode', c.train.update_mode, MODES)
  _one_of('train.sparse_grad', c.train.sparse_grad, sparse_grad.MODES)
  _one_of('train.base_dtype', c.train.base_dtype, ('float32', 'bfloat16'))
  _one_of('train.compute_dtype', c.train.compute_dtype, ('', 'float32', 'bfloat16'))
  _one_of('train.remat', c.train.remat, ('', *REMAT_POLICIES))
  _one_of('optim.name', c.optim.name, optim.OPTIMIZERS)
  _one_of('optim.schedule', c.optim.schedule, optim.SCHEDULES)
  # A hand-built model config (config_defaults.vit_b16_model) may leave it to the module.
  _one_of('model.head_init', c.model.head_init, HEAD_INITS)
  for key in ('train_interpolation', 'select_interpolation'):
    _one_of(f'data.{key}', c.data[key], INTERPOLATIONS)
  _one_of('data.eval_interpolation', c.data.eval_interpolation, INTERPOLATIONS[:2])
  _one_of('data.source', c.data.source, SOURCES)
  _one_of('data.recipe', c.data.recipe, RECIPES)
  if task_of(c.data) == 'segmentation':
    if c.data.recipe != 'resize':  # a crop of the image would need the same crop of its mask
      raise UserError(
        f'config.data.recipe={c.data.recipe!r}: a segmentation set ({c.data.source}) takes '
        "'resize' (its masks are resized with the images, never cropped)"
      )
    if c.train.mixup or c.train.cutmix:
      raise UserError('config.train.mixup / cutmix mix class labels: set them to 0 for segmentation')
  _number('gps.k', c.gps.k, integer=True)
  _number('gps.score_chunks', c.gps.score_chunks, integer=True)
  views = 2 * (c.gps.batch_size or c.data.batch_size)
  if isinstance(views, int) and views % c.gps.score_chunks:
    raise UserError(
      f'config.gps.score_chunks={c.gps.score_chunks}: must divide the {views} views of a '
      'selection batch (2 x gps.batch_size, or 2 x data.batch_size when that is 0)'
    )
  _number('train.epochs', c.train.epochs, zero_ok=bool(c.train.steps))  # steps > 0 wins
  for key in POSITIVE:
    _number(key, _get(c, key))
  for key in NON_NEGATIVE:
    _number(key, _get(c, key), zero_ok=True)
  _number('train.keep_checkpoints', c.train.keep_checkpoints, integer=True)
  # The baselines' sizes (their target regexes are checked on the model's paths).
  _number('lora.rank', c.lora.rank, integer=True)
  _number('lora.alpha', c.lora.alpha)
  _number('adapter.dim', c.adapter.dim, integer=True)
  _number('vpt.tokens', c.vpt.tokens, integer=True, zero_ok=True)
  _decay_rules(c.optim.weight_decay_rules)
  path = c.model.checkpoint
  if path and not os.path.isfile(os.path.expanduser(path)):
    raise UserError(f'config.model.checkpoint={path!r}: no such file')
  if c.upstream:
    if path:
      raise UserError(
        f'config.model.checkpoint={path!r} is given, but this config has an upstream stage '
        '(config.upstream) that trains the backbone and would replace it: use a config '
        'without an upstream stage to fine-tune your checkpoint'
      )
    validate(c.upstream, what='config.upstream')


def _gps(g: ml_collections.ConfigDict) -> None:
  """The selection keys: a known score source and level, regexes to exclude, and a
  scores_from path (whether it holds fitting scores is checked when they are read:
  an earlier run of the same sweep may write them)."""
  if g.score:
    _one_of('gps.score', g.score, tuple(scoring.SCORERS))
  _one_of('gps.level', g.level, selection.LEVELS)
  exclude = g.exclude
  if not isinstance(exclude, (str, tuple, list)):
    raise UserError(f'config.gps.exclude={exclude!r}: want a tuple of regexes')
  try:
    selection.exclude_patterns(exclude)
  except ValueError as e:
    raise UserError(str(e)) from None
  if not isinstance(g.scores_from, str):
    raise UserError(f'config.gps.scores_from={g.scores_from!r}: want a workdir path')


def _decay_rules(rules) -> None:
  """(regex, multiplier >= 0) pairs; whether they cover every parameter is checked when
  the optimizer meets the parameters (the paths are not known here)."""
  for i, rule in enumerate(rules):
    where = f'config.optim.weight_decay_rules[{i}]={tuple(rule)!r}'
    if len(rule) != 2 or not isinstance(rule[0], str):
      raise UserError(f'{where}: want a (regex, multiplier) pair')
    try:
      re.compile(rule[0])
    except re.error as e:
      raise UserError(f'{where}: not a regular expression ({e})') from None
    _number(f'optim.weight_decay_rules[{i}] multiplier', rule[1], zero_ok=True)


def unknown_key(config: ml_collections.ConfigDict, key: str) -> str | None:
  """For an override ``--config.<key>`` that `config` lacks: a message naming the
  nearest existing keys (ml_collections only says AttributeError: "'<name>'");
  None when `key` exists."""
  node, where = config, ''
  for part in key.split('.'):
    if not isinstance(node, ml_collections.ConfigDict):
      return f'--config.{key}: config.{where[:-1]} is {node!r}, not a group of keys'
    if part not in node:
      names = sorted(node.keys())
      near = difflib.get_close_matches(part, names, n=5, cutoff=0.3) or names[:8]
      group = f'config.{where[:-1]}' if where else 'the config'
      return f'--config.{key}: no such key in {group}; nearest: ' + ', '.join(
        where + n for n in near
      )
    node, where = node[part], f'{where}{part}.'
  return None
