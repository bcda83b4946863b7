"""SAM's prompt path without prompts and its mask decoder, in Flax Linen (channels last),
equal to ``segment_anything.modeling.prompt_encoder`` / ``mask_decoder`` / ``transformer``.

* `PromptEncoder` — what the polyp experiment uses of SAM's prompt encoder: no points, boxes
  or masks, so no sparse tokens and the learned ``no_mask_embed`` as the dense embedding of
  every position; and the random-Fourier positional encoding of the embedding grid
  (``pe_layer``, a fixed Gaussian matrix of the checkpoint).
* `MaskDecoder` — the two-way transformer (token self-attention, token -> image and
  image -> token cross-attention with the internal width halved, ReLU MLP, LayerNorm eps
  1e-5), the 4x upscaling by two 2x2 stride-2 transposed convs, one hypernetwork MLP per
  mask token and the IoU head.

Parameter layout under ``prompt_encoder/`` and ``mask_decoder/``::

    prompt_encoder/pe_layer/positional_encoding_gaussian_matrix    (2, C/2)
    prompt_encoder/no_mask_embed                                    (1, C)
    mask_decoder/iou_token (1, C)             mask_decoder/mask_tokens (4, C)
    mask_decoder/transformer/layers_{i}/{self_attn, cross_attn_token_to_image,
        cross_attn_image_to_token}/{q_proj,k_proj,v_proj,out_proj}/{kernel,bias}
    mask_decoder/transformer/layers_{i}/norm{1,2,3,4}/{scale,bias}
    mask_decoder/transformer/layers_{i}/mlp/{lin1,lin2}/{kernel,bias}
    mask_decoder/transformer/final_attn_token_to_image/...   norm_final_attn/{scale,bias}
    mask_decoder/output_upscaling_0/{kernel (2,2,C,C/4), bias}   output_upscaling_1/{scale,bias}
    mask_decoder/output_upscaling_3/{kernel (2,2,C/4,C/8), bias}
    mask_decoder/output_hypernetworks_mlps_{t}/layers_{0,1,2}/{kernel,bias}
    mask_decoder/iou_prediction_head/layers_{0,1,2}/{kernel,bias}
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gps_jax.models.layers import layer_norm

EPS_2D = 1e-6  # LayerNorm2d of the upscaling
EPS_TRANSFORMER = 1e-5  # torch.nn.LayerNorm's default, the two-way transformer's norms


class PositionEmbeddingRandom(nn.Module):
  """Random-Fourier features of the (x, y) centre of every grid cell, in [0, 1]."""

  dim: int

  @nn.compact
  def __call__(self, grid: tuple[int, int]) -> jax.Array:
    gauss = self.param(
      'positional_encoding_gaussian_matrix', nn.initializers.normal(1.0), (2, self.dim // 2)
    )
    h, w = grid
    y = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h
    x = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w
    coords = jnp.stack(jnp.broadcast_arrays(x[None, :], y[:, None]), axis=-1)  # [h, w, (x, y)]
    proj = 2 * math.pi * ((2 * coords - 1) @ gauss.astype(jnp.float32))
    return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


class PromptEncoder(nn.Module):
  """(dense embeddings [B, h, w, C], positional encoding [1, h, w, C]) without prompts."""

  dim: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, batch: int, grid: tuple[int, int]):
    pe = PositionEmbeddingRandom(self.dim, name='pe_layer')(grid)
    no_mask = self.param('no_mask_embed', nn.initializers.normal(1.0), (1, self.dim))
    dense = jnp.broadcast_to(no_mask.astype(self.dtype), (batch, *grid, self.dim))
    return dense, pe[None].astype(self.dtype)


class MLPBlock(nn.Module):
  """lin1 -> activation -> lin2 (SAM's ``MLPBlock``: exact GELU in the image encoder, ReLU
  in the decoder's transformer)."""

  hidden_dim: int
  activation: str = 'gelu'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = nn.Dense(self.hidden_dim, dtype=self.dtype, name='lin1')(x)
    y = nn.gelu(y, approximate=False) if self.activation == 'gelu' else nn.relu(y)
    return nn.Dense(x.shape[-1], dtype=self.dtype, name='lin2')(y)


class DecoderAttention(nn.Module):
  """Attention with q/k/v projected to ``dim // downsample`` (SAM's decoder ``Attention``)."""

  num_heads: int
  downsample: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, q, k, v):
    dim = q.shape[-1]
    inner = dim // self.downsample
    hd = inner // self.num_heads

    def heads(x, name):
      y = nn.Dense(inner, dtype=self.dtype, name=name)(x)
      return y.reshape(*y.shape[:2], self.num_heads, hd)

    q, k, v = heads(q, 'q_proj'), heads(k, 'k_proj'), heads(v, 'v_proj')
    attn = jax.nn.softmax(jnp.einsum('bqhd,bkhd->bhqk', q, k) / math.sqrt(hd), axis=-1)
    out = jnp.einsum('bhqk,bkhd->bqhd', attn, v).reshape(*q.shape[:2], inner)
    return nn.Dense(dim, dtype=self.dtype, name='out_proj')(out)


