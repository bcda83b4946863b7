"""timm checkpoints of the Swin Transformer: conversion of a timm ``SwinTransformer`` state dict
into the parameter tree of :class:`gps_jax.models.swin.SwinTransformer`, and timm's resize of
relative position bias tables to another window size."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gps_jax.models.swin import SwinTransformer, to_2tuple
from gps_jax.tree import flat, unflat

log = logging.getLogger(__name__)


def _beit_source_positions(src: int, dst: int) -> list[float]:
  """Source sample positions of timm's (BEiT's) table resize: a geometric progression whose
  ratio q in [1.01, 1.5] is bisected so that the src grid spans about the dst grid."""
  left, right = 1.01, 1.5
  while right - left > 1e-6:
    q = (left + right) / 2.0
    gp = (1.0 - q ** (src // 2)) / (1.0 - q)
    if gp > dst // 2:
      right = q
    else:
      left = q
  dis, cur = [], 1
  for i in range(src // 2):
    dis.append(cur)
    cur += q ** (i + 1)
  return [-d for d in reversed(dis)] + [0] + dis


def _linear_weights(points: np.ndarray, x: np.ndarray):
  """Bracketing indices and distances of timm's ``RegularGridInterpolator`` (piecewise
  linear on an uneven grid; values beyond the ends are those of the end points)."""
  right = np.minimum(np.searchsorted(points, x, side='left'), len(points) - 1)
  left = np.clip(right - 1, 0, len(points) - 1)
  dist_left = np.maximum(x - points[left], 0).astype(np.float32)
  dist_right = np.maximum(points[right] - x, 0).astype(np.float32)
  both = (dist_left == 0) & (dist_right == 0)
  dist_left[both] = 1.0
  dist_right[both] = 1.0
  return (left, right), (dist_left, dist_right)


def resize_relative_position_table(
  table, new_window, *, old_window: Sequence[int] | None = None
) -> np.ndarray:
  """Resizes a ((2w-1)*(2w-1), heads) relative position bias table to ``new_window``
  (int or (h, w)), per head, exactly as timm 1.0's ``resize_rel_pos_bias_table`` does by
  default (``TIMM_USE_SCIPY_INTERP`` unset): the source grid is placed on BEiT's geometric
  progression of offsets and sampled at the integer target offsets by piecewise-linear
  interpolation (which is not plain bicubic resizing). ``old_window`` defaults to the square
  window the table size implies. Computes in float32; returns the table's float dtype."""
  table = np.asarray(table)
  if table.ndim != 2:
    raise ValueError(f'relative position table must be (positions, heads), got {table.shape}')
  dst = tuple(2 * w - 1 for w in to_2tuple(new_window))
  if old_window is not None:
    src = tuple(2 * w - 1 for w in to_2tuple(old_window))
  else:
    side = math.isqrt(table.shape[0])
    if side * side != table.shape[0] or side % 2 == 0:
      raise ValueError(
        f'relative position table of {table.shape[0]} positions is not a (2w-1)^2 grid; '
        'pass old_window'
      )
    src = (side, side)
  if src[0] * src[1] != table.shape[0]:
    raise ValueError(f'table of shape {table.shape} does not fit old window {old_window}')
  if src == dst:
    return table.copy()
  heads = table.shape[1]
  grid = table.astype(np.float32).T.reshape(heads, src[0], src[1])
  py = np.asarray(_beit_source_positions(src[0], dst[0]), np.float32)
  px = np.asarray(_beit_source_positions(src[1], dst[1]), np.float32)
  ty, tx = dst[0] // 2, dst[1] // 2
  ty_, tx_ = np.arange(-ty, ty + 1, dtype=np.float32), np.arange(-tx, tx + 1, dtype=np.float32)
  (yl, yr), (dyl, dyr) = _linear_weights(py, ty_)
  (xl, xr), (dxl, dxr) = _linear_weights(px, tx_)
  # sum over the 4 corners of value * (distance to the opposite bracket), as timm does.
  out = (
    grid[:, yl][:, :, xl] * (dyr[:, None] * dxr[None, :])
    + grid[:, yl][:, :, xr] * (dyr[:, None] * dxl[None, :])
    + grid[:, yr][:, :, xl] * (dyl[:, None] * dxr[None, :])
    + grid[:, yr][:, :, xr] * (dyl[:, None] * dxl[None, :])
  ) / ((dyl + dyr)[:, None] * (dxl + dxr)[None, :])
  out = out.reshape(heads, dst[0] * dst[1]).T
  return np.ascontiguousarray(out.astype(table.dtype if table.dtype.kind == 'f' else np.float32))


_IGNORED_BUFFERS = ('relative_position_index', 'attn_mask')


