"""ConvNeXt (Liu et al. 2022) in Flax Linen, equal to ``timm.models.convnext.ConvNeXt``.

Only timm's standard configuration is implemented, the one of ``convnext_{tiny,small,base,
large}`` and their ``.fb_in22k`` / ``.fb_in1k`` checkpoints: patch-4 stem, conv_mlp=False,
7x7 depthwise convolutions, LayerNorm (eps 1e-6) everywhere, layer scale, pool -> norm ->
classifier head. Every submodule carries an explicit ``name=`` so the parameter tree is::

    stem/conv/{kernel (4,4,3,C0), bias}             stem/norm/{scale,bias}
    stages_{i}/downsample/norm/{scale,bias}          (i >= 1)
    stages_{i}/downsample/conv/{kernel (2,2,Ci-1,Ci), bias}
    stages_{i}/blocks_{j}/conv_dw/{kernel (7,7,1,Ci), bias}   (depthwise)
    stages_{i}/blocks_{j}/norm/{scale,bias}
    stages_{i}/blocks_{j}/mlp/fc1/{kernel (Ci,4Ci), bias}
    stages_{i}/blocks_{j}/mlp/fc2/{kernel (4Ci,Ci), bias}
    stages_{i}/blocks_{j}/gamma (Ci,)                 (layer scale; absent if layer_scale_init is None)
    final_norm/{scale,bias}                           (timm's head.norm)
    head/{kernel (C3,num_classes), bias}              (only when num_classes > 0)
    stages_{i}/blocks_{j}/adapter_mlp/{down,up}/{kernel,bias}   (only when adapter_dim > 0)

The adapter (:class:`gps_jax.models.layers.Adapter`; a block has no attention, so only
``adapter_mlp``) acts on the MLP's output, after fc2 and before the layer scale gamma:
``x + DropPath(gamma * Adapter(fc2(...)))``. Its ``up`` starts at zero, so at init the
block is exactly the pretrained one; before gamma, it sees the branch output unscaled, as
the adapters of ViT and Swin do, and its change is scaled by the block's own gamma. VPT
prompts are refused (``vpt_tokens`` > 0 is a ValueError): a ConvNeXt has no token sequence.

The final norm lives outside ``head/`` on purpose: GPS freezes norms and trains the head.

:func:`gps_jax.models.convnext_timm.convnext_params_from_timm` converts a timm state dict (numpy
arrays, e.g. read with ``safetensors.numpy.load_file``) into this tree.
"""

from __future__ import annotations

from typing import Any, Optional

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

LN_EPSILON = 1e-6  # timm's LayerNorm / LayerNorm2d default, used by every ConvNeXt norm.

# Depths and widths of timm's convnext_{tiny,small,base,large}.
CONVNEXT_VARIANTS = {
  'T': dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)),
  'S': dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768)),
  'B': dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024)),
  'L': dict(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536)),
}

# timm's calculate_drop_path_rates(rate, depths, stagewise=True), shared with Swin.
convnext_drop_path_rates = drop_path_rates


class ConvNeXtBlock(nn.Module):
  """x + DropPath(gamma * fc2(GELU(fc1(LN(dwconv7x7(x)))))), on NHWC inputs; with
  adapter_dim > 0, x + DropPath(gamma * Adapter(fc2(...)))."""

  mlp_ratio: int = 4
  layer_scale_init: Optional[float] = 1e-6
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32
  adapter_dim: int = 0

  @nn.compact
  def __call__(self, x, deterministic: bool):
    c = x.shape[-1]
    y = nn.Conv(
      c,
      (7, 7),
      padding=((3, 3), (3, 3)),
      feature_group_count=c,
      dtype=self.dtype,
      kernel_init=trunc_normal_init,
      name='conv_dw',
    )(x)
    y = layer_norm('norm', LN_EPSILON, self.dtype)(y)
    y = Mlp(self.mlp_ratio * c, self.dtype, name='mlp')(y)
    y = adapter(y, self.adapter_dim, 'adapter_mlp', self.dtype)
    if self.layer_scale_init is not None:
      gamma = self.param('gamma', nn.initializers.constant(self.layer_scale_init), (c,))
      y = y * gamma.astype(y.dtype)
    return x + drop_path(self, y, self.drop_path_rate, deterministic)


class Stem(nn.Module):
  """Patchify: a patch_size x patch_size conv with stride patch_size, then LayerNorm."""

  dim: int
  patch_size: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    p = self.patch_size
    x = nn.Conv(
      self.dim,
      (p, p),
      strides=(p, p),
      padding='VALID',
      dtype=self.dtype,
      kernel_init=trunc_normal_init,
      name='conv',
    )(x)
    return layer_norm('norm', LN_EPSILON, self.dtype)(x)


class Downsample(nn.Module):
  """LayerNorm, then a 2x2 conv with stride 2 to ``dim`` channels."""

  dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = layer_norm('norm', LN_EPSILON, self.dtype)(x)
    return nn.Conv(
      self.dim,
      (2, 2),
      strides=(2, 2),
      padding='VALID',
      dtype=self.dtype,
      kernel_init=trunc_normal_init,
      name='conv',
    )(x)


