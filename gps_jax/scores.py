"""Score once, select many: a run's selection scores on disk, and their reuse.

A run whose score source passes over the training data (`scoring.DATA_SCORERS`:
supcon, head_ce) writes, after the pass, in its workdir:

* ``scores.npz``: the signed, accumulated scores of every `select` leaf of the
  run's role rules (before exclusion, so that another run may exclude others),
  float32, one array per '/'-joined leaf path (np.savez keys);
* ``scores.json``: what they are::

    {
      "format": "gps_jax.scores/1",
      "source": "supcon",              # the score source (config.gps.score / the method's)
      "method": "gps",
      "base": {"path": ... | null, "sha256": ... | null},
      "seed": 42,                      # config.seed (the init of a random-init base)
      "data": {"name": ..., "train_split": ...},
      "shapes": {leaf: [int, ...]},
      "selection": {"batches": ..., "images": ..., "loss": ...},
      "created": "..."
    }

Both are written atomically (scores.json last, so a scores.json always describes
the scores.npz beside it) and by process 0 only. ``config.gps.scores_from=<workdir>``
loads them instead of a pass (`load`): the score source, the base (its sha256; for
a random-init base, the seed) and every `select` leaf (present, same shape, finite)
must match the run, else one UserError line names the file and the problem. The
level, K and exclusion of the loading run then apply to the loaded scores.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any, Mapping, Optional

import numpy as np

from gps_jax import files
from gps_jax.checkpoint import json_safe
from gps_jax import metrics as metrics_lib
from gps_jax import roles as roles_lib
from gps_jax import sharding as shard_lib
from gps_jax.errors import UserError

FORMAT = 'gps_jax.scores/1'
SCORES_FILE = 'scores.npz'
META_FILE = 'scores.json'


def paths(location: str) -> tuple[str, str]:
  """(scores.npz, scores.json) of a workdir, or of a scores .npz file and its .json."""
  location = os.path.abspath(os.path.expanduser(os.fspath(location)))
  if location.endswith('.npz') and not os.path.isdir(location):
    return location, location[: -len('.npz')] + '.json'
  return os.path.join(location, SCORES_FILE), os.path.join(location, META_FILE)


def make_meta(
  *,
  source: str,
  method: str,
  base_path: Optional[str],
  base_sha256: Optional[str],
  seed: int,
  shapes: Mapping[str, Any],
  selection: Optional[Mapping] = None,
  data: Optional[Mapping] = None,
) -> dict:
  """The scores.json description (see the module doc)."""
  return json_safe(
    {
      'format': FORMAT,
      'source': source,
      'method': method,
      'base': {
        'path': os.path.abspath(base_path) if base_path else None,
        'sha256': base_sha256 or None,
      },
      'seed': int(seed),
      'data': dict(data or {}),
      'shapes': {p: [int(d) for d in s] for p, s in shapes.items()},
      'selection': dict(selection or {}),
      'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
    }
  )


def save(workdir: str, scores: Mapping[str, Any], meta: Mapping) -> Optional[str]:
  """Writes <workdir>/scores.npz (float32) and scores.json; returns the .npz path.

  Every process must call it (sharded scores are gathered); process 0 writes.
  """
  host = shard_lib.to_host(dict(scores))
  npz, meta_file = paths(workdir)
  if not metrics_lib.is_writer():
    return npz
  os.makedirs(os.path.dirname(npz), exist_ok=True)
  arrays = {p: np.asarray(v, np.float32) for p, v in host.items()}
  files.write_atomic(npz, lambda f: np.savez(f, **arrays))
  files.write_json(meta_file, dict(meta))
  return npz


def _one_line(e: BaseException) -> str:
  text = ' '.join(str(e).split())
  return f'{type(e).__name__}: {text}' if text else type(e).__name__


def read_meta(location: str) -> dict:
  """The scores.json of a workdir (or beside a scores .npz), checked for its format."""
  meta_file = paths(location)[1]
  if not os.path.isfile(meta_file):
    raise UserError(
      f'config.gps.scores_from={location!r}: no {meta_file} (a run writes {SCORES_FILE} '
      f'and {META_FILE} after a selection pass over the data: supcon, head_ce)'
    )
  try:
    with open(meta_file, encoding='utf-8') as f:
      meta = json.load(f)
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise UserError(f'{meta_file}: not a readable scores description ({_one_line(e)})') from None
  if not isinstance(meta, dict) or meta.get('format') != FORMAT:
    got = meta.get('format') if isinstance(meta, dict) else type(meta).__name__
    raise UserError(f'{meta_file}: format {got!r}; this gps_jax reads {FORMAT!r}')
  for key in ('source', 'base'):
    if key not in meta:
      raise UserError(f'{meta_file}: lacks {key!r}')
  if not isinstance(meta['base'], dict):
    raise UserError(f"{meta_file}: 'base' must be {{'path': ..., 'sha256': ...}}")
  return meta


def load(
  location: str,
  *,
  source: str,
  base_sha256: Optional[str],
  roles: Any,
  seed: Optional[int] = None,
) -> tuple[dict[str, np.ndarray], dict]:
  """The saved scores {path: float32 array} of every `select` leaf of `roles`, and
  their description; a UserError naming the file unless they fit this run: same
  score `source`, same base (`base_sha256`; None = a random init, then the same
  `seed`), every `select` leaf present with its shape and finite values."""
  npz = paths(location)[0]
  if not os.path.isfile(npz):
    raise UserError(
      f'config.gps.scores_from={location!r}: no scores file {npz} (a run writes it after '
      'a selection pass over the data: supcon, head_ce)'
    )
  meta = read_meta(location)
  if meta['source'] != source:
    raise UserError(
      f'{npz}: scores of the source {meta["source"]!r}, but this run ranks by {source!r} '
      "(config.gps.score, else the method's); use scores of the same source"
    )
  saved_sha = meta['base'].get('sha256')
  if saved_sha != (base_sha256 or None):
    raise UserError(
      f'{npz}: scores of the base with sha256 {saved_sha} ({meta["base"].get("path")}), '
      f"but this run's base (config.model.checkpoint) has sha256 {base_sha256}"
    )
  if saved_sha is None and seed is not None and meta.get('seed') != seed:
    raise UserError(
      f'{npz}: scores of a random-init base of config.seed={meta.get("seed")}, '
      f'this run initialises with config.seed={seed}'
    )
  select = roles_lib.leaves_with_role(roles, 'select')
  out = {}
  try:
    with np.load(npz, allow_pickle=False) as z:
      missing = [p for p in select if p not in z.files]
      if missing:
        more = f' and {len(missing) - 3} more' if len(missing) > 3 else ''
        raise UserError(
          f'{npz}: no scores for the selected parameters {", ".join(missing[:3])}{more} '
          '(scores of other role rules or another model)'
        )
      for p, r in select.items():
        a = z[p]
        if a.shape != r.shape:
          raise UserError(
            f'{npz}: the scores of {p} have shape {a.shape}, the parameter has {r.shape}'
          )
        if a.dtype.kind != 'f':
          raise UserError(f'{npz}: the scores of {p} have dtype {a.dtype}, not float')
        if not np.all(np.isfinite(a)):
          raise UserError(f'{npz}: the scores of {p} contain NaN or inf')
        out[p] = a.astype(np.float32, copy=False)
  except UserError:
    raise
  except Exception as e:  # a truncated or damaged file: zipfile, NumPy and OS errors
    raise UserError(f'{npz}: not a readable scores file ({_one_line(e)})') from None
  return out, meta
