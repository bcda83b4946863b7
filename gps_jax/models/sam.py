"""Segment Anything (Kirillov et al. 2023) in Flax Linen: the image encoder here, the prompt
path and the mask decoder in `gps_jax.models.sam_decoder`; equal to the ``segment-anything``
package (``segment_anything.modeling``) in PyTorch.

The image encoder is SAM's ViTDet-style ViT: a p x p patch embedding, an absolute position
embedding on the token grid, blocks with windowed attention (window 14; no shift; the grid
zero-padded to a multiple of the window after ``norm1``, the padding attended to as SAM
does) except the global blocks (2, 5, 8, 11 for ViT-B), decomposed relative position terms
(``rel_pos_h`` / ``rel_pos_w`` added to the attention logits, computed from the unscaled
queries), LayerNorm eps 1e-6, and a neck of a 1x1 conv, LayerNorm over channels, a 3x3 conv
and LayerNorm down to ``out_chans`` (256). Channels last (NHWC) throughout.

Parameter layout (``'/'``-joined paths; the names of the PyTorch module tree)::

    image_encoder/patch_embed/proj/{kernel (p,p,3,D), bias}
    image_encoder/pos_embed                            (1, H/p, W/p, D)
    image_encoder/blocks_{i}/norm1/{scale,bias}
    image_encoder/blocks_{i}/attn/qkv/{kernel (D,3D), bias}   one fused Dense, as in SAM
    image_encoder/blocks_{i}/attn/proj/{kernel,bias}
    image_encoder/blocks_{i}/attn/rel_pos_h, rel_pos_w        (2S-1, D/heads); S = the window,
                                                              or the grid in a global block
    image_encoder/blocks_{i}/norm2/{scale,bias}
    image_encoder/blocks_{i}/mlp/{lin1,lin2}/{kernel,bias}
    image_encoder/neck_0/kernel (1,1,D,C)   neck_1/{scale,bias}
    image_encoder/neck_2/kernel (3,3,C,C)   neck_3/{scale,bias}
    prompt_encoder/..., mask_decoder/...                       (gps_jax.models.sam_decoder)

:func:`gps_jax.models.sam_torch.sam_params_from_torch` converts the official state dict
(``sam_vit_b_01ec64.pth``) into this layout; :mod:`gps_jax.models.sam_hf` names the
Hugging Face ``transformers`` port's files (``SamModel``'s ``model.safetensors``).

A difference from the original GPS code (its ``SAM/``, built on SAM-Adapter): its model
keeps the positional encoding's matrix and the no-mask embedding at the top level
(``pe_layer``, ``no_mask_embed``) while the checkpoint names them under
``prompt_encoder.``, and it loads the checkpoint with ``strict=False``, so both start
random there (the matrix as a fresh ``torch.randn`` buffer). Here both come from the
checkpoint, as SAM defines them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gps_jax.models.layers import IMAGENET_MEAN, IMAGENET_STD, adapter, check_added_fields, layer_norm
from gps_jax.models.model_config import module_fields, named_config
from gps_jax.models.sam_decoder import MaskDecoder, MLPBlock, PromptEncoder

EPS = 1e-6  # SAM's encoder LayerNorms and LayerNorm2d
_NO_VPT = 'SAM (its windowed attention over the token grid has no place for prompt tokens)'

# The GPS roles of the original's SAM experiment (FightingFighting/GPS,
# SAM/utils_/pruning.py and train.py, --tuning-mode gps), as config rules: in the image
# encoder every kernel (qkv, proj, lin1, lin2, the patch embedding and neck convs) is
# selected per output neuron, its biases train, and its LayerNorms, position embedding and
# relative-position tables stay frozen — except the biases of the neck's two LayerNorm2d,
# which the original's order of tests ('bias' before 'neck' and one-dimensional) trains
# while it freezes their scales; everything outside the image encoder (the mask decoder,
# the no-mask embedding) trains in full, but for the positional encoding's random matrix,
# a buffer in PyTorch, never trained. For `config.rules`.
GPS_ROLE_RULES = (
  (r'/positional_encoding_gaussian_matrix$', 'freeze'),
  (r'^(prompt_encoder|mask_decoder)/', 'train'),
  (r'/norm\d*/', 'freeze'),
  (r'/neck_[13]/scale$', 'freeze'),
  (r'/(pos_embed|rel_pos_[hw])$', 'freeze'),
  (r'/bias$', 'train'),
  (r'.*', 'select'),
)

# The other methods on SAM, as rules by method name (`gps_jax.methods.rules` takes them over
# the method's own): the mask decoder and the prompt encoder's no-mask embedding play the part
# of a classifier's head and train with every method, as in the original's runs; the random
# matrix of the positional encoding (a PyTorch buffer) never trains. `linear` is thus the
# decoder alone; `lora` / `ssf` add their factors to the frozen image encoder; `adapter`
# trains the adapters added to its blocks.
_PE = r'/positional_encoding_gaussian_matrix$'
_DECODER = r'^(prompt_encoder|mask_decoder)/'
DECODER_RULES = ((_PE, 'freeze'), (_DECODER, 'train'), (r'.*', 'freeze'))
METHOD_RULES = {
  'gps': GPS_ROLE_RULES,
  'random': GPS_ROLE_RULES,
  'magnitude': GPS_ROLE_RULES,
  'full': ((_PE, 'freeze'), (r'.*', 'train')),
  'linear': DECODER_RULES,
  'bitfit': ((_PE, 'freeze'), (_DECODER, 'train'), (r'/norm\d*/', 'freeze'),
             (r'/neck_[13]/', 'freeze'), (r'/bias$', 'train'), (r'.*', 'freeze')),
  'lora': DECODER_RULES,
  'ssf': DECODER_RULES,
  'adapter': ((_PE, 'freeze'), (_DECODER, 'train'), (r'/adapter_(attn|mlp)/', 'train'),
              (r'.*', 'freeze')),
}  # fmt: skip
# GPS ranks SAM's entries by the task's own loss (BCE + IoU through the mask decoder), as the
# original does: SupCon needs image-level classes, which a segmentation set has not.
METHOD_SCORES = {'gps': 'task_loss'}

# name: (embed dim, depth, heads, global attention blocks), from segment_anything.build_sam.
VARIANTS = {
  'vit_b': (768, 12, 12, (2, 5, 8, 11)),
  'vit_l': (1024, 24, 16, (5, 11, 17, 23)),
  'vit_h': (1280, 32, 16, (7, 15, 23, 31)),
}


def window_partition(x: jax.Array, window: int) -> tuple[jax.Array, tuple[int, int]]:
  """[B, H, W, C] -> [B * windows, window, window, C], zero-padding H and W up to a multiple
  of `window` first; returns the padded (Hp, Wp) too."""
  b, h, w, c = x.shape
  ph, pw = -h % window, -w % window
  if ph or pw:
    x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
  hp, wp = h + ph, w + pw
  x = x.reshape(b, hp // window, window, wp // window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, window, window, c), (hp, wp)


def window_unpartition(x: jax.Array, window: int, padded: tuple[int, int], size: tuple[int, int]):
  """The inverse of `window_partition`, the padding removed."""
  (hp, wp), (h, w) = padded, size
  b = x.shape[0] // (hp // window * (wp // window))
  x = x.reshape(b, hp // window, wp // window, window, window, -1).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, hp, wp, -1)[:, :h, :w, :]


def rel_pos_index(q_size: int, k_size: int) -> jax.Array:
  """The (q_size, k_size) rows of a (2 max - 1)-row table SAM's ``get_rel_pos`` takes: the
  query and key coordinates scaled to the longer side, offset to be non-negative."""
  q = jnp.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
  k = jnp.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
  return ((q - k) + (k_size - 1) * max(q_size / k_size, 1.0)).astype(jnp.int32)


class Attention(nn.Module):
  """Multi-head self-attention on a [B, H, W, C] grid with decomposed relative positions."""

  num_heads: int
  size: tuple[int, int]  # the grid the relative position tables are sized for
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    hd = c // self.num_heads
    qkv = nn.Dense(3 * c, dtype=self.dtype, name='qkv')(x).reshape(b, h * w, 3, self.num_heads, hd)
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # [B, heads, N, hd]
    attn = jnp.einsum('bhqd,bhkd->bhqk', q * hd**-0.5, k)
    table_h = self.param('rel_pos_h', nn.initializers.zeros, (2 * self.size[0] - 1, hd))
    table_w = self.param('rel_pos_w', nn.initializers.zeros, (2 * self.size[1] - 1, hd))
    rh = table_h.astype(q.dtype)[rel_pos_index(h, h)]  # [h, h, hd]
    rw = table_w.astype(q.dtype)[rel_pos_index(w, w)]  # [w, w, hd]
    rq = q.reshape(b, self.num_heads, h, w, hd)  # the unscaled queries, as SAM
    rel_h = jnp.einsum('bnhwc,hkc->bnhwk', rq, rh)
    rel_w = jnp.einsum('bnhwc,wkc->bnhwk', rq, rw)
    attn = attn.reshape(b, self.num_heads, h, w, h, w)
    attn = attn + rel_h[..., :, None] + rel_w[..., None, :]
    attn = jax.nn.softmax(attn.reshape(b, self.num_heads, h * w, h * w), axis=-1)
    out = jnp.einsum('bhqk,bhkd->bqhd', attn, v).reshape(b, h, w, c)
    return nn.Dense(c, dtype=self.dtype, name='proj')(out)


class Block(nn.Module):
  """norm1 -> (windowed) attention -> residual; norm2 -> MLP -> residual."""

  num_heads: int
  mlp_dim: int
  window: int  # 0: global attention over the whole grid
  grid: tuple[int, int]
  adapter_dim: int = 0  # > 0: an Adapter on each residual branch (the `adapter` method)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h, w = x.shape[1:3]
    y = layer_norm('norm1', EPS, self.dtype)(x)
    size = (self.window, self.window) if self.window else self.grid
    attn = Attention(self.num_heads, size, dtype=self.dtype, name='attn')
    if self.window:
      windows, padded = window_partition(y, self.window)
      y = window_unpartition(attn(windows), self.window, padded, (h, w))
    else:
      y = attn(y)
    x = x + adapter(y, self.adapter_dim, 'adapter_attn', self.dtype)
    y = MLPBlock(self.mlp_dim, dtype=self.dtype, name='mlp')(layer_norm('norm2', EPS, self.dtype)(x))
    return x + adapter(y, self.adapter_dim, 'adapter_mlp', self.dtype)


class ImageEncoder(nn.Module):
  """SAM's ``ImageEncoderViT``: [B, S, S, 3] normalised images -> [B, S/p, S/p, out_chans]."""

  image_size: int = 1024
  patch_size: int = 16
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  window: int = 14
  global_blocks: Sequence[int] = (2, 5, 8, 11)
  out_chans: int = 256
  adapter_dim: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images):
    p = self.patch_size
    x = PatchEmbed(self.embed_dim, p, dtype=self.dtype, name='patch_embed')(images)
    grid = (self.image_size // p, self.image_size // p)
    pos = self.param('pos_embed', nn.initializers.zeros, (1, *grid, self.embed_dim))
    x = x + pos.astype(x.dtype)
    for i in range(self.depth):
      x = Block(
        self.num_heads,
        int(self.embed_dim * self.mlp_ratio),
        0 if i in tuple(self.global_blocks) else self.window,
        grid,
        adapter_dim=self.adapter_dim,
        dtype=self.dtype,
        name=f'blocks_{i}',
      )(x)
    x = nn.Conv(self.out_chans, (1, 1), use_bias=False, dtype=self.dtype, name='neck_0')(x)
    x = layer_norm('neck_1', EPS, self.dtype)(x)
    x = nn.Conv(
      self.out_chans, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype,
      name='neck_2',
    )(x)  # fmt: skip
    return layer_norm('neck_3', EPS, self.dtype)(x)


class PatchEmbed(nn.Module):
  """A p x p conv with stride p (``patch_embed.proj``)."""

  embed_dim: int
  patch_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images):
    p = self.patch_size
    return nn.Conv(
      self.embed_dim, (p, p), strides=(p, p), padding='VALID', dtype=self.dtype, name='proj'
    )(images)


