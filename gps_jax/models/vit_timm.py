"""ViT checkpoints: timm ``VisionTransformer`` state dicts into the vit_jax layout, and the
position-embedding resize of vit_jax / big_vision for another image size.

A vit_jax / gps_jax ``.npz`` already uses the Flax paths of :class:`gps_jax.models.vit.ViT`.
A timm state dict is first rewritten as a whole (:func:`vit_flat_from_timm`): one timm
``qkv`` weight becomes three Flax kernels, so the rename is not one name per parameter.
After that both kinds of file take the same strict fit, with the same adaptations.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import jax
import numpy as np

from gps_jax.models.fitting import Layout
from gps_jax.models.timm_layout import kernel_from_torch

POSEMB_KEY = 'Transformer/posembed_input/pos_embedding'


def resize_posemb(posemb, new_num_tokens: int) -> np.ndarray:
  """Resizes a (1, 1+g*g, D) position embedding to (1, new_num_tokens, D).

  The class token (index 0) is kept as is; the remaining g*g embeddings are viewed as a
  square (g, g, D) grid and resized bilinearly to the new square grid with
  ``jax.image.resize(method='bilinear')`` (half-pixel centres; antialiased when shrinking,
  as in big_vision). Returns float32; a non-square grid raises ValueError.
  """
  posemb = np.asarray(posemb, dtype=np.float32)
  if posemb.ndim != 3 or posemb.shape[0] != 1:
    raise ValueError(f'position embedding must have shape (1, tokens, D), got {posemb.shape}')
  if posemb.shape[1] == new_num_tokens:
    return posemb.copy()
  old_grid, new_grid = math.isqrt(posemb.shape[1] - 1), math.isqrt(max(new_num_tokens - 1, 0))
  if old_grid**2 != posemb.shape[1] - 1 or new_grid**2 != new_num_tokens - 1 or not new_grid:
    raise ValueError(
      f'cannot resize position embedding from {posemb.shape[1]} to '
      f'{new_num_tokens} tokens: both must be 1 class token + a square grid'
    )
  dim = posemb.shape[2]
  grid = posemb[0, 1:].reshape(old_grid, old_grid, dim)
  grid = np.asarray(jax.image.resize(grid, (new_grid, new_grid, dim), method='bilinear'))
  return np.concatenate([posemb[:, :1], grid.reshape(1, new_grid * new_grid, dim)], axis=1)


def resize_posemb_hook(path: str, value: np.ndarray, want: tuple):
  """The fit's resize hook: another token count of the same width is resized."""
  old = value.shape
  if path != POSEMB_KEY or len(old) != 3 or len(want) != 3 or old[::2] != want[::2]:
    return None
  return resize_posemb(value, want[1])


def _split_qkv(out: dict, attn: str, w, bias, num_heads: int) -> None:
  """timm's stacked (3D, D) qkv weight / (3D,) bias -> query/key/value (D, heads, head_dim)
  kernels and (heads, head_dim) biases; a stack that does not split stays whole under
  ``qkv/`` and is reported as unexpected, with its shape."""
  if w is not None:
    dim = w.shape[1]
    if w.shape[0] != 3 * dim or dim % num_heads:
      out[attn + 'qkv/kernel'] = w
    else:
      for name, part in zip(('query', 'key', 'value'), np.split(w, 3)):
        out[attn + f'{name}/kernel'] = part.T.reshape(dim, num_heads, dim // num_heads)
  if bias is not None:
    if bias.shape[0] % (3 * num_heads):
      out[attn + 'qkv/bias'] = bias
    else:
      for name, part in zip(('query', 'key', 'value'), np.split(bias, 3)):
        out[attn + f'{name}/bias'] = part.reshape(num_heads, -1)


def _rename(out: dict, rest: dict, pairs, leaves=(('weight', 'scale'), ('bias', 'bias'))) -> None:
  """Moves timm '{src}.{leaf}' entries of ``rest`` to '{dst}/{flax leaf}' in ``out``; a
  'kernel' leaf is a torch weight and is transposed."""
  for src, dst in pairs:
    for leaf, flax_leaf in leaves:
      if f'{src}.{leaf}' in rest:
        value = rest.pop(f'{src}.{leaf}')
        out[f'{dst}/{flax_leaf}'] = kernel_from_torch(value) if flax_leaf == 'kernel' else value


_LINEAR = (('weight', 'kernel'), ('bias', 'bias'))


def vit_flat_from_timm(state: Mapping[str, np.ndarray], num_heads: int) -> dict[str, np.ndarray]:
  """A timm ViT state dict renamed and reshaped into the vit_jax layout (flat keys).

  Keys it does not know are passed through under their timm names, so the strict fit
  (:func:`gps_jax.models.fitting.fit_params`) reports them as unexpected.
  """
  out, rest = {}, dict(state)
  _rename(out, rest, [('patch_embed.proj', 'embedding'), ('head', 'head')], _LINEAR)
  for src, dst in (('cls_token', 'cls'), ('pos_embed', POSEMB_KEY)):
    if src in rest:
      out[dst] = rest.pop(src)
  _rename(out, rest, [('norm', 'Transformer/encoder_norm')])
  blocks = sorted({int(k.split('.')[1]) for k in rest if k.startswith('blocks.')})
  for i in blocks:
    b, t = f'Transformer/encoderblock_{i}/', f'blocks.{i}.'
    attn = b + 'MultiHeadDotProductAttention_1/'
    _rename(out, rest, [(t + 'norm1', b + 'LayerNorm_0'), (t + 'norm2', b + 'LayerNorm_2')])
    qkv = [rest.pop(t + f'attn.qkv.{leaf}', None) for leaf in ('weight', 'bias')]
    _split_qkv(out, attn, *qkv, num_heads)
    if t + 'attn.proj.weight' in rest:
      w = rest.pop(t + 'attn.proj.weight')  # (D_out, D_in), D_in = heads * head_dim
      fits = not w.shape[1] % num_heads
      out[attn + 'out/kernel'] = w.T.reshape(num_heads, -1, w.shape[0]) if fits else w
    _rename(out, rest, [(t + 'attn.proj', attn + 'out')], (('bias', 'bias'),))
    mlp = [
      (t + f'mlp.{src}', b + f'MlpBlock_3/{dst}')
      for src, dst in (('fc1', 'Dense_0'), ('fc2', 'Dense_1'))
    ]
    _rename(out, rest, mlp, _LINEAR)
  out.update(rest)  # unknown keys: reported by the fit under their timm names
  return out


# A vit_jax / gps_jax .npz: Flax paths; pre_logits dropped when the model has no
# representation_size (the original ImageNet-21k files carry it), position embeddings resized.
VIT_NPZ = Layout(optional=('pre_logits/',), resize=(resize_posemb_hook,))
VIT_TIMM = dataclasses.replace(
  VIT_NPZ,
  prepare=lambda state, model: vit_flat_from_timm(state, model.num_heads),
  label='timm ViT state dict',
)
