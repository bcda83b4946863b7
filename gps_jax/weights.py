"""Pretrained weights from the files users have: vit_jax `.npz` and timm checkpoints.

``load_checkpoint(path, model_config)`` returns the nested Flax parameters of the
model that ``model_config`` describes (``name`` 'vit', 'swin' or 'convnext'):

* ``.npz``: a vit_jax / big_vision ViT file, or any file in the gps_jax layout
  ('/'-joined parameter paths, what ``tools/convert_checkpoint.py`` writes);
  read with ``allow_pickle=False``.
* ``.safetensors``: a timm state dict, read without any code execution.
* ``.pth`` / ``.pt`` / ``.bin``: a timm state dict through
  ``torch.load(weights_only=True)`` (torch must be installed); a file that
  needs arbitrary unpickling is refused, never run. A ``{'state_dict': ...}``
  or ``{'model': ...}`` wrapper is unwrapped.

timm layouts are converted (ViT: the stacked ``qkv`` into query/key/value
kernels of shape (D, heads, head_dim), ``proj`` into the (heads, head_dim, D)
out kernel; conv OIHW to HWIO; Linear weights transposed), position embeddings
and relative-position tables are resized for another image or window size, a
head of another class count is dropped (the model's fresh zero head stays: a
new task gets a new head), and every missing, unexpected or mis-shaped key is
named in one ValueError.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gps_jax import vit_npz
from gps_jax.tree import flat, unflat

TORCH_SUFFIXES = ('.pth', '.pt', '.bin')
_WRAPPERS = ('state_dict', 'model', 'module', 'state_dict_ema', 'model_ema')


# ----------------------------------------------------------------------------- reading


def _to_numpy(name: str, value, path: str) -> np.ndarray:
  try:
    import torch

    if isinstance(value, torch.Tensor):
      value = value.detach().cpu()
      if value.dtype == torch.bfloat16:  # numpy has no bfloat16
        value = value.float()
      return value.numpy()
  except ImportError:
    pass
  array = np.asarray(value)
  if array.dtype.kind not in 'fiub':
    raise ValueError(f'{path}: entry {name!r} is not a numeric tensor ({type(value).__name__})')
  return array


def _unwrap(obj, path: str) -> Mapping:
  if not isinstance(obj, Mapping):
    raise ValueError(
      f'{path}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}'
    )
  for key in _WRAPPERS:
    if key in obj and isinstance(obj[key], Mapping):
      return obj[key]
  return obj


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A timm state dict as {name: float32/int np.ndarray}, without running code from the file."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'checkpoint {path} not found')
  if path.endswith('.safetensors'):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
      state = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:  # truncated, a pickle, bad header
      raise ValueError(f'cannot read {path} as safetensors: {e}') from e
    except Exception as e:  # e.g. a bfloat16 tensor numpy cannot hold
      if 'bfloat16' not in str(e) and 'bf16' not in str(e).lower():
        raise ValueError(f'cannot read {path} as safetensors: {e}') from e
      state = _read_safetensors_with_torch(path)
    return {k: _to_numpy(k, v, path) for k, v in state.items()}
  if path.endswith(TORCH_SUFFIXES):
    try:
      import torch
    except ImportError as e:
      raise ImportError(
        f'{path}: reading .pth/.pt/.bin checkpoints needs torch (pip install torch); '
        'a .safetensors file needs only the safetensors package'
      ) from e
    try:
      obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # UnpicklingError (code refused), truncated archive, ...
      raise ValueError(
        f'cannot read {path} with torch.load(weights_only=True): {type(e).__name__}: {e}'
      ) from e
    return {k: _to_numpy(k, v, path) for k, v in _unwrap(obj, path).items()}
  raise ValueError(
    f'{path}: unknown checkpoint type; use .npz (vit_jax / gps_jax layout), .safetensors, '
    f'or {"/".join(TORCH_SUFFIXES)} (timm state dicts)'
  )


def _read_safetensors_with_torch(path: str) -> dict:
  try:
    from safetensors.torch import load_file
  except ImportError as e:
    raise ImportError(f'{path} holds bfloat16 tensors: reading it needs torch') from e
  return load_file(path)


# ----------------------------------------------------------------------------- ViT


def _linear(w: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(w.T)


def vit_flat_from_timm(state: Mapping[str, np.ndarray], num_heads: int) -> dict[str, np.ndarray]:
  """A timm ViT state dict renamed and reshaped into the vit_jax layout (flat keys).

  Keys it does not know are passed through under their timm names, so the
  strict check of :func:`gps_jax.vit_npz.fit_params` reports them as unexpected.
  """
  out, rest = {}, dict(state)

  def take(name):
    return rest.pop(name)

  if 'patch_embed.proj.weight' in rest:
    out['embedding/kernel'] = np.transpose(take('patch_embed.proj.weight'), (2, 3, 1, 0))
  if 'patch_embed.proj.bias' in rest:
    out['embedding/bias'] = take('patch_embed.proj.bias')
  if 'cls_token' in rest:
    out['cls'] = take('cls_token')
  if 'pos_embed' in rest:
    out[vit_npz.POSEMB_KEY] = take('pos_embed')
  for src, dst in (('norm', 'Transformer/encoder_norm'), ('head', 'head')):
    if f'{src}.weight' in rest:
      w = take(f'{src}.weight')
      out[f'{dst}/scale' if src == 'norm' else f'{dst}/kernel'] = w if src == 'norm' else _linear(w)
    if f'{src}.bias' in rest:
      out[f'{dst}/bias'] = take(f'{src}.bias')
  blocks = sorted({int(k.split('.')[1]) for k in rest if k.startswith('blocks.')})
  for i in blocks:
    b, t = f'Transformer/encoderblock_{i}/', f'blocks.{i}.'
    attn = b + 'MultiHeadDotProductAttention_1/'
    for src, dst in (('norm1', 'LayerNorm_0'), ('norm2', 'LayerNorm_2')):
      for p, q in (('weight', 'scale'), ('bias', 'bias')):
        if t + f'{src}.{p}' in rest:
          out[b + f'{dst}/{q}'] = take(t + f'{src}.{p}')
    if t + 'attn.qkv.weight' in rest:
      w = take(t + 'attn.qkv.weight')  # (3D, D): q, k, v stacked, each (D_out, D_in)
      dim = w.shape[1]
      if w.shape[0] != 3 * dim or dim % num_heads:
        out[attn + 'qkv/kernel'] = w  # reported as unexpected, with its shape
      else:
        for name, part in zip(('query', 'key', 'value'), np.split(w, 3)):
          out[attn + f'{name}/kernel'] = part.T.reshape(dim, num_heads, dim // num_heads)
    if t + 'attn.qkv.bias' in rest:
      bias = take(t + 'attn.qkv.bias')
      if bias.shape[0] % (3 * num_heads):
        out[attn + 'qkv/bias'] = bias
      else:
        for name, part in zip(('query', 'key', 'value'), np.split(bias, 3)):
          out[attn + f'{name}/bias'] = part.reshape(num_heads, -1)
    if t + 'attn.proj.weight' in rest:
      w = take(t + 'attn.proj.weight')  # (D_out, D_in), D_in = heads * head_dim
      if w.shape[1] % num_heads:
        out[attn + 'out/kernel'] = w
      else:
        out[attn + 'out/kernel'] = w.T.reshape(num_heads, w.shape[1] // num_heads, w.shape[0])
    if t + 'attn.proj.bias' in rest:
      out[attn + 'out/bias'] = take(t + 'attn.proj.bias')
    for src, dst in (('fc1', 'Dense_0'), ('fc2', 'Dense_1')):
      if t + f'mlp.{src}.weight' in rest:
        out[b + f'MlpBlock_3/{dst}/kernel'] = _linear(take(t + f'mlp.{src}.weight'))
      if t + f'mlp.{src}.bias' in rest:
        out[b + f'MlpBlock_3/{dst}/bias'] = take(t + f'mlp.{src}.bias')
  out.update(rest)  # unknown keys: reported by the fit check under their timm names
  return out


# ----------------------------------------------------------------------------- entry point


def build_model(model_config):
  """The Flax model of a model config: 'vit', 'swin' or 'convnext'."""
  name = model_config.get('name', 'vit') if hasattr(model_config, 'get') else 'vit'
  if name == 'vit':
    from gps_jax.models.vit import build_vit

    return build_vit(model_config)
  if name == 'swin':
    from gps_jax.models.swin import build_swin

    return build_swin(model_config)
  if name == 'convnext':
    from gps_jax.models.convnext import build_convnext

    return build_convnext(model_config)
  raise ValueError(f"config.model.name={name!r}: use 'vit', 'swin' or 'convnext'")


def init_params(model, rng=None) -> dict:
  """The model's freshly initialised params (one jitted init on a dummy image)."""
  rng = jax.random.PRNGKey(0) if rng is None else rng
  size = model.image_size
  init = jax.jit(lambda r: model.init(r, jnp.zeros((1, size, size, 3)), train=False)['params'])
  return jax.device_get(init(rng))