class SAM(nn.Module):
  """SAM without prompts, as the polyp experiment uses it: the image encoder, the prompt
  encoder's no-prompt path (no sparse tokens; the ``no_mask_embed`` everywhere) and the mask
  decoder with one output mask.

  ``__call__(images)`` returns (low-resolution mask logits [B, 4h, 4w], predicted IoU [B]),
  h x w the embedding grid (256 x 256 logits for a 1024 input); `embed_and_decode` gives the
  encoder's output too, from the same pass.
  """

  image_size: int = 1024
  patch_size: int = 16
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  global_blocks: Sequence[int] = (2, 5, 8, 11)
  window: int = 14
  mlp_ratio: float = 4.0
  prompt_dim: int = 256
  decoder_depth: int = 2
  decoder_heads: int = 8
  decoder_mlp_dim: int = 2048
  iou_head_hidden: int = 256
  num_multimask_outputs: int = 3
  adapter_dim: int = 0  # bottleneck adapters in the image encoder's blocks; 0 = none
  vpt_tokens: int = 0  # refused: no prompt tokens in windowed attention over a grid
  remat: str = ''  # refused: not implemented for SAM
  dtype: Any = jnp.float32

  def setup(self):
    check_added_fields('SAM', self.adapter_dim, self.vpt_tokens, no_vpt=_NO_VPT)
    if self.remat:
      raise ValueError(f'SAM: remat={self.remat!r}, but rematerialisation is not implemented for SAM')
    self.image_encoder = ImageEncoder(
      image_size=self.image_size,
      patch_size=self.patch_size,
      embed_dim=self.embed_dim,
      depth=self.depth,
      num_heads=self.num_heads,
      mlp_ratio=self.mlp_ratio,
      window=self.window,
      global_blocks=tuple(self.global_blocks),
      out_chans=self.prompt_dim,
      adapter_dim=self.adapter_dim,
      dtype=self.dtype,
    )
    self.prompt_encoder = PromptEncoder(self.prompt_dim, dtype=self.dtype)
    self.mask_decoder = MaskDecoder(
      dim=self.prompt_dim,
      depth=self.decoder_depth,
      num_heads=self.decoder_heads,
      mlp_dim=self.decoder_mlp_dim,
      iou_head_hidden=self.iou_head_hidden,
      num_mask_tokens=self.num_multimask_outputs + 1,
      dtype=self.dtype,
    )

  def embed_and_decode(self, images):
    """(image embeddings [B, h, w, C], mask logits [B, 4h, 4w], predicted IoU [B])."""
    emb = self.image_encoder(images)
    dense, image_pe = self.prompt_encoder(emb.shape[0], emb.shape[1:3])
    masks, iou = self.mask_decoder(emb, image_pe, dense)
    return emb, masks[..., 0], iou[:, 0]  # multimask_output=False: the first mask token

  def __call__(self, images, train: bool = False):
    del train  # SAM has no dropout or drop-path
    _, masks, iou = self.embed_and_decode(images)
    return masks, iou