def _timm_name(path: str) -> str:
  """'layers_1/blocks_0/attn/qkv/kernel' -> 'layers.1.blocks.0.attn.qkv.weight'."""
  parts = path.split('/')
  leaf = {'kernel': 'weight', 'scale': 'weight'}.get(parts[-1], parts[-1])
  mods = []
  for p in parts[:-1]:
    for prefix in ('layers_', 'blocks_'):
      if p.startswith(prefix) and p[len(prefix) :].isdigit():
        p = f'{prefix[:-1]}.{p[len(prefix) :]}'
    mods.append(p)
  if mods == ['head']:
    mods = ['head', 'fc']
  return '.'.join(mods + [leaf])


def _to_flax(path: str, value: np.ndarray) -> np.ndarray:
  if path.endswith('/kernel'):
    if value.ndim == 4:  # conv OIHW -> HWIO
      return value.transpose(2, 3, 1, 0)
    return value.T  # Linear (out, in) -> Dense (in, out)
  return value


def _timm_shape(path: str, shape: tuple) -> tuple:
  if path.endswith('/kernel'):
    return (*shape[2:][::-1], *shape[:2][::-1]) if len(shape) == 4 else shape[::-1]
  return shape


def _expected_shapes(model: SwinTransformer) -> dict[str, tuple]:
  dummy = jnp.zeros((1, model.image_size, model.image_size, 3), jnp.float32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), dummy, train=False)['params'])
  return {k: tuple(v.shape) for k, v in flat(shapes).items()}


def swin_params_from_timm(state_dict: Mapping[str, Any], model: SwinTransformer) -> dict:
  """Converts a timm ``SwinTransformer`` state dict (name -> NumPy array, e.g. from
  ``safetensors.numpy.load_file``) into the nested float32 params of ``model``.

  Conv weights OIHW -> HWIO, Linear weights transposed, LayerNorm weight -> scale. Buffers
  (``relative_position_index``, ``attn_mask``) are ignored. A relative position table of
  another window is resized with :func:`resize_relative_position_table` (as timm's
  ``checkpoint_filter_fn``). A ``head.fc`` of another shape, or any head when
  ``num_classes == 0``, is dropped; a head absent from the checkpoint or dropped is replaced
  by the model's fresh zero head. Every other missing, unexpected or mis-shaped key is
  reported by name in one ValueError.
  """
  expected = _expected_shapes(model)  # flax path -> shape
  by_timm = {_timm_name(p): p for p in expected}
  loaded = {k: np.asarray(v) for k, v in state_dict.items() if not k.endswith(_IGNORED_BUFFERS)}

  # The classifier: kept only when it fits exactly.
  ckpt_head = sorted(k for k in loaded if k.startswith('head.'))
  model_head = {_timm_name(p): p for p in expected if p.startswith('head/')}
  head_fits = set(ckpt_head) == set(model_head) and all(
    loaded[k].shape == _timm_shape(model_head[k], expected[model_head[k]]) for k in model_head
  )
  if ckpt_head and not head_fits:
    log.info(
      'dropping checkpoint head %s; the model head %s keeps its fresh zero init',
      {k: loaded[k].shape for k in ckpt_head},
      {p: expected[p] for p in model_head.values()},
    )
    for k in ckpt_head:
      del loaded[k]

  problems, out = [], {}
  for name, path in sorted(by_timm.items()):
    want = _timm_shape(path, expected[path])
    if name not in loaded:
      if path.startswith('head/'):
        out[path] = np.zeros(expected[path], np.float32)
      else:
        problems.append(f'missing {name} {want} (model param {path})')
      continue
    value = loaded[name]
    if value.dtype.kind != 'f':
      problems.append(f'non-float {name} dtype {value.dtype}')
      continue
    if path.endswith('/relative_position_bias_table') and value.shape != want:
      side = math.isqrt(value.shape[0]) if value.ndim == 2 else 0
      if (
        value.ndim == 2 and value.shape[1] == want[1] and side * side == value.shape[0] and side % 2
      ):
        new_window = (math.isqrt(want[0]) + 1) // 2
        log.info('resizing %s from %s to %s', name, value.shape, want)
        value = resize_relative_position_table(value, new_window)
    if value.shape != want:
      problems.append(f'wrong shape {name}: checkpoint {value.shape}, model {want} ({path})')
      continue
    out[path] = np.asarray(_to_flax(path, value), np.float32)
  problems += [f'unexpected {k} {loaded[k].shape}' for k in sorted(set(loaded) - set(by_timm))]
  if problems:
    raise ValueError(
      f'timm Swin state dict does not fit the model ({len(problems)} problems):\n  '
      + '\n  '.join(problems)
    )
  return unflat(out)
