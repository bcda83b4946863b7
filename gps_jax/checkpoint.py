"""Orbax checkpoints of a task's result: the sparse delta, never the dense backbone.

The saved tree is {'indices': {...}, 'train': {...}, 'delta': {...}}, each a
nested dict in the parameter layout: int32 (neurons, K) indices and delta
values of every selected leaf, and the trained leaves (head, biases, ...).

Next to the checkpoint directory ``DIR`` lies its manifest ``DIR.manifest.json``
(a sibling, not a member: orbax owns the directory and replaces it whole on
every save). The manifest says what the delta applies to, so that
``gps_jax.delta`` can rebuild, check and compose fine-tuned models from the
delta alone::

  {
    "format": "gps_jax.delta/1",
    "method": "gps",                # the run's method
    "k": 1,                         # entries per neuron (null without selected leaves)
    "model": {...},                 # the model config (config.model + num_classes)
    "base": {"path": "/abs/base.npz" | null, "sha256": "<hex>" | null},
    "fan_in_ndim": {leaf: int},     # leading fan-in axes of every delta leaf
    "shapes": {leaf: [int, ...]},   # the base kernel shape of every delta leaf
    "created": "2025-01-01T12:00:00+00:00",
    "level": "neuron" | "layer" | "net",     # only with selected leaves (config.gps.level)
    "factors": {"rule": "lora" | "ssf", ...}   # only for LoRA / SSF (gps_jax.factors)
  }

``base`` is null/null for a run from a random init: no file reproduces its base.
The manifest is written atomically (a temporary file moved into place) after
the checkpoint is complete; an older manifest is removed before a new save,
so a manifest never describes another checkpoint than the one beside it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from typing import Any, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from gps_jax import roles as roles_lib
from gps_jax.errors import UserError
from gps_jax import tree as tree_lib
from gps_jax.files import write_json
from gps_jax import sharding as shard_lib

PARTS = ('indices', 'train', 'delta')
# The optional part of a LoRA / SSF delta: the arrays that merge into the base
# (gps_jax.factors), with the manifest's 'factors' spec saying where they go.
FACTORS = 'factors'
MANIFEST_FORMAT = 'gps_jax.delta/1'
MANIFEST_SUFFIX = '.manifest.json'
MANIFEST_KEYS = ('format', 'method', 'k', 'model', 'base', 'fan_in_ndim', 'shapes', 'created')


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
  """Hex SHA-256 of a file, read in 1 MiB chunks."""
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(chunk_size), b''):
      h.update(chunk)
  return h.hexdigest()


def manifest_path(path: str | os.PathLike) -> str:
  """The manifest file of the delta checkpoint directory `path`: ``<path>.manifest.json``."""
  path = os.path.abspath(os.fspath(path)).rstrip(os.sep)
  return path + MANIFEST_SUFFIX


def json_safe(obj: Any) -> Any:
  """`obj` as plain JSON data: tuples become lists, NumPy scalars Python numbers, dtypes names."""
  if isinstance(obj, Mapping):
    return {str(k): json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [json_safe(v) for v in obj]
  if obj is None or isinstance(obj, (bool, int, float, str)):
    return obj
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  try:  # np.float32, jnp.bfloat16, np.dtype('float32'), ...
    return np.dtype(obj).name
  except TypeError:
    return str(obj)


def make_manifest(
  *,
  method: str,
  k: Optional[int],
  model: Mapping[str, Any],
  base_path: Optional[str],
  base_sha256: Optional[str],
  select_roles: Mapping[str, roles_lib.LeafRole],
) -> dict:
  """A manifest (see the module doc) from the run's facts and its `select` leaf roles."""
  return {
    'format': MANIFEST_FORMAT,
    'method': method,
    'k': k,
    'model': json_safe(dict(model)),
    'base': {
      'path': os.path.abspath(base_path) if base_path else None,
      'sha256': base_sha256 or None,
    },
    'fan_in_ndim': {p: int(r.fan_in_ndim) for p, r in select_roles.items()},
    'shapes': {p: [int(d) for d in r.shape] for p, r in select_roles.items()},
    'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
  }


def _check_manifest(manifest: Mapping, where: str) -> None:
  if not isinstance(manifest, Mapping):
    raise UserError(f'{where}: the manifest must be a JSON object, got {type(manifest).__name__}')
  if manifest.get('format') != MANIFEST_FORMAT:
    raise UserError(
      f'{where}: manifest format {manifest.get("format")!r}; this gps_jax reads {MANIFEST_FORMAT!r}'
    )
  missing = [key for key in MANIFEST_KEYS if key not in manifest]
  if missing:
    raise UserError(f'{where}: the manifest lacks {missing}')
  base = manifest['base']
  if not isinstance(base, Mapping) or set(base) != {'path', 'sha256'}:
    raise UserError(
      f"{where}: manifest 'base' must be {{'path': ..., 'sha256': ...}}, got {base!r}"
    )
  for key in ('fan_in_ndim', 'shapes', 'model'):
    if not isinstance(manifest[key], Mapping):
      raise UserError(f'{where}: manifest {key!r} must be a JSON object')
  if FACTORS in manifest and not isinstance(manifest[FACTORS], Mapping):
    raise UserError(f'{where}: manifest {FACTORS!r} must be a JSON object')
  if set(manifest['fan_in_ndim']) != set(manifest['shapes']):
    raise UserError(f"{where}: manifest 'fan_in_ndim' and 'shapes' name different leaves")


