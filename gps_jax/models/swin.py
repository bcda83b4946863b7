"""Swin Transformer (Liu et al. 2021) in Flax Linen, equal to timm 1.0's ``SwinTransformer``.

The windows (partition, shift, mask, relative positions) and the window attention are
`gps_jax.models.swin_windows`; the blocks, stages and the model are here.

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
    head/{kernel,bias}                            only when num_classes > 0 (head_init)
    layers_{i}/blocks_{j}/adapter_attn/{down,up}/{kernel,bias}   only when adapter_dim > 0
    layers_{i}/blocks_{j}/adapter_mlp/{down,up}/{kernel,bias}    only when adapter_dim > 0

Adapters (:class:`gps_jax.models.layers.Adapter`, the identity at init) sit on each residual
branch, after the attention (windows merged back, shift undone) and after the MLP, before
drop-path and the residual add. VPT prompts are refused (``vpt_tokens`` > 0 is a ValueError):
windowed attention has no one sequence to prepend them to; VPT's Swin variant (prompts per
window, and per stage for the merged resolutions) is not implemented here.

:func:`gps_jax.models.swin_timm.swin_params_from_timm` converts a timm state dict (NumPy arrays)
into this layout.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from gps_jax.models.layers import (
  blocks,
  IMAGENET_MEAN,
  IMAGENET_STD,
  Mlp,
  adapter,
  check_added_fields,
  drop_path,
  drop_path_rates,
  layer_norm,
  trunc_normal_init,
)
from gps_jax.models.model_config import module_fields, named_config, task_head
from gps_jax.models.swin_windows import (
  WindowAttention,
  effective_window_shift,
  shifted_window_mask,
  to_2tuple,
  window_partition,
  window_reverse,
)

LN_EPSILON = 1e-5  # torch.nn.LayerNorm's default, used throughout timm's Swin.
# name -> (embed_dim, depths, num_heads); timm's swin_{tiny,small,base,large}_patch4_window7_224.
SWIN_VARIANTS = {
  'T': dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
  'S': dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
  'B': dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
  'L': dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)),
}


class SwinTransformerBlock(nn.Module):
  """x + DropPath(W-MSA / SW-MSA(LN(x))), then x + DropPath(MLP(LN(x))) on (B, H, W, C);
  with adapter_dim > 0 each branch output h becomes Adapter(h) before drop-path.

  ``window_size`` / ``shift_size`` are the target values; the effective ones follow timm's
  rule (:func:`effective_window_shift`) for the input's resolution."""

  num_heads: int
  window_size: int
  shift_size: int
  mlp_ratio: float = 4.0
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32
  adapter_dim: int = 0

  @nn.compact
  def __call__(self, x, deterministic: bool):
    b, h, w, c = x.shape
    window, shift = effective_window_shift(
      (h, w), to_2tuple(self.window_size), to_2tuple(self.shift_size)
    )
    y = layer_norm('norm1', LN_EPSILON, self.dtype)(x)
    if any(shift):
      y = jnp.roll(y, (-shift[0], -shift[1]), axis=(1, 2))
    pad_h, pad_w = (-h) % window[0], (-w) % window[1]
    if pad_h or pad_w:
      y = jnp.pad(y, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    hp, wp = h + pad_h, w + pad_w
    mask = shifted_window_mask((hp, wp), window, shift)
    y = WindowAttention(self.num_heads, window, self.dtype, name='attn')(
      window_partition(y, window), mask
    )
    y = window_reverse(y, window, b, hp, wp)[:, :h, :w]
    if any(shift):
      y = jnp.roll(y, shift, axis=(1, 2))
    y = adapter(y, self.adapter_dim, 'adapter_attn', self.dtype)
    x = x + drop_path(self, y, self.drop_path_rate, deterministic)
    y = layer_norm('norm2', LN_EPSILON, self.dtype)(x)
    y = Mlp(int(c * self.mlp_ratio), self.dtype, name='mlp')(y)
    y = adapter(y, self.adapter_dim, 'adapter_mlp', self.dtype)
    return x + drop_path(self, y, self.drop_path_rate, deterministic)


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
    x = layer_norm('norm', LN_EPSILON, self.dtype)(x)
    return nn.Dense(
      self.out_dim,
      use_bias=False,
      dtype=self.dtype,
      kernel_init=trunc_normal_init,
      name='reduction',
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
    return layer_norm('norm', LN_EPSILON, self.dtype)(x)


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
  adapter_dim: int = 0
  remat: str = ''  # a jax.checkpoint policy name for the blocks (layers.blocks); '' = none

  @nn.compact
  def __call__(self, x, *, deterministic: bool):
    if self.downsample:
      x = PatchMerging(self.out_dim, self.dtype, name='downsample')(x)
    for j in range(self.depth):
      x = blocks(SwinTransformerBlock, self.remat)(
        num_heads=self.num_heads,
        window_size=self.window_size,
        shift_size=0 if j % 2 == 0 else self.window_size // 2,
        mlp_ratio=self.mlp_ratio,
        drop_path_rate=self.drop_path_rates[j],
        dtype=self.dtype,
        adapter_dim=self.adapter_dim,
        name=f'blocks_{j}',
      )(x, deterministic)
    return x


class SwinTransformer(nn.Module):
  """Swin Transformer with global average pooling, equal to timm's ``SwinTransformer``.

  ``__call__(images, train=...)`` takes NHWC float images of size image_size x image_size
  and returns ``(logits, features)``: features is timm's ``forward_head(forward_features(x),
  pre_logits=True)`` (final LayerNorm, then the mean over all positions), logits =
  head(features), or None when num_classes == 0. Drop-path draws from the 'dropout' rng;
  block k of all sum(depths) gets rate drop_path_rate * k / (sum(depths) - 1), as in timm.
  ``adapter_dim`` > 0 adds two adapters per block; ``vpt_tokens`` must stay 0 (module doc).
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
  head_init: str = 'zeros'  # the new head's kernel init: zeros | trunc_normal
  adapter_dim: int = 0  # bottleneck width of the adapters; 0 = none
  remat: str = ''  # rematerialised blocks: a jax.checkpoint policy name (config.train.remat)
  vpt_tokens: int = 0  # must be 0: a config field only so that a request for VPT is refused

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
    check_added_fields(
      'SwinTransformer', self.adapter_dim, self.vpt_tokens,
      no_vpt="Swin here: its windowed attention needs VPT's per-window prompt variant, "
      'which gps_jax does not implement',
    )  # fmt: skip
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
        adapter_dim=self.adapter_dim,
        remat=self.remat,
        name=f'layers_{i}',
      )(x, deterministic=not train)
    x = layer_norm('norm', LN_EPSILON, self.dtype)(x)
    features = jnp.mean(x, axis=(1, 2))
    return task_head(features, self.num_classes, self.dtype, self.head_init), features


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
  'head_init',
  'adapter_dim',
  'remat',
  'vpt_tokens',
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
    head_init='zeros',
    adapter_dim=0,
    remat='',
    vpt_tokens=0,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
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
