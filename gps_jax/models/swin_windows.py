"""Swin's windows: their geometry (partition, reverse, the shift and its mask, the relative
position index) and the window attention, as timm 1.0's ``swin_transformer`` computes them.

The constants (index, mask) are NumPy, not parameters. `WindowAttention`'s parameters are
``qkv/{kernel,bias}``, ``relative_position_bias_table`` and ``proj/{kernel,bias}``; the
model that uses them is `gps_jax.models.swin`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gps_jax.models.layers import trunc_normal_init

MASK_VALUE = -100.0  # timm / the original Swin fill the shifted-window mask with -100, not -inf.


# ----------------------------------------------------------------------------------------------
# Constants computed in NumPy (not params).


def to_2tuple(v) -> tuple[int, int]:
  """An int or a pair -> (int, int)."""
  return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


def relative_position_index(window: Sequence[int]) -> np.ndarray:
  """(Wh*Ww, Wh*Ww) int index into the ((2Wh-1)*(2Ww-1), heads) bias table, as timm's
  ``get_relative_position_index``: (dy + Wh - 1) * (2Ww - 1) + (dx + Ww - 1)."""
  wh, ww = to_2tuple(window)
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


def window_partition(x, window):
  """(B, H, W, C) -> (B * num_windows, Wh * Ww, C), windows in timm's order."""
  b, h, w, c = x.shape
  wh, ww = window
  x = x.reshape(b, h // wh, wh, w // ww, ww, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, wh * ww, c)


def window_reverse(windows, window, b, h, w):
  """(B * num_windows, Wh * Ww, C) -> (B, H, W, C)."""
  wh, ww = window
  c = windows.shape[-1]
  x = windows.reshape(b, h // wh, w // ww, wh, ww, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, w, c)


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
    qkv = nn.Dense(3 * c, dtype=self.dtype, kernel_init=trunc_normal_init, name='qkv')(x)
    qkv = qkv.reshape(b, n, 3, heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (b, n, heads, head_dim)
    attn = jnp.einsum('bqhd,bkhd->bhqk', q * (head_dim**-0.5), k)

    table = self.param(
      'relative_position_bias_table', trunc_normal_init, ((2 * wh - 1) * (2 * ww - 1), heads)
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
    return nn.Dense(c, dtype=self.dtype, kernel_init=trunc_normal_init, name='proj')(out)