def load_checkpoint(
  path: str | os.PathLike,
  model_config,
  *,
  model=None,
  init: Optional[Mapping[str, Any]] = None,
  rng=None,
) -> dict:
  """Nested float32 params for ``model_config`` from a checkpoint file (see the module doc).

  ``model`` (built from ``model_config`` when omitted) and ``init`` (its fresh
  params, initialised when omitted) give the expected names and shapes and the
  fresh head used when the file's head does not fit.
  """
  path = os.fspath(path)
  model = build_model(model_config) if model is None else model
  name = model_config.get('name', 'vit')
  if init is None:
    init = init_params(model, rng)
  if path.endswith('.npz'):
    return vit_npz.load_vit_npz(path, model, init_params=init)
  state = read_state_dict(path)
  if name == 'vit':
    loaded = vit_flat_from_timm(state, model.num_heads)
    return vit_npz.fit_params(loaded, model, path, init_params=init)
  if name == 'swin':
    from gps_jax.models.swin_timm import swin_params_from_timm

    params = swin_params_from_timm(state, model)
  elif name == 'convnext':
    from gps_jax.models.convnext_timm import convnext_params_from_timm

    params = convnext_params_from_timm(state, model)
  else:
    raise ValueError(f"config.model.name={name!r}: use 'vit', 'swin' or 'convnext'")
  return _with_fresh_head(params, init)


def _with_fresh_head(params: Mapping, init: Mapping) -> dict:
  """Float32 params; the model's fresh head where the converted params have none."""
  out = {k: np.asarray(v, np.float32) for k, v in flat(params).items()}
  for k, v in flat(init).items():
    if k.startswith('head/') and k not in out:
      out[k] = np.asarray(v, np.float32)
  return unflat(out)
