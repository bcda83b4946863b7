"""timm checkpoints of ConvNeXt: conversion of a timm ``ConvNeXt`` state dict into the parameter
tree of :class:`gps_jax.models.convnext.ConvNeXt`."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from gps_jax.models.convnext import ConvNeXt
from gps_jax.tree import flat, unflat

log = logging.getLogger(__name__)

_TIMM_MODULES = (
  (r'^stem/conv$', 'stem.0'),
  (r'^stem/norm$', 'stem.1'),
  (r'^stages_(\d+)/downsample/norm$', r'stages.\1.downsample.0'),
  (r'^stages_(\d+)/downsample/conv$', r'stages.\1.downsample.1'),
  (r'^stages_(\d+)/blocks_(\d+)$', r'stages.\1.blocks.\2'),  # gamma
  (r'^stages_(\d+)/blocks_(\d+)/(conv_dw|norm)$', r'stages.\1.blocks.\2.\3'),
  (r'^stages_(\d+)/blocks_(\d+)/mlp/(fc1|fc2)$', r'stages.\1.blocks.\2.mlp.\3'),
  (r'^final_norm$', 'head.norm'),
  (r'^head$', 'head.fc'),
)
_TIMM_LEAVES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'gamma': 'gamma'}
_TIMM_HEAD = ('head.fc.weight', 'head.fc.bias')


def _timm_name(path: str) -> str:
  """'stages_1/blocks_0/mlp/fc1/kernel' -> 'stages.1.blocks.0.mlp.fc1.weight'."""
  module, _, leaf = path.rpartition('/')
  for pattern, repl in _TIMM_MODULES:
    if re.match(pattern, module):
      return re.sub(pattern, repl, module) + '.' + _TIMM_LEAVES[leaf]
  raise AssertionError(f'no timm name for ConvNeXt parameter {path!r}')  # a bug here


def _timm_shape(shape: tuple) -> tuple:
  """The timm (torch) shape of a Flax leaf: HWIO conv -> OIHW, (in, out) Linear -> (out, in)."""
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if len(shape) == 2:
    return shape[::-1]
  return shape


def _from_timm(array: np.ndarray) -> np.ndarray:
  array = np.asarray(array, dtype=np.float32)
  if array.ndim == 4:
    return np.ascontiguousarray(array.transpose(2, 3, 1, 0))
  if array.ndim == 2:
    return np.ascontiguousarray(array.T)
  return array


def convnext_params_from_timm(state_dict: Mapping[str, np.ndarray], model: ConvNeXt) -> dict:
  """Converts a timm ConvNeXt state dict into the nested Flax params of ``model``.

  ``state_dict`` maps timm 1.0 names (``stem.0.weight``, ``stages.{i}.downsample.{0,1}.*``,
  ``stages.{i}.blocks.{j}.{conv_dw,norm,mlp.fc1,mlp.fc2}.*``, ``...gamma``, ``head.norm.*``,
  ``head.fc.*``; the names timm has used since it added ConvNeXt) to numpy arrays, e.g.
  from ``safetensors.numpy.load_file`` or ``{k: v.numpy() for k, v in sd.items()}``. Convs go
  from OIHW to HWIO, Linear weights are transposed; the result is float32 ``np.ndarray``s.

  The classifier ``head.fc.*`` is the one exception to strict loading: when the model has
  num_classes == 0, or the checkpoint's head does not fit the model (another class count,
  or only one of weight/bias), or the checkpoint has no head, the checkpoint's head is
  dropped and the model gets a fresh zero head (zero kernel and bias, the model's own
  init) -- a new task gets a new head. Everything else must match exactly: every missing,
  unexpected, mis-shaped or non-float key is named in one ValueError.

  The expected names and shapes come from ``jax.eval_shape`` of ``model.init`` (nothing is
  computed). Checkpoints of the original facebookresearch/ConvNeXt repository
  (``downsample_layers.*``, ``dwconv``, ``pwconv1``) must first go through timm's
  ``checkpoint_filter_fn``.
  """
  dummy = jax.ShapeDtypeStruct((1, model.image_size, model.image_size, 3), jnp.float32)
  shapes = jax.eval_shape(
    lambda x: model.init(jax.random.PRNGKey(0), x, train=False)['params'], dummy
  )
  expected = {k: tuple(v.shape) for k, v in flat(shapes).items()}
  names = {k: _timm_name(k) for k in expected}
  model_head = {k for k in expected if k.startswith('head/')}
  loaded = dict(state_dict)

  file_head = {k for k in _TIMM_HEAD if k in loaded}
  head_fits = bool(model_head) and all(
    names[k] in loaded and tuple(np.shape(loaded[names[k]])) == _timm_shape(expected[k])
    for k in model_head
  )
  if file_head and not head_fits:
    log.info(
      'dropping the checkpoint head %s; the model head %s keeps its fresh zero init',
      {k: tuple(np.shape(loaded[k])) for k in sorted(file_head)},
      {k: expected[k] for k in sorted(model_head)},
    )
    for k in file_head:
      del loaded[k]

  problems, out = [], {}
  for path in sorted(expected, key=lambda p: names[p]):
    name, want = names[path], _timm_shape(expected[path])
    if name not in loaded:
      if path in model_head:
        out[path] = np.zeros(expected[path], np.float32)  # the model's head init: zeros
      else:
        problems.append(f'missing {name} {want} (for {path})')
      continue
    value = loaded[name]
    got = tuple(np.shape(value))
    if got != want:
      problems.append(f'wrong shape {name}: checkpoint {got}, model needs {want} (for {path})')
    elif np.asarray(value).dtype.kind != 'f':
      problems.append(f'non-float dtype {name} {np.asarray(value).dtype}')
    else:
      out[path] = _from_timm(value)
  used = set(names.values())
  problems += [f'unexpected {k} {tuple(np.shape(loaded[k]))}' for k in sorted(set(loaded) - used)]
  if problems:
    raise ValueError(
      f'timm ConvNeXt state dict does not fit the model ({len(problems)} problems):\n  '
      + '\n  '.join(problems)
    )
  return unflat(out)