def save_delta(
  path: str, result: Mapping[str, Mapping[str, Any]], manifest: Optional[Mapping] = None
) -> None:
  """Writes the sparse result (flat {path: array} per part) to the directory `path`.

  With `manifest` (see the module doc; `make_manifest` builds one), also writes
  ``<path>.manifest.json``; its `fan_in_ndim` must name exactly the delta leaves.
  """
  path = os.path.abspath(path)
  if manifest is not None:
    manifest = json_safe(manifest)
    _check_manifest(manifest, 'save_delta')
    if set(manifest['fan_in_ndim']) != set(result['delta']):
      raise ValueError(
        f"save_delta: manifest 'fan_in_ndim' names {sorted(manifest['fan_in_ndim'])}, "
        f'the delta has leaves {sorted(result["delta"])}'
      )
  parts = PARTS + ((FACTORS,) if result.get(FACTORS) else ())
  if manifest is not None and bool(result.get(FACTORS)) != (FACTORS in manifest):
    raise ValueError('save_delta: factors and the manifest\'s factors spec go together')
  host = shard_lib.to_host({part: dict(result[part]) for part in parts})
  tree = {part: tree_lib.unflat(host[part]) for part in parts}
  primary = jax.process_index() == 0  # orbax saves collectively; one process writes the manifest
  if primary:  # never leave a manifest of the old checkpoint
    try:
      os.remove(manifest_path(path))
    except FileNotFoundError:
      pass
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, tree, force=True)
    ckptr.wait_until_finished()
  if manifest is not None and primary:
    write_json(manifest_path(path), manifest, sort_keys=True)


def load_delta(path: str) -> dict[str, dict[str, np.ndarray]]:
  """Reads a sparse result back as flat {path: array} per part."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'no delta checkpoint at {path}')
  with ocp.StandardCheckpointer() as ckptr:
    tree = ckptr.restore(path)
  missing = [p for p in PARTS if p not in tree]
  if missing:
    raise UserError(f'{path} is not a gps_jax delta checkpoint: it lacks {missing}')
  return {part: tree_lib.flat(tree[part]) if tree[part] else {} for part in PARTS + (FACTORS,) if part in tree}


def parse_manifest(text: str, where: str) -> dict:
  """A manifest from its JSON text; `where` names its source in errors."""
  try:
    manifest = json.loads(text)
  except ValueError as e:
    raise UserError(f'{where}: not a valid JSON manifest: {e}') from None
  _check_manifest(manifest, where)
  return manifest


def load_manifest(path: str) -> dict:
  """The manifest of the delta checkpoint directory `path` (or of the manifest file itself)."""
  path = os.fspath(path)
  file = path if path.endswith(MANIFEST_SUFFIX) else manifest_path(path)
  if not os.path.isfile(file):
    raise FileNotFoundError(
      f'no delta manifest {file}: the checkpoint {path} was written without one '
      '(by an older gps_jax, or its run was interrupted)'
    )
  with open(file, encoding='utf-8') as f:
    text = f.read()
  return parse_manifest(text, file)


# ----------------------------------------------------------------------------- resumable runs


# Config keys a resumed run may change: they do not alter what is trained.
RESUME_FREE = ('train.log_every', 'train.checkpoint_every_steps', 'train.keep_checkpoints')


def _flat_config(d: Mapping, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(_flat_config(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


class TrainCheckpoints:
  """Periodic checkpoints of a run in ``directory`` (an orbax CheckpointManager).

  Each step directory holds the trainable state only — the step, the delta
  values and trained leaves (head, biases), the optimizer state and the EMA —
  plus the selection's indices and a JSON ``meta`` item (config, base file
  SHA-256, mask statistics). Nothing dense from the backbone. The data
  position is the step: the input pipeline restarts at any step.
  ``keep`` newest steps are kept; a step that fails to restore is reported with
  the steps that remain, none of which is deleted.
  """

  def __init__(self, directory: str, keep: int = 2):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def check_resumable(self, step: int, config) -> None:
    """Refuses to resume the checkpoint of `step` under another config than its own,
    naming the changed keys (those of RESUME_FREE may change)."""
    saved = _flat_config(self.restore_meta(step).get('config', {}))
    now = _flat_config(json_safe(config.to_dict()))
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    changed = [k for k in changed if k not in RESUME_FREE]
    if changed:
      raise UserError(
        f'{self.directory} holds checkpoints of a run with another config (changed: '
        f'{", ".join(changed)}); use a new --workdir, or delete that directory to start over'
      )

  def save(self, step: int, state: Any, indices: Mapping, meta: Mapping) -> None:
    items = {
      'state': ocp.args.StandardSave(state),
      'meta': ocp.args.JsonSave(json_safe(dict(meta))),
    }
    if indices:  # methods without selection (full, linear, bitfit) have none
      host = shard_lib.to_host(dict(indices))
      items['indices'] = ocp.args.StandardSave(tree_lib.unflat(host))
    self.manager.save(step, args=ocp.args.Composite(**items), force=True)
    self.manager.wait_until_finished()

  def _restore(self, step: int, **args):
    try:
      return self.manager.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # a damaged or partial step directory
      others = [s for s in self.manager.all_steps() if s != step]
      raise UserError(
        f'cannot restore the checkpoint of step {step} in {self.directory} '
        f'({type(e).__name__}: {e}); the other steps there are {others}: delete '
        f'{os.path.join(self.directory, str(step))} to resume from the latest of them'
      ) from e

  def restore_indices(self, step: int) -> dict:
    if not os.path.isdir(os.path.join(self.directory, str(step), 'indices')):
      return {}
    got = self._restore(step, indices=ocp.args.StandardRestore(None))
    return {p: np.asarray(v) for p, v in tree_lib.flat(got['indices']).items()}

  def restore_state(self, step: int, target: Any) -> Any:
    return self._restore(step, state=ocp.args.StandardRestore(target))['state']

  def restore_meta(self, step: int) -> dict:
    return self._restore(step, meta=ocp.args.JsonRestore())['meta']

  def close(self) -> None:
    self.manager.close()
