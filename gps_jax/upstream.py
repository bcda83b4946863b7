"""Upstream pretraining for the offline demo, cached as a vit_jax `.npz`.

`config.upstream` is a `config_defaults.upstream_config()`: a whole experiment
config (usually `method='full'` from a random init on a large source dataset)
with the `name` and `cache_dir` of its cache file. Its backbone — every
parameter but the head — is saved in the vit_jax layout, so that downstream
runs load it through the same loader as a real ViT-B/16 checkpoint. The file
name carries a hash of ``REVISION`` and of what the upstream config sets away from
`config_defaults.upstream_config()`, so a changed recipe never reuses a stale file,
and a key added to the defaults later (at a value that trains the same) does not
invalidate every cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import ml_collections
from flax import traverse_util

from gps_jax import experiment
from gps_jax import sharding as shard_lib
from gps_jax import tree as tree_lib
from gps_jax.config_defaults import upstream_config
from gps_jax.metrics import say
from gps_jax.vit_npz import save_vit_npz

# Bump when a code change alters what an unchanged upstream config trains to (data
# order, augmentation, initialisation), so that old cache files are not reused.
# 2: the tf.data pipeline over splits (per-epoch Dataset.shuffle), jitted init.
# 3: the key hashes the settings that differ from the defaults (same training).
REVISION = 3


def _settings(c: ml_collections.ConfigDict) -> dict[str, Any]:
  """{dotted key: JSON value} of a config."""
  return traverse_util.flatten_dict(json.loads(c.to_json(sort_keys=True)), sep='.')


def recipe(upstream: ml_collections.ConfigDict) -> dict[str, Any]:
  """The settings of `upstream` that differ from `upstream_config()` (cache_dir aside)."""
  defaults = _settings(upstream_config())
  return {
    k: v
    for k, v in _settings(upstream).items()
    if k != 'cache_dir' and (k not in defaults or defaults[k] != v)
  }


def cache_path(upstream: ml_collections.ConfigDict) -> str:
  """Where the backbone of this upstream config is (or will be) cached."""
  text = f'{REVISION}:{json.dumps(recipe(upstream), sort_keys=True)}'
  key = hashlib.sha256(text.encode()).hexdigest()[:12]
  cache_dir = (
    upstream.cache_dir
    or os.environ.get('GPS_JAX_CACHE')
    or os.path.join(os.path.expanduser('~'), '.cache', 'gps_jax')
  )
  return os.path.join(cache_dir, f'{upstream.name}-{key}.npz')


def ensure_upstream(
  upstream: ml_collections.ConfigDict, workdir: str
) -> str:
  """Returns the cached backbone `.npz` of `upstream`, training it first if absent."""
  path = cache_path(upstream)
  if os.path.exists(path):
    say(f'[upstream] using cached backbone {path}')
    return path
  say(f'[upstream] pretraining the backbone (cached afterwards at {path})')
  res, params = experiment.run(upstream, os.path.join(workdir, 'upstream'))
  backbone = shard_lib.to_host({p: v for p, v in params.items() if not tree_lib.is_head(p)})
  if jax.process_index() == 0:  # one writer; the others wait for the file
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_vit_npz(path, tree_lib.unflat(backbone))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(f'upstream saved {path}')
  say(f'[upstream] test accuracy {res["test_accuracy"]:.4f}; saved {path}')
  return path
