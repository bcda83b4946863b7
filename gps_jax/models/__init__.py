"""Models of gps_jax: a Vision Transformer with the vit_jax parameter layout."""

from gps_jax.models.vit import VIT_VARIANTS, ViT, build_vit, vit_config

__all__ = ['VIT_VARIANTS', 'ViT', 'build_vit', 'vit_config']