class ConvNeXtStage(nn.Module):
  """Optional Downsample (every stage but the first), then the blocks."""

  dim: int
  drop_path_rates: tuple[float, ...]
  downsample: bool
  layer_scale_init: Optional[float] = 1e-6
  dtype: Any = jnp.float32
  head_init: str = 'zeros'  # the new head's kernel init: zeros | trunc_normal
  adapter_dim: int = 0
  remat: str = ''  # a jax.checkpoint policy name for the blocks (layers.blocks); '' = none

  @nn.compact
  def __call__(self, x, *, deterministic: bool):
    if self.downsample:
      x = Downsample(self.dim, self.dtype, name='downsample')(x)
    for j, rate in enumerate(self.drop_path_rates):
      x = blocks(ConvNeXtBlock, self.remat)(
        layer_scale_init=self.layer_scale_init,
        drop_path_rate=rate,
        dtype=self.dtype,
        adapter_dim=self.adapter_dim,
        name=f'blocks_{j}',
      )(x, deterministic)
    return x


class ConvNeXt(nn.Module):
  """ConvNeXt with global average pooling, as timm's ``ConvNeXt`` (default arguments).

  ``__call__(images, train=...)`` takes NHWC float images of size image_size x image_size
  and returns ``(logits, features)``: features is the spatial mean of the last stage after
  ``final_norm`` (timm's ``forward_head(x, pre_logits=True)``), logits = head(features), or
  None when num_classes == 0. Drop-path (rate linear from 0 to drop_path_rate over all
  blocks, as timm) draws from the 'dropout' rng when ``train`` is true. ``adapter_dim`` > 0
  adds one adapter per block; ``vpt_tokens`` must stay 0 (module doc).
  """

  num_classes: int
  depths: tuple[int, ...]
  dims: tuple[int, ...]
  image_size: int
  drop_path_rate: float = 0.0
  layer_scale_init: Optional[float] = 1e-6
  dtype: Any = jnp.float32
  head_init: str = 'zeros'  # the new head's kernel init: zeros | trunc_normal
  adapter_dim: int = 0  # bottleneck width of the adapters; 0 = none
  vpt_tokens: int = 0  # must be 0: a config field only so that a request for VPT is refused
  remat: str = ''  # rematerialised blocks: a jax.checkpoint policy name (config.train.remat)

  @nn.compact
  def __call__(self, images, *, train: bool):
    if len(self.depths) != len(self.dims) or not self.depths:
      raise ValueError(
        f'ConvNeXt needs as many depths as dims, got depths={self.depths} dims={self.dims}'
      )
    check_added_fields(
      'ConvNeXt', self.adapter_dim, self.vpt_tokens,
      no_vpt='ConvNeXt: it has no token sequence to prepend prompts to (a conv net)',
    )  # fmt: skip
    if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3):
      raise ValueError(
        f'ConvNeXt expects NHWC images of shape (B, {self.image_size}, '
        f'{self.image_size}, 3), got {images.shape}'
      )
    min_size = 4 * 2 ** (len(self.dims) - 1)
    if self.image_size < min_size:
      raise ValueError(f'ConvNeXt needs image_size >= {min_size}, got {self.image_size}')
    x = Stem(self.dims[0], dtype=self.dtype, name='stem')(jnp.asarray(images, self.dtype))
    rates = convnext_drop_path_rates(self.drop_path_rate, self.depths)
    for i, dim in enumerate(self.dims):
      x = ConvNeXtStage(
        dim,
        tuple(rates[i]),
        downsample=i > 0,
        layer_scale_init=self.layer_scale_init,
        dtype=self.dtype,
        adapter_dim=self.adapter_dim,
        remat=self.remat,
        name=f'stages_{i}',
      )(x, deterministic=not train)
    x = jnp.mean(x, axis=(1, 2))
    features = layer_norm('final_norm', LN_EPSILON, self.dtype)(x)
    return task_head(features, self.num_classes, self.dtype, self.head_init), features


_CONVNEXT_FIELDS = (
  'num_classes',
  'depths',
  'dims',
  'image_size',
  'drop_path_rate',
  'layer_scale_init',
  'dtype',
  'head_init',
  'adapter_dim',
  'remat',
  'vpt_tokens',
)


def _variant_fields(variant: str) -> dict:
  if variant not in CONVNEXT_VARIANTS:
    raise ValueError(
      f'unknown ConvNeXt variant {variant!r}: expected one of {sorted(CONVNEXT_VARIANTS)}'
    )
  return dict(CONVNEXT_VARIANTS[variant])


def convnext_config(
  variant: str, *, num_classes: int, image_size: int, **overrides
) -> ml_collections.ConfigDict:
  """Returns the model config of a named variant ('T', 'S', 'B', 'L'): name='convnext',
  variant, every ConvNeXt field and the ImageNet mean/std of timm's checkpoints;
  ``overrides`` replace any of them (an unknown key is an error)."""
  defaults = dict(
    drop_path_rate=0.0, layer_scale_init=1e-6, dtype='float32', head_init='zeros',
    adapter_dim=0, vpt_tokens=0, remat='', mean=IMAGENET_MEAN, std=IMAGENET_STD,
  )  # fmt: skip
  return named_config(
    'convnext', variant, _variant_fields, defaults, overrides, label='ConvNeXt',
    num_classes=num_classes, image_size=image_size,
  )  # fmt: skip


def build_convnext(model_config) -> ConvNeXt:
  """Builds a ConvNeXt from a model config (ConfigDict or mapping). Architecture fields come
  from ``variant`` when given; explicit non-None fields take precedence over the variant
  (``layer_scale_init`` None means the variant default 1e-6, as for every None field). Keys
  that are not ConvNeXt fields (name, variant, mean, std, anything else) are ignored."""
  fields = module_fields(
    model_config, 'convnext', _CONVNEXT_FIELDS, _CONVNEXT_FIELDS[:4], _variant_fields,
    label='ConvNeXt', int_tuples=('depths', 'dims'),
  )  # fmt: skip
  return ConvNeXt(**fields)
