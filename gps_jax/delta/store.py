"""Loading a delta: the `Delta` of a checkpoint directory (and its manifest) or of an export.

Every failure to read a delta is a FileNotFoundError or a one-line UserError (a ValueError) that names the
path and what is wrong (never an orbax traceback): `gps_jax.delta.cli` prints it as ``error:``.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from gps_jax import checkpoint
from gps_jax.delta import restore as restore_lib
from gps_jax.errors import UserError
from gps_jax.delta.export import is_export, read_export, split_export


@dataclasses.dataclass
class Delta:
  """A delta: flat {leaf: array} parts and the manifest (None for an old checkpoint)."""

  source: str
  indices: dict[str, np.ndarray]
  delta: dict[str, np.ndarray]
  train: dict[str, np.ndarray]
  manifest: dict | None
  # LoRA / SSF: the arrays that merge into the base ({name: array}; gps_jax.factors),
  # placed by the manifest's 'factors' spec. Empty for GPS and the masked baselines.
  factors: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  @property
  def base_sha256(self) -> str | None:
    return self.manifest['base']['sha256'] if self.manifest else None

  def require_manifest(self) -> dict:
    """The manifest; a ValueError for a delta without one (apply and compose need it)."""
    if self.manifest is None:
      raise UserError(f'{self.source} has no manifest; apply and compose need one')
    return self.manifest


def _one_line(e: BaseException) -> str:
  text = ' '.join(str(e).split()).split(' [tensorstore_spec=')[0]
  if len(text) > 300:
    text = text[:297] + '...'
  return f'{type(e).__name__}: {text}' if text else type(e).__name__


def _load_checkpoint(path: str) -> dict:
  """`checkpoint.load_delta`, its orbax errors as a one-line ValueError naming `path`."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f'no delta checkpoint at {os.path.abspath(path)}')
  try:
    return restore_lib.restore(path)
  except FileNotFoundError as e:  # a file of the checkpoint is missing
    raise UserError(
      f'{path} is not a readable delta checkpoint (a file is missing): {_one_line(e)}'
    ) from None
  except ValueError as e:
    if str(e).startswith(os.path.abspath(path)) and '\n' not in str(e):
      raise  # the message of gps_jax.checkpoint, which names the path
    raise UserError(f'{path} is not a readable delta checkpoint: {_one_line(e)}') from None
  except Exception as e:  # noqa: BLE001  (orbax / tensorstore / msgpack errors of garbage)
    raise UserError(f'{path} is not a readable delta checkpoint: {_one_line(e)}') from None


def _parts(parts, source: str) -> dict[str, dict[str, np.ndarray]]:
  out = {}
  for part in ('indices', 'delta', 'train', checkpoint.FACTORS):
    if part == checkpoint.FACTORS and part not in parts:
      continue
    try:
      out[part] = {str(p): np.asarray(v) for p, v in dict(parts[part]).items()}
    except (KeyError, TypeError, ValueError) as e:
      raise UserError(
        f'{source}: its {part!r} part is not a set of arrays: {_one_line(e)}'
      ) from None
  return out


def load(path: str, *, require_manifest: bool = True) -> Delta:
  """A delta from a checkpoint directory (and its manifest) or from an exported file."""
  path = os.fspath(path)
  if is_export(path):
    arrays, manifest = read_export(path)
    parts = split_export(arrays, manifest, path)
  else:
    parts = _load_checkpoint(path)
    try:
      manifest = checkpoint.load_manifest(path)
    except FileNotFoundError:
      if require_manifest:
        raise
      manifest = None
    except (UnicodeDecodeError, OSError) as e:
      raise UserError(
        f'{checkpoint.manifest_path(path)}: not a readable manifest: {_one_line(e)}'
      ) from None
  parts = _parts(parts, path)
  d = Delta(source=path, manifest=manifest, **parts)
  validate(d)
  return d


def validate(d: Delta) -> None:
  """Checks that indices, values and manifest agree (leaves, shapes, index range)."""
  if set(d.indices) != set(d.delta):
    raise UserError(
      f'{d.source}: indices and delta values name different leaves: '
      f'{sorted(set(d.indices) ^ set(d.delta))}'
    )
  if d.manifest is not None and bool(d.factors) != (checkpoint.FACTORS in d.manifest):
    raise UserError(
      f'{d.source}: the manifest\'s factors spec and the factor arrays go together '
      f'(spec: {checkpoint.FACTORS in d.manifest}, arrays: {len(d.factors)})'
    )
  problems = []
  for p, idx in d.indices.items():
    if idx.shape != d.delta[p].shape or idx.ndim != 2:
      problems.append(
        f'{p}: indices {idx.shape} and values {d.delta[p].shape} differ or are not 2-D'
      )
    elif idx.dtype.kind not in 'iu':
      problems.append(f'{p}: indices of dtype {idx.dtype}')
  if d.manifest is not None:
    layout = d.manifest['fan_in_ndim']
    if set(layout) != set(d.delta):
      raise UserError(
        f"{d.source}: the manifest's fan_in_ndim names {sorted(layout)}, "
        f'the delta has leaves {sorted(d.delta)}'
      )
    for p, idx in d.indices.items():
      shape = tuple(d.manifest['shapes'][p])
      n = int(layout[p])
      fan_in, neurons = int(np.prod(shape[:n])), int(np.prod(shape[n:]))
      if idx.ndim == 2 and idx.shape[0] != neurons:
        problems.append(f'{p}: {idx.shape[0]} neurons, the kernel {shape} has {neurons}')
      elif idx.size and (idx.min() < 0 or idx.max() >= fan_in):
        problems.append(f'{p}: indices outside [0, {fan_in})')
  if problems:
    raise UserError(f'{d.source} is not a consistent delta:\n  ' + '\n  '.join(problems))


def _require_manifest(d: Delta) -> dict:
  return d.require_manifest()