class TwoWayAttentionBlock(nn.Module):
  """Token self-attention, token -> image attention, MLP, image -> token attention."""

  num_heads: int
  mlp_dim: int
  downsample: int = 2
  skip_first_layer_pe: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, queries, keys, query_pe, key_pe):
    def norm(name):
      return layer_norm(name, EPS_TRANSFORMER, self.dtype)

    self_attn = DecoderAttention(self.num_heads, dtype=self.dtype, name='self_attn')
    if self.skip_first_layer_pe:
      queries = self_attn(queries, queries, queries)
    else:
      q = queries + query_pe
      queries = queries + self_attn(q, q, queries)
    queries = norm('norm1')(queries)
    q, k = queries + query_pe, keys + key_pe
    queries = queries + DecoderAttention(
      self.num_heads, self.downsample, dtype=self.dtype, name='cross_attn_token_to_image'
    )(q, k, keys)
    queries = norm('norm2')(queries)
    mlp = MLPBlock(self.mlp_dim, activation='relu', dtype=self.dtype, name='mlp')
    queries = norm('norm3')(queries + mlp(queries))
    q, k = queries + query_pe, keys + key_pe
    keys = keys + DecoderAttention(
      self.num_heads, self.downsample, dtype=self.dtype, name='cross_attn_image_to_token'
    )(k, q, queries)
    return queries, norm('norm4')(keys)


class TwoWayTransformer(nn.Module):
  """(tokens [B, T, C], image [B, h*w, C]) after `depth` two-way blocks and a final
  token -> image attention."""

  depth: int = 2
  num_heads: int = 8
  mlp_dim: int = 2048
  downsample: int = 2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, image, image_pe, tokens):
    queries, keys = tokens, image
    for i in range(self.depth):
      queries, keys = TwoWayAttentionBlock(
        self.num_heads,
        self.mlp_dim,
        self.downsample,
        skip_first_layer_pe=i == 0,
        dtype=self.dtype,
        name=f'layers_{i}',
      )(queries, keys, tokens, image_pe)
    attn = DecoderAttention(
      self.num_heads, self.downsample, dtype=self.dtype, name='final_attn_token_to_image'
    )
    queries = queries + attn(queries + tokens, keys + image_pe, keys)
    return layer_norm('norm_final_attn', EPS_TRANSFORMER, self.dtype)(queries), keys


class ConvTranspose2x2(nn.Module):
  """A 2x2 transposed conv with stride 2 (non-overlapping): every input pixel becomes a 2x2
  block, out[2i+a, 2j+b] = x[i, j] @ kernel[a, b] + bias. Kernel (2, 2, in, out)."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param(
      'kernel', nn.initializers.lecun_normal(), (2, 2, x.shape[-1], self.features)
    )
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    b, h, w, _ = x.shape
    y = jnp.einsum('nhwc,abco->nhawbo', x.astype(self.dtype), kernel.astype(self.dtype))
    return y.reshape(b, 2 * h, 2 * w, self.features) + bias.astype(self.dtype)


class MLP(nn.Module):
  """`len(dims)` Dense layers (``layers_{i}``) with ReLU between them."""

  dims: tuple[int, ...]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i, d in enumerate(self.dims):
      x = nn.Dense(d, dtype=self.dtype, name=f'layers_{i}')(x)
      if i < len(self.dims) - 1:
        x = nn.relu(x)
    return x


class MaskDecoder(nn.Module):
  """(mask logits [B, 4h, 4w, tokens], IoU predictions [B, tokens]) from the image
  embeddings [B, h, w, C], their positional encoding and the dense prompt embeddings."""

  dim: int = 256
  depth: int = 2
  num_heads: int = 8
  mlp_dim: int = 2048
  iou_head_hidden: int = 256
  num_mask_tokens: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, image_embeddings, image_pe, dense):
    b, h, w, c = image_embeddings.shape
    iou_token = self.param('iou_token', nn.initializers.normal(1.0), (1, c))
    mask_tokens = self.param('mask_tokens', nn.initializers.normal(1.0), (self.num_mask_tokens, c))
    tokens = jnp.broadcast_to(
      jnp.concatenate([iou_token, mask_tokens]).astype(self.dtype), (b, 1 + self.num_mask_tokens, c)
    )  # no sparse prompt tokens
    src = (image_embeddings + dense).reshape(b, h * w, c)
    pos = jnp.broadcast_to(image_pe, (b, h, w, c)).reshape(b, h * w, c)
    hs, src = TwoWayTransformer(
      self.depth, self.num_heads, self.mlp_dim, dtype=self.dtype, name='transformer'
    )(src, pos, tokens)
    up = ConvTranspose2x2(c // 4, dtype=self.dtype, name='output_upscaling_0')(src.reshape(b, h, w, c))
    up = nn.gelu(layer_norm('output_upscaling_1', EPS_2D, self.dtype)(up), approximate=False)
    up = ConvTranspose2x2(c // 8, dtype=self.dtype, name='output_upscaling_3')(up)
    up = nn.gelu(up, approximate=False)  # [B, 4h, 4w, C/8]
    hyper = jnp.stack(
      [
        MLP((c, c, c // 8), dtype=self.dtype, name=f'output_hypernetworks_mlps_{t}')(hs[:, 1 + t])
        for t in range(self.num_mask_tokens)
      ],
      axis=1,
    )  # [B, tokens, C/8]
    masks = jnp.einsum('bhwc,btc->bhwt', up, hyper)
    iou = MLP(
      (self.iou_head_hidden, self.iou_head_hidden, self.num_mask_tokens),
      dtype=self.dtype,
      name='iou_prediction_head',
    )(hs[:, 0])
    return masks, iou
