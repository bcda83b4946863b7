"""Backbones of gps_jax: ViT (vit_jax layout), Swin Transformer and ConvNeXt (timm structure)."""

from gps_jax.models.convnext import (
  CONVNEXT_VARIANTS,
  ConvNeXt,
  build_convnext,
  convnext_config,
)
from gps_jax.models.convnext_timm import convnext_params_from_timm
from gps_jax.models.layers import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD
from gps_jax.models.swin import (
  SWIN_VARIANTS,
  SwinTransformer,
  build_swin,
  swin_config,
)
from gps_jax.models.swin_timm import resize_relative_position_table, swin_params_from_timm
from gps_jax.models.vit import VIT_VARIANTS, ViT, build_vit, vit_config

__all__ = [
  'CONVNEXT_VARIANTS',
  'IMAGENET_MEAN',
  'IMAGENET_STD',
  'INCEPTION_MEAN',
  'INCEPTION_STD',
  'SWIN_VARIANTS',
  'VIT_VARIANTS',
  'ConvNeXt',
  'SwinTransformer',
  'ViT',
  'build_convnext',
  'build_swin',
  'build_vit',
  'convnext_config',
  'convnext_params_from_timm',
  'resize_relative_position_table',
  'swin_config',
  'swin_params_from_timm',
  'vit_config',
]
