"""Orbax checkpoints of a task's result: the sparse delta, never the dense backbone.

The saved tree is {'indices': {...}, 'train': {...}, 'delta': {...}}, each a
nested dict in the parameter layout: int32 (neurons, K) indices and delta
values of every selected leaf, and the trained leaves (head, biases, ...).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from gps_jax import roles as roles_lib

PARTS = ('indices', 'train', 'delta')


def save_delta(path: str, result: Mapping[str, Mapping[str, Any]]) -> None:
  """Writes the sparse result (flat {path: array} per part) to the directory `path`."""
  tree = {part: roles_lib.unflat(jax.device_get(dict(result[part]))) for part in PARTS}
  path = os.path.abspath(path)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, tree, force=True)
    ckptr.wait_until_finished()


def load_delta(path: str) -> dict[str, dict[str, np.ndarray]]:
  """Reads a sparse result back as flat {path: array} per part."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'no delta checkpoint at {path}')
  with ocp.StandardCheckpointer() as ckptr:
    tree = ckptr.restore(path)
  missing = [p for p in PARTS if p not in tree]
  if missing:
    raise ValueError(f'{path} is not a gps_jax delta checkpoint: it lacks {missing}')
  return {part: roles_lib.flat(tree[part]) if tree[part] else {} for part in PARTS}
