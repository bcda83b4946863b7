"""Apply: base + a delta at its indices, the trained leaves replaced: a dense model."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from gps_jax import checkpoint
from gps_jax import factors as factors_lib
from gps_jax import tree as tree_lib
from gps_jax.delta.store import Delta, _require_manifest


def _warn(message: str) -> None:
  warnings.warn(message, stacklevel=3)


def check_base(
  manifests: Sequence[Mapping], base_path: str, *, force: bool = False, warn: Callable = _warn
) -> str:
  """SHA-256 of `base_path`; a ValueError (a warning with `force`) unless it is every
  manifest's base hash."""
  actual = checkpoint.file_sha256(base_path)
  expected = manifests[0]['base']['sha256']
  if expected is None:
    message = (
      f'the delta was trained from a random init (its manifest has no base sha256): '
      f'{base_path} (sha256 {actual}) is not its base'
    )
  elif actual != expected:
    message = (
      f'base {base_path} has sha256 {actual}, but the delta was trained on '
      f'{manifests[0]["base"]["path"]} with sha256 {expected}'
    )
  else:
    return actual
  if not force:
    raise ValueError(message + '; pass --force (force=True) to apply it anyway')
  warn(message + '; applying anyway (--force)')
  return actual


def _num_classes(train: Mapping[str, np.ndarray], manifest: Mapping) -> int:
  for p, v in train.items():
    if tree_lib.is_head(p) and p.endswith('kernel'):
      return int(v.shape[-1])
  for p, v in train.items():
    if tree_lib.is_head(p) and p.endswith('bias'):
      return int(v.shape[-1])
  return int(manifest['model'].get('num_classes') or 0)


def load_base(base_path: str, model_config: Mapping, num_classes: int) -> dict[str, np.ndarray]:
  """Flat float32 params of `base_path` for `model_config` with `num_classes` classes."""
  from gps_jax import weights

  config = {**model_config, 'num_classes': int(num_classes)}
  params = weights.load_checkpoint(base_path, config)
  return {p: np.asarray(v, np.float32) for p, v in tree_lib.flat(params).items()}


def _check_leaves(d: Delta, base: Mapping[str, np.ndarray], heads: bool = True) -> None:
  problems = []
  for p in d.delta:
    shape = tuple(d.manifest['shapes'][p])
    if p not in base:
      problems.append(f'delta leaf {p} is not in the base')
    elif base[p].shape != shape:
      problems.append(f'delta leaf {p}: base {base[p].shape}, manifest {shape}')
  for p, v in d.train.items():
    if not heads and tree_lib.is_head(p):
      continue
    if p not in base:
      problems.append(f'trained leaf {p} is not in the base')
    elif base[p].shape != v.shape:
      problems.append(f'trained leaf {p}: base {base[p].shape}, delta {v.shape}')
  if problems:
    raise ValueError(f'{d.source} does not fit the base:\n  ' + '\n  '.join(problems))


def _scatter(base: np.ndarray, idx: np.ndarray, values: np.ndarray, fan_in_ndim: int) -> np.ndarray:
  """`gps_jax.sparse.scatter_add` on the host: a new array, base + values at (idx[n, k], n)
  of the (fan_in, neurons) view, in the wider dtype. NumPy, not a JAX op per leaf: applying
  a delta is host work (tens of milliseconds of dispatch for a small model otherwise)."""
  base = np.asarray(base)
  out = base.astype(np.promote_types(base.dtype, np.asarray(values).dtype), copy=True)
  rows = out.reshape(int(np.prod(base.shape[:fan_in_ndim], dtype=np.int64)), -1)
  np.add.at(rows, (np.asarray(idx), np.arange(rows.shape[1])[:, None]), np.asarray(values, out.dtype))
  return out


def apply_delta(
  d: Delta, base_path: str, *, force: bool = False, warn: Callable = _warn
) -> dict[str, np.ndarray]:
  """The fine-tuned flat params: base + delta at its indices (or the merged LoRA / SSF
  factors), trained leaves replaced."""
  m = _require_manifest(d)
  check_base([m], base_path, force=force, warn=warn)
  base = load_base(base_path, m['model'], _num_classes(d.train, m))
  _check_leaves(d, base)
  return apply_to(d, base)


def apply_to(d: Delta, base: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """`apply_delta` on a base already in memory (flat float32 params, as `load_base` gives
  them; which file they came from is the caller's to check): a new dict, `base` unchanged.
  The delta's head replaces the base's whatever its class count, so one loaded base serves
  the deltas of tasks with any number of classes."""
  m = _require_manifest(d)
  _check_leaves(d, base, heads=False)
  params = dict(base)
  if d.factors:  # LoRA / SSF: merged into the base as in the trainer's forward pass
    spec = m[checkpoint.FACTORS]
    factors_lib.check(spec, {p: v.shape for p, v in params.items()}, d.factors, d.source)
    merged = factors_lib.merge(spec, {p: jnp.asarray(v) for p, v in params.items()}, d.factors)
    params = {p: np.asarray(v) for p, v in merged.items()}
  for p, values in d.delta.items():
    params[p] = _scatter(params[p], d.indices[p], values, int(m['fan_in_ndim'][p]))
  for p, v in d.train.items():
    params[p] = np.asarray(v, params[p].dtype if p in params else np.float32)
  return params


def write_npz(path: str, params: Mapping[str, np.ndarray]) -> None:
  """A dense gps_jax-layout .npz of flat params (atomic)."""
  from gps_jax.vit_npz import save_vit_npz

  save_vit_npz(path, tree_lib.unflat(dict(params)))
