"""A tiny ViT shared by the test modules (tests/ is on sys.path under pytest)."""

import jax
import jax.numpy as jnp
import numpy as np

from gps_jax import tree as tree_lib

from gps_jax.models import ConvNeXt, SwinTransformer, ViT

TINY = dict(
  num_classes=5, patch_size=4, hidden_size=16, num_layers=2, num_heads=2, mlp_dim=32, image_size=8
)


def tiny_shapes(**overrides):
  """Abstract parameters (jax.eval_shape) of the tiny ViT."""
  model = ViT(**{**TINY, **overrides})
  s = model.image_size
  return jax.eval_shape(
    lambda r: model.init(r, jnp.zeros((1, s, s, 3)), train=False), jax.random.PRNGKey(0)
  )['params']


def random_params(shapes, seed=0):
  """NumPy weights for abstract shapes (no compilation): kernels ~ 1/sqrt(fan-in),
  biases, head, cls and position embedding small but non-zero, LayerNorm scales ~1."""
  rng = np.random.default_rng(seed)
  out = {}
  for p, s in tree_lib.flat(shapes).items():
    if p.endswith('/scale'):
      v = 1.0 + 0.1 * rng.normal(size=s.shape)
    elif p.endswith('kernel'):
      fan_in = np.prod(s.shape[:-1]) if 'out/kernel' not in p else np.prod(s.shape[:2])
      v = rng.normal(size=s.shape) / np.sqrt(fan_in)
    else:
      v = 0.1 * rng.normal(size=s.shape)
    out[p] = v.astype(np.float32)
  return out


# One tiny model of each family (the Swin one with a shifted-window block per stage).
FAMILIES = {
  'vit': lambda **kw: ViT(**TINY, **kw),
  'swin': lambda **kw: SwinTransformer(
    num_classes=5, image_size=16, patch_size=4, embed_dim=8, depths=(2, 2), num_heads=(1, 2),
    window_size=2, **kw,
  ),  # fmt: skip
  'convnext': lambda **kw: ConvNeXt(
    num_classes=5, image_size=32, depths=(1, 1), dims=(8, 16), **kw
  ),
}


def model_shapes(model):
  """Abstract parameters (jax.eval_shape) of any model of the families."""
  s = model.image_size
  return jax.eval_shape(
    lambda r: model.init(r, jnp.zeros((1, s, s, 3)), train=False), jax.random.PRNGKey(0)
  )['params']


def two_view_batches(num: int, b: int, seed: int) -> list[dict]:
  """`num` selection batches of the tiny ViT: 2b random 8x8 views (first views, then
  second views) and b labels of 3 classes."""
  rng = np.random.default_rng(seed)
  return [
    {
      'image': rng.normal(size=(2 * b, 8, 8, 3)).astype(np.float32),
      'label': rng.integers(0, 3, size=b).astype(np.int32),
    }
    for _ in range(num)
  ]
