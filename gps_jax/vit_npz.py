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

The strict fit is :func:`gps_jax.models.fitting.fit_params`, the one every family and file
kind shares; :data:`gps_jax.models.vit_timm.VIT_NPZ` holds the ViT adaptations.

Files are opened with ``allow_pickle=False``: an archive holding pickled (object) arrays, a
file that is not a zip archive, or a truncated one raises a ValueError naming the file, and
no code inside it is ever run.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

import jax
import numpy as np

from gps_jax.files import write_atomic
from gps_jax.models.vit_timm import POSEMB_KEY, VIT_NPZ, resize_posemb
from gps_jax.tree import flat

__all__ = ['POSEMB_KEY', 'load_vit_npz', 'read_npz', 'resize_posemb', 'save_vit_npz']


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


def read_npz(path: str) -> dict[str, np.ndarray]:
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
  return VIT_NPZ.params(read_npz(path), model, f'checkpoint {path}', init=init_params, rng=rng)
