"""Vision Transformer in Flax Linen with the exact vit_jax / big_vision parameter layout.

Every submodule carries an explicit ``name=`` so that the parameter tree never depends on
flax autonaming and matches the ``.npz`` checkpoints released with vit_jax::

    embedding/{kernel (p,p,3,D), bias (D,)}
    cls (1,1,D)
    Transformer/posembed_input/pos_embedding (1,N+1,D)
    Transformer/encoderblock_{i}/LayerNorm_0/{scale,bias}
    Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/{query,key,value,out}/{kernel,bias}
    Transformer/encoderblock_{i}/LayerNorm_2/{scale,bias}
    Transformer/encoderblock_{i}/MlpBlock_3/{Dense_0,Dense_1}/{kernel,bias}
    Transformer/encoder_norm/{scale,bias}
    pre_logits/{kernel,bias}      (only when representation_size is set)
    head/{kernel,bias}            (only when num_classes > 0)

Parameter-efficient additions, absent at their defaults (then the tree is exactly the above):

    Transformer/encoderblock_{i}/adapter_attn/{down,up}/{kernel,bias}   (adapter_dim > 0)
    Transformer/encoderblock_{i}/adapter_mlp/{down,up}/{kernel,bias}    (adapter_dim > 0)
    Transformer/vpt_prompts (1,P,D)                    (vpt_tokens = P > 0, shallow)
    Transformer/encoderblock_{i}/vpt_prompts (1,P,D)   (vpt_tokens = P > 0, vpt_deep)

Adapters (:class:`gps_jax.models.layers.Adapter`) sit on each residual branch, after its
dropout and before drop-path and the residual add; they start as the identity. VPT (Jia et
al. 2022) makes the sequence [cls, P prompts, N patches]: prompts come after the position
embedding (they get none) and skip the embedding dropout; shallow prompts are inserted once
before block 0 and carried through, deep prompts replace tokens 1..P before every block.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gps_jax.models.layers import (
  blocks,
  INCEPTION_MEAN,
  INCEPTION_STD,
  adapter,
  check_added_fields,
  drop_path,
)
from gps_jax.models.model_config import module_fields, named_config, task_head

LN_EPSILON = 1e-6  # vit_jax uses 1e-6, not flax's default 1e-5.

# name -> (hidden_size, num_layers, num_heads, mlp_dim)
_WIDTHS = {
  'Ti': (192, 12, 3, 768),
  'S': (384, 12, 6, 1536),
  'B': (768, 12, 12, 3072),
  'L': (1024, 24, 16, 4096),
  'H': (1280, 32, 16, 5120),
}
_PATCHES = (32, 16, 14, 8, 4)


def _parse_variant(variant: str) -> dict:
  """Turns 'B/16' into the architecture fields of a ViT (hidden/layers/heads/mlp/patch)."""
  width, sep, patch = variant.partition('/')
  if not sep or width not in _WIDTHS or not patch.isdigit() or int(patch) <= 0:
    raise ValueError(
      f'unknown ViT variant {variant!r}: expected one of {sorted(_WIDTHS)} '
      f'followed by /<patch size>, e.g. "B/16"'
    )
  hidden, layers, heads, mlp = _WIDTHS[width]
  return dict(
    hidden_size=hidden, num_layers=layers, num_heads=heads, mlp_dim=mlp, patch_size=int(patch)
  )


VIT_VARIANTS = {f'{w}/{p}': _parse_variant(f'{w}/{p}') for w in _WIDTHS for p in _PATCHES}


class MlpBlock(nn.Module):
  """Dense(mlp_dim) -> exact GELU -> dropout -> Dense(D) -> dropout."""

  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, deterministic: bool):
    dense = lambda n, name: nn.Dense(
      n,
      dtype=self.dtype,
      kernel_init=nn.initializers.xavier_uniform(),
      bias_init=nn.initializers.normal(stddev=1e-6),
      name=name,
    )
    y = dense(self.mlp_dim, 'Dense_0')(x)
    y = nn.gelu(y, approximate=False)
    y = nn.Dropout(self.dropout_rate, name='Dropout_0')(y, deterministic=deterministic)
    y = dense(x.shape[-1], 'Dense_1')(y)
    return nn.Dropout(self.dropout_rate, name='Dropout_1')(y, deterministic=deterministic)


def vpt_init_range(patch_size: int, hidden_size: int) -> float:
  """VPT's prompt init bound v: prompts ~ U(-v, v) with v = sqrt(6 / (3 p^2 + D)), the
  xavier-uniform bound of the patch embedding (fan-in 3 p^2, fan-out D)."""
  return math.sqrt(6.0 / (3 * patch_size**2 + hidden_size))


def _prompt_param(module: nn.Module, tokens: int, width: int, init_range: float):
  """The (1, tokens, width) 'vpt_prompts' parameter of ``module``, ~ U(-init_range, init_range)."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -init_range, init_range)

  return module.param('vpt_prompts', init, (1, tokens, width))


