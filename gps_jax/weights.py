"""Pretrained weights from the files users have: vit_jax `.npz`, timm checkpoints, SAM's.

``load_checkpoint(path, model_config)`` returns the nested Flax parameters of the
model that ``model_config`` describes (``name``: a family of
:data:`gps_jax.models.registry.FAMILIES`, 'vit', 'swin', 'convnext' or 'sam'):

* ``.npz``: a vit_jax / big_vision ViT file, or any file in the gps_jax layout
  ('/'-joined parameter paths, what ``tools/convert_checkpoint.py`` writes);
  read with ``allow_pickle=False``.
* ``.safetensors``: a timm state dict (for SAM: the ``transformers`` port's file), read
  without any code execution.
* ``.pth`` / ``.pt`` / ``.bin``: a timm state dict through
  ``torch.load(weights_only=True)`` (torch must be installed); a file that
  needs arbitrary unpickling is refused, never run. A ``{'state_dict': ...}``
  or ``{'model': ...}`` wrapper is unwrapped.

timm layouts are converted (ViT: the stacked ``qkv`` into query/key/value
kernels of shape (D, heads, head_dim), ``proj`` into the (heads, head_dim, D)
out kernel; conv OIHW to HWIO; Linear weights transposed), position embeddings
and relative-position tables are resized for another image or window size, a
head of another class count is dropped (the model's fresh head stays, as its
head_init draws it: a new task gets a new head), and every missing, unexpected or mis-shaped key is
named in one ValueError. The family's entry in the registry says how its files are
named and adapted (where it reads two layouts of one file type, SAM's official files and
the ``transformers`` port, ``Family.file_layout`` tells them apart by their names);
:func:`gps_jax.models.fitting.fit_params` is the one strict fit.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

import numpy as np

from gps_jax import vit_npz
from gps_jax.models.fitting import init_params
from gps_jax.models.registry import build_model, family_of
from gps_jax.models.vit_timm import vit_flat_from_timm

__all__ = ['build_model', 'init_params', 'load_checkpoint', 'read_state_dict', 'vit_flat_from_timm']

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


# ----------------------------------------------------------------------------- entry point


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
  params) give the expected names and shapes and the fresh head used when the
  file's head does not fit. Without ``init`` nothing else is initialised: shapes
  come from ``jax.eval_shape``, and only the parts the file lacks (a fresh head,
  adapters, prompts) are drawn from ``rng``, with the values a full init would give.
  """
  path = os.fspath(path)
  family = family_of(model_config)
  model = family.build(model_config) if model is None else model
  if path.endswith('.npz'):
    arrays, layout = vit_npz.read_npz(path), family.npz
  else:
    arrays = read_state_dict(path)
    layout = family.file_layout(arrays)
  return layout.params(arrays, model, f'checkpoint {path}', init=init, rng=rng)
