"""Backbones of gps_jax: ViT (vit_jax layout), Swin Transformer and ConvNeXt (timm structure).

:mod:`gps_jax.models.registry` is the table of these families (FAMILIES);
:func:`gps_jax.models.fitting.fit_params` the one strict fit of checkpoint arrays to a model.
"""

from gps_jax.models.convnext import (
  CONVNEXT_VARIANTS,
  ConvNeXt,
  build_convnext,
  convnext_config,
)
from gps_jax.models.convnext_timm import convnext_params_from_timm
from gps_jax.models.fitting import Layout, fit_params
from gps_jax.models.layers import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD
from gps_jax.models.registry import FAMILIES, Family, build_model, family, family_of
from gps_jax.models.swin import (
  SWIN_VARIANTS,
  SwinTransformer,
  build_swin,
  swin_config,
)
from gps_jax.models.swin_timm import resize_relative_position_table, swin_params_from_timm
from gps_jax.models.vit import VIT_VARIANTS, ViT, build_vit, vit_config
from gps_jax.models.vit_timm import vit_flat_from_timm

__all__ = [
  'CONVNEXT_VARIANTS',
  'FAMILIES',
  'IMAGENET_MEAN',
  'IMAGENET_STD',
  'INCEPTION_MEAN',
  'INCEPTION_STD',
  'SWIN_VARIANTS',
  'VIT_VARIANTS',
  'ConvNeXt',
  'Family',
  'Layout',
  'SwinTransformer',
  'ViT',
  'build_convnext',
  'build_model',
  'build_swin',
  'build_vit',
  'convnext_config',
  'convnext_params_from_timm',
  'family',
  'family_of',
  'fit_params',
  'resize_relative_position_table',
  'swin_config',
  'swin_params_from_timm',
  'vit_config',
  'vit_flat_from_timm',
]