def _put_prompts(x, prompts, *, replace: bool):
  """[cls, prompts, patches]: the prompts (1, P, D) after the class token, replacing tokens
  1..P of x (replace) or inserted before its patches."""
  b, p = x.shape[0], prompts.shape[1]
  prompts = jnp.broadcast_to(prompts.astype(x.dtype), (b, p, x.shape[2]))
  return jnp.concatenate([x[:, :1], prompts, x[:, 1 + p :] if replace else x[:, 1:]], axis=1)


class Encoder1DBlock(nn.Module):
  """Pre-LN transformer block: x + DropPath(MHSA(LN(x))), then x + DropPath(MLP(LN(x))).

  With adapter_dim > 0 each branch output h becomes Adapter(h) before drop-path. With
  vpt_tokens = P > 0 (deep VPT) the block first overwrites tokens 1..P of its input with its
  own ``vpt_prompts``."""

  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32
  adapter_dim: int = 0
  vpt_tokens: int = 0
  vpt_range: float = 0.0  # the U(-v, v) bound of the prompt init

  @nn.compact
  def __call__(self, inputs, deterministic: bool):
    if self.vpt_tokens:
      prompts = _prompt_param(self, self.vpt_tokens, inputs.shape[-1], self.vpt_range)
      inputs = _put_prompts(inputs, prompts, replace=True)
    x = nn.LayerNorm(epsilon=LN_EPSILON, dtype=self.dtype, name='LayerNorm_0')(inputs)
    x = nn.MultiHeadDotProductAttention(
      num_heads=self.num_heads,
      dtype=self.dtype,
      broadcast_dropout=False,
      dropout_rate=self.attention_dropout_rate,
      kernel_init=nn.initializers.xavier_uniform(),
      name='MultiHeadDotProductAttention_1',
    )(x, x, deterministic=deterministic)
    x = nn.Dropout(self.dropout_rate, name='Dropout_0')(x, deterministic=deterministic)
    x = adapter(x, self.adapter_dim, 'adapter_attn', self.dtype)
    x = inputs + drop_path(self, x, self.drop_path_rate, deterministic)
    y = nn.LayerNorm(epsilon=LN_EPSILON, dtype=self.dtype, name='LayerNorm_2')(x)
    y = MlpBlock(self.mlp_dim, self.dropout_rate, self.dtype, name='MlpBlock_3')(
      y, deterministic=deterministic
    )
    y = adapter(y, self.adapter_dim, 'adapter_mlp', self.dtype)
    return x + drop_path(self, y, self.drop_path_rate, deterministic)


class AddPositionEmbs(nn.Module):
  """Adds a learned position embedding of shape (1, tokens, D) taken from the input."""

  @nn.compact
  def __call__(self, x):
    pe = self.param(
      'pos_embedding', nn.initializers.normal(stddev=0.02), (1, x.shape[1], x.shape[2])
    )
    return x + pe.astype(x.dtype)


class Encoder(nn.Module):
  """The 'Transformer' module: position embedding, the blocks and the final LayerNorm.
  Block i gets drop-path rate drop_path_rate * i / (num_layers - 1) (timm's linspace).

  With vpt_tokens = P > 0 the P prompt positions go after the class token once the position
  embedding and its dropout are applied: the shallow prompts (this module's ``vpt_prompts``)
  themselves, or for vpt_deep zeros that block 0 overwrites with its prompts at once."""

  num_layers: int
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32
  adapter_dim: int = 0
  vpt_tokens: int = 0
  vpt_deep: bool = False
  vpt_range: float = 0.0  # the U(-v, v) bound of the prompt init
  remat: str = ''  # a jax.checkpoint policy name for the blocks (layers.blocks); '' = none

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = AddPositionEmbs(name='posembed_input')(x)
    x = nn.Dropout(self.dropout_rate, name='Dropout_0')(x, deterministic=not train)
    p, d = self.vpt_tokens, x.shape[-1]
    if p and self.vpt_deep:
      x = _put_prompts(x, jnp.zeros((1, p, d), x.dtype), replace=False)  # block 0 fills them
    elif p:
      x = _put_prompts(x, _prompt_param(self, p, d, self.vpt_range), replace=False)
    for i in range(self.num_layers):
      rate = self.drop_path_rate * i / max(self.num_layers - 1, 1)
      x = blocks(Encoder1DBlock, self.remat)(
        self.num_heads,
        self.mlp_dim,
        self.dropout_rate,
        self.attention_dropout_rate,
        rate,
        self.dtype,
        adapter_dim=self.adapter_dim,
        vpt_tokens=p if self.vpt_deep else 0,
        vpt_range=self.vpt_range,
        name=f'encoderblock_{i}',
      )(x, not train)
    return nn.LayerNorm(epsilon=LN_EPSILON, dtype=self.dtype, name='encoder_norm')(x)


