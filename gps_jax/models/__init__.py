"""Backbones of gps_jax: ViT (vit_jax layout), Swin Transformer and ConvNeXt (timm structure)."""

from gps_jax.models.convnext import (
  CONVNEXT_VARIANTS,
  ConvNeXt,
  build_convnext,
  convnext_config,
  convnext_params_from_timm,
)
from gps_jax.models.swin import (
  SWIN_VARIANTS,
  SwinTransformer,
  build_swin,
  swin_config,
  swin_params_from_timm,
)
from gps_jax.models.vit import VIT_VARIANTS, ViT, build_vit, vit_config

__all__ = [
  'CONVNEXT_VARIANTS',
  'ConvNeXt',
  'build_convnext',
  'convnext_config',
  'convnext_params_from_timm',
  'SWIN_VARIANTS',
  'SwinTransformer',
  'build_swin',
  'swin_config',
  'swin_params_from_timm',
  'VIT_VARIANTS',
  'ViT',
  'build_vit',
  'vit_config',
]