_SAM_FIELDS = (
  'image_size', 'patch_size', 'embed_dim', 'depth', 'num_heads', 'global_blocks', 'window',
  'mlp_ratio', 'prompt_dim', 'decoder_depth', 'decoder_heads', 'decoder_mlp_dim',
  'iou_head_hidden', 'num_multimask_outputs', 'adapter_dim', 'vpt_tokens', 'remat', 'dtype',
)  # fmt: skip


def _variant_fields(variant: str) -> dict:
  if not variant:  # no named size: the config's own fields give the architecture
    return dict(embed_dim=None, depth=None, num_heads=None, global_blocks=None)
  if variant not in VARIANTS:
    raise ValueError(f'unknown SAM variant {variant!r}; use one of {", ".join(VARIANTS)}')
  dim, depth, heads, global_blocks = VARIANTS[variant]
  return dict(embed_dim=dim, depth=depth, num_heads=heads, global_blocks=global_blocks)


def sam_config(variant: str, *, num_classes: int = 0, image_size: int = 1024, **overrides):
  """The model config of a SAM variant ('vit_b', 'vit_l', 'vit_h'): name='sam', variant, every
  SAM field, and ImageNet's mean / std (SAM's ``pixel_mean`` / ``pixel_std``, which the
  original GPS polyp runs apply in their data wrappers). ``num_classes`` is kept for the
  common interface and unused (one binary mask). ``overrides`` replace any field."""
  defaults = dict(
    patch_size=16, window=14, mlp_ratio=4.0, prompt_dim=256, decoder_depth=2, decoder_heads=8,
    decoder_mlp_dim=2048, iou_head_hidden=256, num_multimask_outputs=3, adapter_dim=0,
    vpt_tokens=0, remat='', dtype='float32', mean=IMAGENET_MEAN, std=IMAGENET_STD,
  )  # fmt: skip
  return named_config(
    'sam', variant, _variant_fields, defaults, overrides, label='SAM', num_classes=num_classes,
    image_size=image_size,
  )  # fmt: skip


def build_sam(model_config) -> SAM:
  """A SAM from a model config (ConfigDict or mapping); fields not of SAM are ignored."""
  fields = module_fields(
    model_config, 'sam', _SAM_FIELDS, ('embed_dim', 'depth', 'num_heads', 'global_blocks'),
    _variant_fields,
    label='SAM', int_tuples=('global_blocks',),
  )  # fmt: skip
  return SAM(**fields)
