"""What every timm (PyTorch) state dict has in common: its array layouts.

torch stores a conv weight as OIHW and a Linear weight as (out, in); Flax wants HWIO and
(in, out). LayerNorm's ``weight`` is Flax's ``scale``. A family's timm converter adds only
its module names (:func:`timm_layout`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gps_jax.models.fitting import Layout

# Flax leaf name -> timm leaf name.
TIMM_LEAVES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}


def kernel_from_torch(array: np.ndarray) -> np.ndarray:
  """A torch conv (OIHW) or Linear (out, in) weight as the Flax kernel (HWIO, (in, out))."""
  if array.ndim == 4:
    return np.ascontiguousarray(array.transpose(2, 3, 1, 0))
  return np.ascontiguousarray(array.T)


def timm_shape(path: str, shape: tuple) -> tuple:
  """The torch shape of a Flax leaf: an HWIO kernel is OIHW there, an (in, out) one (out, in)."""
  if not path.endswith('/kernel'):
    return tuple(shape)
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  return tuple(shape[::-1])


def from_timm(path: str, array: np.ndarray) -> np.ndarray:
  """A timm array as the Flax leaf ``path``: kernels transposed, everything else as is."""
  return kernel_from_torch(array) if path.endswith('/kernel') else array


def timm_layout(file_name: Callable[[str], str], *, label: str, **kw) -> Layout:
  """The layout of a timm state dict whose module names ``file_name`` gives (Flax path ->
  timm name); ``kw`` are the other :class:`~gps_jax.models.fitting.Layout` fields."""
  return Layout(file_name=file_name, file_shape=timm_shape, to_flax=from_timm, label=label, **kw)
