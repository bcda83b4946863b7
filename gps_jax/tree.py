"""Flat parameter trees: '/'-joined leaf paths, and which leaves form the task head.

gps_jax keeps parameters, roles, scores, masks and deltas as flat
``{'a/b/c': leaf}`` dicts inside jitted code and on disk, and as nested dicts
where Flax wants them.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import flax.traverse_util as traverse_util

# The task head of every backbone family lives under 'head/'.
HEAD_REGEX = r'^head/'
_HEAD = re.compile(HEAD_REGEX)


def flat(tree: Mapping) -> dict[str, Any]:
  """Nested dict → {'a/b/c': leaf}."""
  return {'/'.join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def unflat(flat_tree: Mapping[str, Any]) -> dict:
  """{'a/b/c': leaf} → nested dict."""
  return traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in flat_tree.items()})


def path_str(key_path: Sequence[Any]) -> str:
  """'/'-joined leaf path from a flax tuple key or a jax key path."""
  parts = []
  for k in key_path:
    if isinstance(k, str):
      parts.append(k)
    elif hasattr(k, 'key'):
      parts.append(str(k.key))
    elif hasattr(k, 'idx'):
      parts.append(str(k.idx))
    elif hasattr(k, 'name'):
      parts.append(str(k.name))
    else:
      parts.append(str(k))
  return '/'.join(parts)


def is_head(path: str) -> bool:
  """Whether the leaf at `path` belongs to the task head."""
  return bool(_HEAD.search(path))
