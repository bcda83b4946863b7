"""Reading and writing vit_jax ``.npz`` checkpoints.

A vit_jax checkpoint is an ``np.savez`` archive whose keys are the '/'-joined parameter
paths, e.g. ``Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel``. Loading is strict:
apart from the documented adaptations below, any missing, unexpected or mis-shaped key
raises one ValueError that lists all of them.

Adaptations made by :func:`load_vit_npz`:

* ``head/*`` whose shapes differ from the model's (another class count), or that the model
  lacks (num_classes == 0), is dropped; the model's head keeps its fresh init (zeros). A head
  absent from the file is freshly initialised too.
* ``pre_logits/*`` is dropped when the model has no representation_size (the original
  ImageNet-21k files carry it; fine-tuning discards it, as vit_jax does).
* ``Transformer/posembed_input/pos_embedding`` with another token count is resized with
  :func:`resize_posemb` (bilinear, via ``jax.image.resize``).

Files are opened with ``allow_pickle=False``: an archive holding pickled (object) arrays, a
file that is not a zip archive, or a truncated one raises a ValueError naming the file, and
no code inside it is ever run.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gps_jax.files import write_atomic
from gps_jax.tree import flat, unflat

POSEMB_KEY = 'Transformer/posembed_input/pos_embedding'

log = logging.getLogger(__name__)


def save_vit_npz(path: str | os.PathLike, params: Mapping) -> None:
  """Writes a nested param dict as a vit_jax ``.npz`` ('/'-joined keys). The archive is
  written to a temporary file in the same directory and then moved over ``path``, so a
  crash never leaves a half-written file behind."""
  path = os.fspath(path)
  arrays = {}
  for name, value in flat(params).items():
    array = np.asarray(jax.device_get(value))
    if array.dtype.kind not in 'fiub':
      raise ValueError(f'cannot save {name!r} to {path}: dtype {array.dtype} is not numeric')
    arrays[name] = array
  write_atomic(path, lambda f: np.savez(f, **arrays))


def _read_npz(path: str) -> dict[str, np.ndarray]:
  """Reads every array of an ``.npz`` without pickle; any damage becomes a ValueError."""
  try:
    npz = np.load(path, allow_pickle=False)
  except FileNotFoundError:
    raise
  except Exception as e:  # not a zip/npy file (np.load refuses pickle), empty file, ...
    raise ValueError(
      f'cannot read ViT checkpoint {path}: not a pickle-free .npz archive ({type(e).__name__}: {e})'
    ) from e
  if not isinstance(npz, np.lib.npyio.NpzFile):
    raise ValueError(f'ViT checkpoint {path} is a single .npy array, not an .npz archive')
  try:
    with npz:
      arrays = {name: npz[name] for name in npz.files}
  except Exception as e:  # BadZipFile, EOFError, zlib.error, object arrays (pickle), ...
    raise ValueError(f'cannot read ViT checkpoint {path}: {type(e).__name__}: {e}') from e
  raw = sorted(k for k, v in arrays.items() if not isinstance(v, np.ndarray))
  if raw:  # NpzFile hands back raw bytes for members that are not .npy arrays
    raise ValueError(f'ViT checkpoint {path} has members that are not .npy arrays: {raw}')
  return arrays


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


def _dummy_init(model, rng):
  """Returns (rng, a function rng -> model.init(...)['params'] on one dummy image)."""
  rng = jax.random.PRNGKey(0) if rng is None else rng
  dummy = jnp.zeros((1, model.image_size, model.image_size, 3), jnp.float32)
  return rng, lambda r: model.init(r, dummy, train=False)['params']


def _expected_shapes(model, rng, init_params) -> dict[str, tuple]:
  """Flat {name: shape} of the model's params, from init_params or jax.eval_shape."""
  if init_params is not None:
    return {k: tuple(np.shape(v)) for k, v in flat(init_params).items()}
  rng, init = _dummy_init(model, rng)
  return {k: tuple(v.shape) for k, v in flat(jax.eval_shape(init, rng)).items()}


