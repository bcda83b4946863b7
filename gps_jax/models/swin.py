"""Swin Transformer (Liu et al. 2021) in Flax Linen, equal to timm 1.0's ``SwinTransformer``.

The computation follows ``timm.models.swin_transformer`` (timm >= 0.9, NHWC inside stages):
patch embedding (p x p conv + LayerNorm), stages whose PatchMerging downsample sits at the
START of stages 1.., window attention with a relative position bias table indexed by a
constant relative position index, shifted windows (every odd block) with the -100 attention
mask, zero padding of resolutions that are not a multiple of the window, a final LayerNorm
and global average pooling. As in timm (``always_partition=False``, ``strict_img_size=True``),
a block whose feature resolution is <= the window size uses a window equal to the resolution
and no shift; the relative position table of such a block is sized for the clamped window.

Parameter layout (``'/'``-joined paths; every submodule is named explicitly)::

    patch_embed/proj/{kernel (p,p,3,D), bias}     patch_embed/norm/{scale,bias}
    layers_{i}/downsample/norm/{scale,bias}       (i >= 1; LayerNorm over 4C)
    layers_{i}/downsample/reduction/kernel        (4C, 2C), no bias
    layers_{i}/blocks_{j}/norm1/{scale,bias}
    layers_{i}/blocks_{j}/attn/qkv/{kernel (C,3C), bias (3C,)}   one fused Dense, like timm
    layers_{i}/blocks_{j}/attn/relative_position_bias_table      ((2w-1)^2, heads)
    layers_{i}/blocks_{j}/attn/proj/{kernel,bias}
    layers_{i}/blocks_{j}/norm2/{scale,bias}
    layers_{i}/blocks_{j}/mlp/{fc1,fc2}/{kernel,bias}
    norm/{scale,bias}                             final LayerNorm
    head/{kernel,bias}                            only when num_classes > 0 (zero-initialised)

:func:`swin_params_from_timm` converts a timm state dict (NumPy arrays) into this layout.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gps_jax.models.model_config import module_fields, named_config, task_head
from gps_jax.models.vit import _drop_path
from gps_jax.tree import flat, unflat

log = logging.getLogger(__name__)

LN_EPSILON = 1e-5  # torch.nn.LayerNorm's default, used throughout timm's Swin.
MASK_VALUE = -100.0  # timm / the original Swin fill the shifted-window mask with -100, not -inf.
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

# name -> (embed_dim, depths, num_heads); timm's swin_{tiny,small,base,large}_patch4_window7_224.
SWIN_VARIANTS = {
  'T': dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
  'S': dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
  'B': dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
  'L': dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)),
}

_dense_init = nn.initializers.truncated_normal(stddev=0.02)


# ----------------------------------------------------------------------------------------------
# Constants computed in NumPy (not params).


def _pair(v) -> tuple[int, int]:
  return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


def relative_position_index(window: Sequence[int]) -> np.ndarray:
  """(Wh*Ww, Wh*Ww) int index into the ((2Wh-1)*(2Ww-1), heads) bias table, as timm's
  ``get_relative_position_index``: (dy + Wh - 1) * (2Ww - 1) + (dx + Ww - 1)."""
  wh, ww = _pair(window)
  coords = np.stack(np.meshgrid(np.arange(wh), np.arange(ww), indexing='ij')).reshape(2, -1)
  rel = coords[:, :, None] - coords[:, None, :]  # 2, N, N
  return (rel[0] + wh - 1) * (2 * ww - 1) + (rel[1] + ww - 1)


def effective_window_shift(
  resolution: Sequence[int], window: Sequence[int], shift: Sequence[int]
) -> tuple[tuple[int, int], tuple[int, int]]:
  """timm's ``SwinTransformerBlock._calc_window_shift`` with ``always_partition=False``: per
  axis, a resolution <= the window becomes the window, and then gets no shift."""
  win = tuple(r if r <= w else w for r, w in zip(resolution, window))
  sh = tuple(0 if r <= w else s for r, w, s in zip(resolution, win, shift))
  return win, sh


def shifted_window_mask(
  padded_hw: Sequence[int], window: Sequence[int], shift: Sequence[int]
) -> Optional[np.ndarray]:
  """(num_windows, N, N) additive mask (0 / -100) of a shifted block over the padded
  resolution, as timm's ``get_attn_mask``; None when there is no shift."""
  if not any(shift):
    return None
  (h, w), (wh, ww), (sh, sw) = padded_hw, window, shift
  img = np.zeros((h, w), np.float32)
  cnt = 0
  for hs in (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)):
    for ws in (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)):
      img[hs, ws] = cnt
      cnt += 1
  win = img.reshape(h // wh, wh, w // ww, ww).transpose(0, 2, 1, 3).reshape(-1, wh * ww)
  diff = win[:, None, :] - win[:, :, None]
  return np.where(diff != 0, MASK_VALUE, 0.0).astype(np.float32)


def drop_path_rates(drop_path_rate: float, depths: Sequence[int]) -> list[list[float]]:
  """Per-block stochastic-depth rates, linear from 0 to drop_path_rate over all blocks and
  split per stage (timm's ``calculate_drop_path_rates(rate, depths, stagewise=True)``)."""
  total = sum(depths)
  rates = [drop_path_rate * k / max(total - 1, 1) for k in range(total)]
  out, start = [], 0
  for d in depths:
    out.append(rates[start : start + d])
    start += d
  return out


def _window_partition(x, window):
  """(B, H, W, C) -> (B * num_windows, Wh * Ww, C), windows in timm's order."""
  b, h, w, c = x.shape
  wh, ww = window
  x = x.reshape(b, h // wh, wh, w // ww, ww, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, wh * ww, c)


def _window_reverse(windows, window, b, h, w):
  """(B * num_windows, Wh * Ww, C) -> (B, H, W, C)."""
  wh, ww = window
  c = windows.shape[-1]
  x = windows.reshape(b, h // wh, w // ww, wh, ww, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, w, c)


def _layer_norm(name: str, dtype) -> nn.LayerNorm:
  # use_fast_variance=False: E[(x-mean)^2] like torch, not E[x^2]-mean^2 (loses precision).
  return nn.LayerNorm(epsilon=LN_EPSILON, dtype=dtype, use_fast_variance=False, name=name)


# ----------------------------------------------------------------------------------------------
# Modules.


class WindowAttention(nn.Module):
  """Multi-head self-attention inside windows with a learned relative position bias.

  Takes (B * num_windows, N, C) and an optional (num_windows, N, N) additive mask."""

  num_heads: int
  window_size: tuple[int, int]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask: Optional[np.ndarray] = None):
    b, n, c = x.shape
    heads = self.num_heads
    head_dim = c // heads
    wh, ww = self.window_size
    qkv = nn.Dense(3 * c, dtype=self.dtype, kernel_init=_dense_init, name='qkv')(x)
    qkv = qkv.reshape(b, n, 3, heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (b, n, heads, head_dim)
    attn = jnp.einsum('bqhd,bkhd->bhqk', q * (head_dim**-0.5), k)

    table = self.param(
      'relative_position_bias_table', _dense_init, ((2 * wh - 1) * (2 * ww - 1), heads)
    )
    index = relative_position_index(self.window_size).reshape(-1)
    bias = table[index].reshape(n, n, heads).transpose(2, 0, 1)  # heads, N, N
    attn = attn + bias[None].astype(attn.dtype)
    if mask is not None:
      nw = mask.shape[0]
      attn = attn.reshape(b // nw, nw, heads, n, n) + jnp.asarray(mask, attn.dtype)[None, :, None]
      attn = attn.reshape(b, heads, n, n)
    attn = jax.nn.softmax(attn.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum('bhqk,bkhd->bqhd', attn, v).reshape(b, n, c)
    return nn.Dense(c, dtype=self.dtype, kernel_init=_dense_init, name='proj')(out)


class Mlp(nn.Module):
  """fc1 -> exact GELU -> fc2 (timm's ``Mlp`` without dropout)."""

  hidden_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = nn.Dense(self.hidden_dim, dtype=self.dtype, kernel_init=_dense_init, name='fc1')(x)
    y = nn.gelu(y, approximate=False)
    return nn.Dense(x.shape[-1], dtype=self.dtype, kernel_init=_dense_init, name='fc2')(y)


class SwinTransformerBlock(nn.Module):
  """x + DropPath(W-MSA / SW-MSA(LN(x))), then x + DropPath(MLP(LN(x))) on (B, H, W, C).

  ``window_size`` / ``shift_size`` are the target values; the effective ones follow timm's
  rule (:func:`effective_window_shift`) for the input's resolution."""

  num_heads: int
  window_size: int
  shift_size: int
  mlp_ratio: float = 4.0
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, deterministic: bool):
    b, h, w, c = x.shape
    window, shift = effective_window_shift((h, w), _pair(self.window_size), _pair(self.shift_size))
    y = _layer_norm('norm1', self.dtype)(x)
    if any(shift):
      y = jnp.roll(y, (-shift[0], -shift[1]), axis=(1, 2))
    pad_h, pad_w = (-h) % window[0], (-w) % window[1]
    if pad_h or pad_w:
      y = jnp.pad(y, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    hp, wp = h + pad_h, w + pad_w
    mask = shifted_window_mask((hp, wp), window, shift)
    y = WindowAttention(self.num_heads, window, self.dtype, name='attn')(
      _window_partition(y, window), mask
    )
    y = _window_reverse(y, window, b, hp, wp)[:, :h, :w]
    if any(shift):
      y = jnp.roll(y, shift, axis=(1, 2))
    x = x + _drop_path(self, y, self.drop_path_rate, deterministic)
    y = _layer_norm('norm2', self.dtype)(x)
    y = Mlp(int(c * self.mlp_ratio), self.dtype, name='mlp')(y)
    return x + _drop_path(self, y, self.drop_path_rate, deterministic)


class PatchMerging(nn.Module):
  """2x2 neighbourhood -> concat (4C, timm's order) -> LayerNorm -> Dense(out_dim, no bias).
  Odd resolutions are zero-padded at the bottom / right first."""

  out_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    if h % 2 or w % 2:
      x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
      h, w = h + h % 2, w + w % 2
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5)
    x = x.reshape(b, h // 2, w // 2, 4 * c)
    x = _layer_norm('norm', self.dtype)(x)
    return nn.Dense(
      self.out_dim, use_bias=False, dtype=self.dtype, kernel_init=_dense_init, name='reduction'
    )(x)


class PatchEmbed(nn.Module):
  """p x p conv with stride p (NHWC out) followed by LayerNorm."""

  patch_size: int
  embed_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    p = self.patch_size
    x = nn.Conv(
      self.embed_dim, (p, p), strides=(p, p), padding='VALID', dtype=self.dtype, name='proj'
    )(x)
    return _layer_norm('norm', self.dtype)(x)


class SwinTransformerStage(nn.Module):
  """Optional PatchMerging downsample (stages 1..), then ``depth`` blocks alternating
  regular (even j) and shifted (odd j, shift = window // 2) windows."""

  depth: int
  out_dim: int
  num_heads: int
  window_size: int
  downsample: bool
  drop_path_rates: tuple[float, ...]
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, deterministic: bool):
    if self.downsample:
      x = PatchMerging(self.out_dim, self.dtype, name='downsample')(x)
    for j in range(self.depth):
      x = SwinTransformerBlock(
        num_heads=self.num_heads,
        window_size=self.window_size,
        shift_size=0 if j % 2 == 0 else self.window_size // 2,
        mlp_ratio=self.mlp_ratio,
        drop_path_rate=self.drop_path_rates[j],
        dtype=self.dtype,
        name=f'blocks_{j}',
      )(x, deterministic=deterministic)
    return x


class SwinTransformer(nn.Module):
  """Swin Transformer with global average pooling, equal to timm's ``SwinTransformer``.

  ``__call__(images, train=...)`` takes NHWC float images of size image_size x image_size
  and returns ``(logits, features)``: features is timm's ``forward_head(forward_features(x),
  pre_logits=True)`` (final LayerNorm, then the mean over all positions), logits =
  head(features), or None when num_classes == 0. Drop-path draws from the 'dropout' rng;
  block k of all sum(depths) gets rate drop_path_rate * k / (sum(depths) - 1), as in timm.
  """

  num_classes: int
  image_size: int
  embed_dim: int
  depths: tuple[int, ...]
  num_heads: tuple[int, ...]
  window_size: int
  patch_size: int = 4
  mlp_ratio: float = 4.0
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32

  @property
  def num_features(self) -> int:
    return self.embed_dim * 2 ** (len(self.depths) - 1)

  @nn.compact
  def __call__(self, images, *, train: bool):
    if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3):
      raise ValueError(
        f'SwinTransformer expects NHWC images of shape (B, {self.image_size}, '
        f'{self.image_size}, 3), got {images.shape}'
      )
    if len(self.depths) != len(self.num_heads):
      raise ValueError(f'depths {self.depths} and num_heads {self.num_heads} differ in length')
    for i, heads in enumerate(self.num_heads):
      if (self.embed_dim * 2**i) % heads:
        raise ValueError(
          f'stage {i}: width {self.embed_dim * 2**i} is not a multiple of num_heads {heads}'
        )
    x = PatchEmbed(self.patch_size, self.embed_dim, self.dtype, name='patch_embed')(
      jnp.asarray(images, self.dtype)
    )
    rates = drop_path_rates(self.drop_path_rate, self.depths)
    for i, depth in enumerate(self.depths):
      x = SwinTransformerStage(
        depth=depth,
        out_dim=self.embed_dim * 2**i,
        num_heads=self.num_heads[i],
        window_size=self.window_size,
        downsample=i > 0,
        drop_path_rates=tuple(rates[i]),
        mlp_ratio=self.mlp_ratio,
        dtype=self.dtype,
        name=f'layers_{i}',
      )(x, deterministic=not train)
    x = _layer_norm('norm', self.dtype)(x)
    features = jnp.mean(x, axis=(1, 2))
    return task_head(features, self.num_classes, self.dtype), features


# ----------------------------------------------------------------------------------------------
# Configs.

_SWIN_FIELDS = (
  'num_classes',
  'image_size',
  'embed_dim',
  'depths',
  'num_heads',
  'window_size',
  'patch_size',
  'mlp_ratio',
  'drop_path_rate',
  'dtype',
)


def _variant_fields(variant: str) -> dict:
  if variant not in SWIN_VARIANTS:
    raise ValueError(f'unknown Swin variant {variant!r}: expected one of {sorted(SWIN_VARIANTS)}')
  return dict(SWIN_VARIANTS[variant])


def swin_config(
  variant: str, *, num_classes: int, image_size: int, window_size: int = 7, **overrides
) -> ml_collections.ConfigDict:
  """Returns the model config of a named variant ('T', 'S', 'B', 'L'): name='swin',
  variant, every SwinTransformer field and timm's ImageNet mean/std; ``overrides`` replace
  any of them (an unknown key is an error)."""
  defaults = dict(
    patch_size=4,
    window_size=window_size,
    mlp_ratio=4.0,
    drop_path_rate=0.0,
    dtype='float32',
    mean=IMAGENET_DEFAULT_MEAN,
    std=IMAGENET_DEFAULT_STD,
  )
  return named_config(
    'swin', variant, _variant_fields, defaults, overrides, label='Swin',
    num_classes=num_classes, image_size=image_size,
  )  # fmt: skip


def build_swin(model_config) -> SwinTransformer:
  """Builds a SwinTransformer from a model config (ConfigDict or mapping). Architecture
  fields come from ``variant`` when given; explicit non-None fields take precedence. Keys
  that are not SwinTransformer fields (name, variant, mean, std, ...) are ignored."""
  fields = module_fields(
    model_config, 'swin', _SWIN_FIELDS, _SWIN_FIELDS[:6], _variant_fields, label='Swin',
    int_tuples=('depths', 'num_heads'),
  )  # fmt: skip
  return SwinTransformer(**fields)


# ----------------------------------------------------------------------------------------------
# timm checkpoints.


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
  table, new_window, *, old_window: Optional[Sequence[int]] = None
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
  dst = tuple(2 * w - 1 for w in _pair(new_window))
  if old_window is not None:
    src = tuple(2 * w - 1 for w in _pair(old_window))
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
