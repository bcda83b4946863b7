"""How many entries a GPS mask trains: per leaf, per block and overall.

Before selection everything follows from the roles and K (each neuron of a
`select` leaf trains exactly K entries), so it is computed on abstract shapes,
without weights. After selection, the run's indices give the true count of
every `select` leaf whatever the level (`gps_jax.selection.select`): a layer- or
net-level leaf is one neuron whose fan-in is the whole tensor, and trains as many
entries as it has indices.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional

import numpy as np

from gps_jax import roles as roles_lib
from gps_jax import tree as tree_lib
from gps_jax.tree import HEAD_REGEX

_BLOCK = re.compile(r'(?:^|/)((?:encoderblock|blocks?|layers|stages?)_?\d+)(?:/|$)')


def block_of(path: str) -> str:
  """Block name of a leaf path: 'encoderblock_3', 'embedding', 'head', ...; a decoder
  (SAM's mask decoder) is one block."""
  if re.match(r'[^/]*decoder/', path):
    return path.split('/', 1)[0]
  m = _BLOCK.search(path)
  if m:
    return m.group(1)
  parts = path.split('/')
  if parts[0] == 'Transformer' and len(parts) > 2:
    return parts[1]
  return parts[0]


def trainable_entries(role: roles_lib.LeafRole, k: int, indices: Any = None) -> int:
  """Entries `role` trains: K per neuron of a `select` leaf (or the size of its
  `indices` when given), all of a `train` leaf, none of a `freeze` leaf."""
  if role.role == 'select':
    return role.num_neurons * k if indices is None else int(np.size(indices))
  return role.size if role.role == 'train' else 0


def mask_statistics(
  roles: Any,
  k: int,
  head_regex: str = HEAD_REGEX,
  *,
  indices: Optional[Mapping[str, Any]] = None,
) -> dict:
  """Trainable entries per leaf and block and the overall shares (in %).

  Without `indices`, every neuron of a `select` leaf counts K entries (the
  neuron level's budget). With the run's `indices` ({path: array} of every
  `select` leaf, as `gps_jax.selection.select` returns them with its roles), a
  `select` leaf counts its indices: the true trainable entries at any level.
  """
  head = re.compile(head_regex)
  if indices is not None:
    missing = sorted(p for p in roles_lib.leaves_with_role(roles, 'select') if p not in indices)
    if missing:
      raise ValueError(f'mask_statistics: no indices for the selected parameters {missing}')
  leaves, blocks = {}, {}
  totals = {
    'params': 0,
    'trainable': 0,
    'head_params': 0,
    'head_trainable': 0,
    'neurons': 0,
    'selected': 0,
  }
  for path, r in tree_lib.flat(roles).items():
    t = trainable_entries(r, k, None if indices is None else indices.get(path))
    leaves[path] = {'role': r.role, 'shape': list(r.shape), 'params': r.size, 'trainable': t}
    if r.role == 'select':
      leaves[path].update(neurons=r.num_neurons, fan_in=r.fan_in)
      totals['neurons'] += r.num_neurons
      totals['selected'] += t
    b = blocks.setdefault(block_of(path), {'params': 0, 'trainable': 0})
    b['params'] += r.size
    b['trainable'] += t
    totals['params'] += r.size
    totals['trainable'] += t
    if head.search(path):
      totals['head_params'] += r.size
      totals['head_trainable'] += t
  for b in blocks.values():
    b['share_pct'] = 100.0 * b['trainable'] / max(b['params'], 1)
  backbone = totals['params'] - totals['head_params']
  backbone_trainable = totals['trainable'] - totals['head_trainable']
  return {
    'k': k,
    'total_params': totals['params'],
    'trainable': totals['trainable'],
    'share_pct': 100.0 * totals['trainable'] / max(totals['params'], 1),
    'backbone_params': backbone,
    'backbone_trainable': backbone_trainable,
    'share_without_head_pct': 100.0 * backbone_trainable / max(backbone, 1),
    'neurons': totals['neurons'],
    'selected_entries': totals['selected'],
    'blocks': blocks,
    'leaves': leaves,
  }


def format_table(stats: dict) -> str:
  """Per-block table and the overall shares, as text."""
  lines = [f'{"block":<24}{"params":>14}{"trainable":>12}{"share %":>10}']
  for name, b in stats['blocks'].items():
    lines.append(f'{name:<24}{b["params"]:>14,}{b["trainable"]:>12,}{b["share_pct"]:>10.3f}')
  lines.append(
    f'{"total":<24}{stats["total_params"]:>14,}{stats["trainable"]:>12,}{stats["share_pct"]:>10.3f}'
  )
  lines.append(
    f'{"total without head":<24}{stats["backbone_params"]:>14,}'
    f'{stats["backbone_trainable"]:>12,}{stats["share_without_head_pct"]:>10.3f}'
  )
  return '\n'.join(lines)