class ViT(nn.Module):
  """Vision Transformer with class-token pooling.

  ``__call__(images, train=...)`` takes NHWC float images of size image_size x image_size
  and returns ``(logits, features)``: features is the class token after encoder_norm (and
  after pre_logits + tanh when representation_size is set), logits = head(features), or
  None when num_classes == 0. Dropout and drop-path draw from the 'dropout' rng.

  ``adapter_dim`` > 0 adds two adapters per block, ``vpt_tokens`` > 0 prompt tokens (one
  set, or one per block with ``vpt_deep``); see the module doc. The class token is still
  token 0, so features and logits are read as without them.
  """

  num_classes: int
  patch_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  image_size: int
  representation_size: Optional[int] = None
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32
  head_init: str = 'zeros'  # the new head's kernel init: zeros | trunc_normal
  adapter_dim: int = 0  # bottleneck width of the adapters; 0 = none
  vpt_tokens: int = 0  # prompt tokens (per block when vpt_deep); 0 = none
  vpt_deep: bool = False  # deep VPT: new prompts before every block
  remat: str = ''  # rematerialised blocks: a jax.checkpoint policy name (config.train.remat)

  @nn.compact
  def __call__(self, images, *, train: bool):
    check_added_fields('ViT', self.adapter_dim, self.vpt_tokens)
    if self.vpt_deep and not self.vpt_tokens:
      raise ValueError('ViT: vpt_deep=True needs vpt_tokens > 0 (the prompts per block)')
    if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3):
      raise ValueError(
        f'ViT expects NHWC images of shape (B, {self.image_size}, '
        f'{self.image_size}, 3), got {images.shape}'
      )
    if self.image_size % self.patch_size or self.hidden_size % self.num_heads:
      raise ValueError(
        f'image_size {self.image_size} must be a multiple of patch_size '
        f'{self.patch_size} and hidden_size {self.hidden_size} a multiple '
        f'of num_heads {self.num_heads}'
      )
    p = self.patch_size
    x = nn.Conv(
      self.hidden_size, (p, p), strides=(p, p), padding='VALID', dtype=self.dtype, name='embedding'
    )(jnp.asarray(images, self.dtype))
    b, h, w, d = x.shape
    x = x.reshape(b, h * w, d)
    cls = self.param('cls', nn.initializers.zeros, (1, 1, d))
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, d)), x], axis=1)
    x = Encoder(
      self.num_layers,
      self.num_heads,
      self.mlp_dim,
      self.dropout_rate,
      self.attention_dropout_rate,
      self.drop_path_rate,
      self.dtype,
      adapter_dim=self.adapter_dim,
      vpt_tokens=self.vpt_tokens,
      vpt_deep=self.vpt_deep,
      vpt_range=vpt_init_range(p, d),
      remat=self.remat,
      name='Transformer',
    )(x, train=train)
    x = x[:, 0]
    if self.representation_size is not None:
      x = jnp.tanh(nn.Dense(self.representation_size, dtype=self.dtype, name='pre_logits')(x))
    features = x
    return task_head(features, self.num_classes, self.dtype, self.head_init), features


_VIT_FIELDS = (
  'num_classes',
  'patch_size',
  'hidden_size',
  'num_layers',
  'num_heads',
  'mlp_dim',
  'image_size',
  'representation_size',
  'dropout_rate',
  'attention_dropout_rate',
  'drop_path_rate',
  'dtype',
  'head_init',
  'adapter_dim',
  'vpt_tokens',
  'vpt_deep',
  'remat',
)


def vit_config(
  variant: str, *, num_classes: int, image_size: int, **overrides
) -> ml_collections.ConfigDict:
  """Returns the model config of a named variant ('B/16', 'Ti/4', ...): name='vit',
  variant, every ViT field and the normalisation mean/std; ``overrides`` replace any of
  them (an unknown key is an error)."""
  defaults = dict(
    representation_size=None,
    dropout_rate=0.0,
    attention_dropout_rate=0.0,
    drop_path_rate=0.0,
    dtype='float32',
    head_init='zeros',
    adapter_dim=0,
    vpt_tokens=0,
    vpt_deep=False,
    remat='',
    mean=INCEPTION_MEAN,
    std=INCEPTION_STD,
  )
  return named_config(
    'vit', variant, _parse_variant, defaults, overrides, label='ViT', num_classes=num_classes,
    image_size=image_size,
  )  # fmt: skip


def build_vit(model_config) -> ViT:
  """Builds a ViT from a model config (ConfigDict or mapping). Architecture fields come from
  ``variant`` when given; explicit non-None fields take precedence over the variant. Keys
  that are not ViT fields (name, variant, mean, std, anything else) are ignored."""
  fields = module_fields(
    model_config, 'vit', _VIT_FIELDS, _VIT_FIELDS[:7], _parse_variant, label='ViT'
  )
  return ViT(**fields)
