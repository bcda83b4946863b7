"""timm checkpoints of the Swin Transformer: the names of a timm ``SwinTransformer`` state dict
for the parameter tree of :class:`gps_jax.models.swin.SwinTransformer`, and timm's resize of
relative position bias tables to another window size. The strict fit itself is
:func:`gps_jax.models.fitting.fit_params`, shared by every family."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gps_jax.models.swin import SwinTransformer
from gps_jax.models.swin_windows import to_2tuple
from gps_jax.models.timm_layout import TIMM_LEAVES, timm_layout


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


def _timm_name(path: str) -> str:
  """'layers_1/blocks_0/attn/qkv/kernel' -> 'layers.1.blocks.0.attn.qkv.weight'."""
  parts = path.split('/')
  leaf = TIMM_LEAVES.get(parts[-1], parts[-1])
  mods = []
  for p in parts[:-1]:
    for prefix in ('layers_', 'blocks_'):
      if p.startswith(prefix) and p[len(prefix) :].isdigit():
        p = f'{prefix[:-1]}.{p[len(prefix) :]}'
    mods.append(p)
  if mods == ['head']:
    mods = ['head', 'fc']
  return '.'.join(mods + [leaf])


def resize_table_hook(path: str, value: np.ndarray, want: tuple):
  """The fit's resize hook, as timm's ``checkpoint_filter_fn``: a square ((2w-1)^2, heads)
  relative position table of another window is resized to the model's window."""
  if not path.endswith('/relative_position_bias_table') or value.ndim != 2:
    return None
  side = math.isqrt(value.shape[0])
  if value.shape[1] != want[1] or side * side != value.shape[0] or not side % 2:
    return None
  return resize_relative_position_table(value, (math.isqrt(want[0]) + 1) // 2)


# A timm SwinTransformer state dict: the classifier is head.fc; the relative position index
# and the shifted-window mask are buffers, rebuilt by the model.
SWIN_TIMM = timm_layout(
  _timm_name,
  label='timm Swin state dict',
  head_prefix='head.',
  ignore=('relative_position_index', 'attn_mask'),
  resize=(resize_table_hook,),
)


def swin_params_from_timm(
  state_dict: Mapping[str, Any], model: SwinTransformer, *, source: str = '', init=None
) -> dict:
  """Converts a timm ``SwinTransformer`` state dict (name -> NumPy array, e.g. from
  ``safetensors.numpy.load_file``) into the nested float32 params of ``model``.

  Conv weights OIHW -> HWIO, Linear weights transposed, LayerNorm weight -> scale. Buffers
  (``relative_position_index``, ``attn_mask``) are ignored. A relative position table of
  another window is resized with :func:`resize_relative_position_table` (as timm's
  ``checkpoint_filter_fn``). A ``head.fc`` of another shape, or any head when
  ``num_classes == 0``, is dropped; a head absent from the checkpoint or dropped is replaced
  by the model's fresh head (its own init, `model.head_init`; from ``init`` when given). Every
  other missing, unexpected or mis-shaped key is reported by name in one ValueError
  (``source`` names the file).
  """
  return SWIN_TIMM.params(state_dict, model, source, init=init)
