"""Export: one self-describing .safetensors or .npz file of a delta, and reading it back."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from gps_jax import checkpoint
from gps_jax import factors as factors_lib
from gps_jax.files import write_atomic_path

if TYPE_CHECKING:
  from gps_jax.delta.store import Delta

EXPORT_SUFFIXES = ('.safetensors', '.npz')
MANIFEST_MEMBER = '__manifest__'
SAFETENSORS_KEY = 'gps_jax_manifest'


def is_export(path: str) -> bool:
  """Whether `path` is an exported delta file (by its suffix) rather than a checkpoint."""
  return os.path.isfile(path) and path.endswith(EXPORT_SUFFIXES)


def export_arrays(d: Delta) -> dict[str, np.ndarray]:
  """The flat arrays of an export: <leaf>/indices, <leaf>/values and trained <leaf>."""
  arrays = {}
  for p in sorted(d.delta):
    arrays[f'{p}/indices'] = np.ascontiguousarray(d.indices[p], np.int32)
    arrays[f'{p}/values'] = np.ascontiguousarray(d.delta[p])
  for p in sorted(d.train):
    if p in arrays or p == MANIFEST_MEMBER:
      raise ValueError(f'{d.source}: trained leaf {p!r} collides with another exported name')
    arrays[p] = np.ascontiguousarray(d.train[p])
  for name in sorted(d.factors):  # '<leaf or module>/lora_a' ...: no parameter is named so
    arrays[name] = np.ascontiguousarray(d.factors[name])
  return arrays


def export_delta(d: Delta, out: str) -> None:
  """Writes `d` as one self-describing .safetensors or .npz file (see the module doc)."""
  manifest = json.dumps(d.require_manifest(), sort_keys=True)
  arrays = export_arrays(d)
  if out.endswith('.safetensors'):
    from safetensors.numpy import save_file

    write_atomic_path(out, lambda tmp: save_file(arrays, tmp, metadata={SAFETENSORS_KEY: manifest}))
  elif out.endswith('.npz'):
    member = np.frombuffer(manifest.encode('utf-8'), np.uint8)

    def write(tmp):
      with open(tmp, 'wb') as f:
        np.savez(f, **arrays, **{MANIFEST_MEMBER: member})

    write_atomic_path(out, write)
  else:
    raise ValueError(f'{out}: export to a .safetensors or .npz file')


def _read_file(path: str) -> tuple[dict[str, np.ndarray], str | None]:
  """(arrays, manifest text or None) of an export file."""
  if path.endswith('.safetensors'):
    from safetensors import safe_open

    with safe_open(path, framework='numpy') as f:
      text = (f.metadata() or {}).get(SAFETENSORS_KEY)
      arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (a safe_open handle, not a dict)
    return arrays, text
  with np.load(path, allow_pickle=False) as npz:
    arrays = {k: npz[k] for k in npz.files}
  member = arrays.pop(MANIFEST_MEMBER, None)
  return arrays, None if member is None else member.tobytes().decode('utf-8')


def read_export(path: str) -> tuple[dict[str, np.ndarray], dict]:
  """(flat arrays, manifest) of an exported delta; nothing is unpickled."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no exported delta {path}')
  if not path.endswith(EXPORT_SUFFIXES):
    raise ValueError(f'{path}: an exported delta is a .safetensors or .npz file')
  try:
    arrays, text = _read_file(path)
  except Exception as e:  # noqa: BLE001  (a truncated or garbage file: zipfile / safetensors)
    message = ' '.join(str(e).split())[:300]
    raise ValueError(
      f'{path}: not a readable exported delta: {type(e).__name__}: {message}'
    ) from None
  if text is None:
    if path.endswith('.safetensors'):
      raise ValueError(f'{path}: no {SAFETENSORS_KEY!r} metadata: not a gps_jax delta export')
    raise ValueError(f'{path}: no {MANIFEST_MEMBER!r} member: not a gps_jax delta export')
  return arrays, checkpoint.parse_manifest(text, f'{path} (manifest)')


def split_export(arrays: Mapping[str, np.ndarray], manifest: Mapping, path: str = '') -> dict:
  """{'indices', 'delta', 'train'} of an export's arrays (its manifest names the delta leaves)."""
  parts = {'indices': {}, 'delta': {}, 'train': {}}
  rest = dict(arrays)
  for p in manifest['fan_in_ndim']:
    try:
      parts['indices'][p] = rest.pop(f'{p}/indices')
      parts['delta'][p] = rest.pop(f'{p}/values')
    except KeyError as e:
      raise ValueError(f'{path}: the export lacks {e.args[0]}') from None
  if checkpoint.FACTORS in manifest:
    parts[checkpoint.FACTORS] = {
      k: rest.pop(k) for k in list(rest) if k.rsplit('/', 1)[-1] in factors_lib.SUFFIXES
    }
  parts['train'] = rest
  return parts