def _fresh_head(model, rng, init_params) -> dict[str, Any]:
  """Flat {'head/...': value} of a freshly initialised head (from init_params if given)."""
  if init_params is not None:
    return {k: v for k, v in flat(init_params).items() if k.startswith('head/')}
  rng, init = _dummy_init(model, rng)
  # Under jit, XLA drops everything but the head's initialisers: cheap even for ViT-L.
  head = jax.jit(lambda r: init(r)['head'])(rng)
  return {f'head/{k}': v for k, v in flat(head).items()}


def load_vit_npz(
  path: str | os.PathLike, model, *, rng=None, init_params: Optional[Mapping] = None
) -> dict:
  """Loads a vit_jax ``.npz`` into a nested dict of float32 ``np.ndarray`` matching ``model``.

  The expected names and shapes come from ``init_params`` when given, else from
  ``model.init(rng, zeros((1, image_size, image_size, 3)), train=False)['params']``
  (shapes via ``jax.eval_shape``; rng defaults to PRNGKey(0)). See the module docstring for
  the head / pre_logits / position-embedding adaptations; every other discrepancy raises
  one ValueError naming the file and all offending keys.
  """
  path = os.fspath(path)
  return fit_params(_read_npz(path), model, path, rng=rng, init_params=init_params)


def fit_params(
  loaded: dict[str, np.ndarray],
  model,
  path: str,
  *,
  rng=None,
  init_params: Optional[Mapping] = None,
) -> dict:
  """Flat '/'-joined arrays (from any file) -> nested float32 params that fit ``model``.

  The adaptations and the strict check of :func:`load_vit_npz`; ``path`` names
  the file in messages. Works for any model whose file keys are its param paths.
  """
  loaded = dict(loaded)
  expected = _expected_shapes(model, rng, init_params)

  file_head = {k for k in loaded if k.startswith('head/')}
  model_head = {k for k in expected if k.startswith('head/')}
  head_fits = file_head == model_head and all(loaded[k].shape == expected[k] for k in model_head)
  if file_head and not head_fits:
    log.info(
      '%s: dropping head %s; the model head %s keeps its fresh init',
      path,
      {k: loaded[k].shape for k in sorted(file_head)},
      {k: expected[k] for k in sorted(model_head)},
    )
    for k in file_head:
      del loaded[k]
  if not any(k.startswith('pre_logits/') for k in expected):
    for k in [k for k in loaded if k.startswith('pre_logits/')]:
      log.info('%s: dropping %s (model has no representation_size)', path, k)
      del loaded[k]
  if POSEMB_KEY in loaded and POSEMB_KEY in expected:
    old, new = loaded[POSEMB_KEY].shape, expected[POSEMB_KEY]
    if old != new and len(old) == len(new) == 3 and old[::2] == new[::2]:
      try:
        loaded[POSEMB_KEY] = resize_posemb(loaded[POSEMB_KEY], new[1])
      except ValueError as e:
        raise ValueError(f'checkpoint {path}: {POSEMB_KEY}: {e}') from None
      log.info('%s: resized %s from %s to %s', path, POSEMB_KEY, old, new)

  problems = []
  for k in sorted(expected):
    if k not in loaded and k not in model_head:
      problems.append(f'missing {k} {expected[k]}')
    elif k in loaded and loaded[k].shape != expected[k]:
      problems.append(f'wrong shape {k}: file {loaded[k].shape}, model {expected[k]}')
  problems += [f'unexpected {k} {loaded[k].shape}' for k in sorted(set(loaded) - set(expected))]
  problems += [
    f'non-float dtype {k} {v.dtype}'
    for k, v in sorted(loaded.items())
    if v.dtype.kind != 'f' and k in expected
  ]
  if problems:
    raise ValueError(
      f'checkpoint {path} does not fit the model ({len(problems)} '
      'problems):\n  ' + '\n  '.join(problems)
    )

  out = {k: np.asarray(v, dtype=np.float32) for k, v in loaded.items()}
  if model_head - set(out):
    out.update(
      {k: np.asarray(v, dtype=np.float32) for k, v in _fresh_head(model, rng, init_params).items()}
    )
  return unflat(out)
