"""Small models of every family, with or without adapters and VPT prompts, for the tests of
the PEFT layers (tests/test_peft_adapters.py, test_peft_vpt.py, test_peft_loading.py; also
tests/test_factors.py). tests/ is on sys.path under pytest."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
from tiny import TINY

from gps_jax import tree as tree_lib
from gps_jax.models import registry

P = 3  # prompt tokens
ADDED = re.compile(r'adapter|vpt')
# family -> (config overrides making it small, image size); 'name' picks the family.
SMALL = {
  'vit': dict(name='vit', num_classes=5, image_size=8, **{k: TINY[k] for k in TINY if k not in (
    'num_classes', 'image_size')}),
  'swin': dict(
    name='swin', num_classes=5, image_size=32, patch_size=4, embed_dim=8, depths=(2, 1),
    num_heads=(1, 2), window_size=4,
  ),
  'convnext': dict(
    name='convnext', num_classes=5, image_size=32, depths=(1, 2, 1, 1), dims=(8, 16, 24, 32)
  ),
}  # fmt: skip
# family -> the adapter modules of one block of each kind.
BLOCK_ADAPTERS = {
  'vit': [f'Transformer/encoderblock_{i}/adapter_{k}' for i in (0, 1) for k in ('attn', 'mlp')],
  'swin': [f'layers_{i}/blocks_{j}/adapter_{k}' for i, j in ((0, 0), (0, 1), (1, 0))
           for k in ('attn', 'mlp')],
  'convnext': [f'stages_{i}/blocks_{j}/adapter_mlp' for i, j in
               ((0, 0), (1, 0), (1, 1), (2, 0), (3, 0))],
}  # fmt: skip


def model_of(family, **kw):
  return registry.build_model({**SMALL[family], **kw})


def init(model, seed=0):
  s = model.image_size
  return _init(model, jax.random.PRNGKey(seed), jnp.zeros((1, s, s, 3)))


@functools.partial(jax.jit, static_argnums=0)
def _init(model, rng, x):
  return model.init(rng, x, train=False)['params']


@functools.partial(jax.jit, static_argnums=0)
def _apply(model, params, x):
  return model.apply({'params': params}, x, train=False)


def flat_np(params):
  return {k: np.asarray(v) for k, v in tree_lib.flat(params).items()}


def images(model, n=2, seed=1):
  s = model.image_size
  return np.random.default_rng(seed).uniform(-1, 1, (n, s, s, 3)).astype(np.float32)


def run(model, params, x):
  return _apply(model, tree_lib.unflat(params), x)
