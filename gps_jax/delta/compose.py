"""Compose: several deltas of one base as one dense model (rules in `gps_jax.delta`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from gps_jax import tree as tree_lib
from gps_jax.delta.apply import _check_leaves, _num_classes, _scatter, _warn, check_base, load_base
from gps_jax.delta.store import Delta, _require_manifest

RULES = ('sum', 'mean', 'error')
# Model config keys that leave the parameters of a model unchanged.
NON_ARCH_KEYS = (
  'num_classes',
  'checkpoint',
  'require_checkpoint',
  'reinit_head',
  'drop_path_rate',
  'dropout_rate',
  'attention_dropout_rate',
)


def _arch(model: Mapping) -> dict:
  return {k: v for k, v in model.items() if k not in NON_ARCH_KEYS}


def check_compatible(deltas: Sequence[Delta]) -> None:
  """All deltas share the base hash, the architecture and every shared leaf's layout."""
  ms = [_require_manifest(d) for d in deltas]
  for d in deltas:
    if d.factors:
      raise ValueError(
        f'{d.source} is a {d.manifest["method"]} delta: its factors change every entry of '
        'their kernels, so it cannot be summed with sparse deltas; apply it on its own'
      )
  hashes = {m['base']['sha256'] for m in ms}
  if len(hashes) > 1:
    lines = [f'{d.source}: {m["base"]["sha256"]}' for d, m in zip(deltas, ms)]
    raise ValueError('the deltas have different bases (sha256):\n  ' + '\n  '.join(lines))
  archs = [_arch(m['model']) for m in ms]
  for d, a in zip(deltas[1:], archs[1:]):
    if a != archs[0]:
      diff = sorted(k for k in set(a) | set(archs[0]) if a.get(k) != archs[0].get(k))
      raise ValueError(
        f'{d.source} has another model than {deltas[0].source}: they differ in {diff}'
      )
  problems = []
  layout, shapes, kind = {}, {}, {}
  for d, m in zip(deltas, ms):
    for p in d.delta:
      n, s = int(m['fan_in_ndim'][p]), tuple(m['shapes'][p])
      if layout.setdefault(p, n) != n or shapes.setdefault(p, s) != s:
        problems.append(
          f'{p}: fan_in_ndim/shape {n}/{s} in {d.source}, {layout[p]}/{shapes[p]} before'
        )
    for p in d.delta:
      if kind.setdefault(p, 'selected') != 'selected':
        problems.append(f'{p}: selected in {d.source}, trained in full in another delta')
    for p, v in d.train.items():
      if kind.setdefault(p, 'trained') != 'trained':
        problems.append(f'{p}: trained in full in {d.source}, selected in another delta')
      elif not tree_lib.is_head(p) and shapes.setdefault(p, v.shape) != v.shape:
        problems.append(f'{p}: shape {v.shape} in {d.source}, {shapes[p]} before')
  if problems:
    raise ValueError('the deltas cannot be composed:\n  ' + '\n  '.join(problems))


def _positions(idx: np.ndarray) -> np.ndarray:
  """Flat (input * neurons + neuron) positions of (neurons, K) indices."""
  neurons = idx.shape[0]
  return (idx.astype(np.int64) * neurons + np.arange(neurons)[:, None]).ravel()


def position_counts(deltas: Sequence[Delta], leaf: str) -> np.ndarray:
  """(fan_in, neurons) int32: how many deltas select each (input, neuron) of `leaf`."""
  m = _require_manifest(next(d for d in deltas if leaf in d.delta))
  shape, n = tuple(m['shapes'][leaf]), int(m['fan_in_ndim'][leaf])
  fan_in, neurons = int(np.prod(shape[:n])), int(np.prod(shape[n:]))
  counts = np.zeros(fan_in * neurons, np.int32)
  for d in deltas:
    if leaf in d.indices:
      mark = np.zeros(fan_in * neurons, bool)
      mark[_positions(d.indices[leaf])] = True  # a delta counts once per position
      counts += mark
  return counts.reshape(fan_in, neurons)


def overlap_report(deltas: Sequence[Delta]) -> dict:
  """Per selected leaf and in total: positions of the union, and those 2+ deltas share.

  Also the trained leaves (not the head) that two or more deltas train.
  """
  leaves = {}
  for p in sorted({p for d in deltas for p in d.delta}):
    counts = position_counts(deltas, p)
    leaves[p] = {
      'deltas': sum(p in d.delta for d in deltas),
      'positions': int(np.count_nonzero(counts)),
      'shared': int(np.count_nonzero(counts >= 2)),
    }
  trained = {}
  for p in sorted({p for d in deltas for p in d.train if not tree_lib.is_head(p)}):
    trained[p] = sum(p in d.train for d in deltas)
  return {
    'leaves': leaves,
    'positions': sum(v['positions'] for v in leaves.values()),
    'shared': sum(v['shared'] for v in leaves.values()),
    'shared_trained_leaves': {p: n for p, n in trained.items() if n >= 2},
  }


def _choose_head(
  deltas: Sequence[Delta], head_from: int | None, no_head: bool
) -> tuple[dict[str, np.ndarray], str]:
  """({head leaf: value}, how it was chosen) by the rule of the module doc."""
  if no_head:
    if head_from is not None:
      raise ValueError('give either --head-from or --no-head, not both')
    return {}, 'none (--no-head)'
  heads = [{p: v for p, v in d.train.items() if tree_lib.is_head(p)} for d in deltas]
  if head_from is not None:
    if not 0 <= head_from < len(deltas):
      raise ValueError(f'--head-from={head_from}: give 0 to {len(deltas) - 1}')
    if not heads[head_from]:
      raise ValueError(f'--head-from={head_from}: {deltas[head_from].source} has no head')
    return heads[head_from], f'delta {head_from} (--head-from)'
  have = [i for i, h in enumerate(heads) if h]
  if not have:
    return {}, 'none (no delta has a head)'
  first = heads[have[0]]

  def same(h):
    return set(h) == set(first) and all(
      h[p].shape == first[p].shape and np.array_equal(h[p], first[p]) for p in h
    )

  if all(same(heads[i]) for i in have):
    return first, f'delta {have[0]}' + (
      ' (all heads equal)' if len(have) > 1 else ' (the only head)'
    )
  raise ValueError(
    f"deltas {have} have different heads, which cannot be combined (each is its task's "
    'classifier): pick one with --head-from=N (0-based) or drop them with --no-head'
  )


def compose_deltas(
  deltas: Sequence[Delta],
  base_path: str,
  *,
  overlap: str = 'sum',
  train_rule: str | None = None,
  head_from: int | None = None,
  no_head: bool = False,
  force: bool = False,
  warn: Callable = _warn,
) -> tuple[dict[str, np.ndarray], dict]:
  """(flat params, report) of several deltas on one base, by the rules of the module doc."""
  train_rule = train_rule or overlap
  for name, rule in (('overlap', overlap), ('train_rule', train_rule)):
    if rule not in RULES:
      raise ValueError(f'{name}={rule!r}: use one of {RULES}')
  if not deltas:
    raise ValueError('compose needs at least one delta')
  check_compatible(deltas)
  report = overlap_report(deltas)
  report.update(
    deltas=[d.source for d in deltas], overlap_rule=overlap, train_rule=train_rule, head=None
  )
  if overlap == 'error' and report['shared']:
    shared = {p: v['shared'] for p, v in report['leaves'].items() if v['shared']}
    raise ValueError(
      f'--overlap=error: the deltas share {report["shared"]} selected positions: {shared}'
    )
  if train_rule == 'error' and report['shared_trained_leaves']:
    raise ValueError(
      f'--train-rule=error: {len(report["shared_trained_leaves"])} trained leaves are trained by '
      f'two or more deltas (e.g. {next(iter(report["shared_trained_leaves"]))}); '
      'pass --train-rule=sum or --train-rule=mean to combine their changes from the base'
    )
  head, report['head'] = _choose_head(deltas, head_from, no_head)
  ms = [d.manifest for d in deltas]
  check_base(ms, base_path, force=force, warn=warn)
  num_classes = _num_classes(head, {'model': {'num_classes': 0}})
  params = load_base(base_path, ms[0]['model'], num_classes)
  for d in deltas:
    _check_leaves(d, params, heads=False)

  for p in report['leaves']:
    n = next(int(d.manifest['fan_in_ndim'][p]) for d in deltas if p in d.delta)
    counts = position_counts(deltas, p) if overlap == 'mean' else None
    w = params[p]
    for d in deltas:
      if p not in d.delta:
        continue
      values = np.asarray(d.delta[p], np.float32)
      if counts is not None:  # each delta adds its share of the mean at its positions
        idx = d.indices[p]
        values = values / counts[idx, np.arange(idx.shape[0])[:, None]]
      w = _scatter(w, d.indices[p], values, n)
    params[p] = w
  for p in sorted({p for d in deltas for p in d.train if not tree_lib.is_head(p)}):
    base = params[p]
    changes = [np.asarray(d.train[p], np.float32) - base for d in deltas if p in d.train]
    total = np.sum(changes, axis=0)
    params[p] = (base + (total / len(changes) if train_rule == 'mean' else total)).astype(
      base.dtype
    )
  for p in [p for p in params if tree_lib.is_head(p)]:
    del params[p]
  params.update({p: np.asarray(v, np.float32) for p, v in head.items()})
  return params, report


def format_overlap(report: dict) -> str:
  """The overlap part of the report of `compose_deltas` as text."""
  width = max([len('selected leaf'), len('total')] + [len(p) for p in report['leaves']]) + 2
  lines = [f'{"selected leaf":<{width}}{"deltas":>7}{"positions":>12}{"shared":>10}']
  for p, v in report['leaves'].items():
    lines.append(f'{p:<{width}}{v["deltas"]:>7}{v["positions"]:>12,}{v["shared"]:>10,}')
  lines.append(f'{"total":<{width}}{"":>7}{report["positions"]:>12,}{report["shared"]:>10,}')
  shared = report['shared_trained_leaves']
  lines.append(
    f'trained leaves (not the head) trained by 2+ deltas: {len(shared)}, '
    f'combined by {report["train_rule"]}'
  )
  lines.append(f'selected positions shared by 2+ deltas combined by {report["overlap_rule"]}')
  lines.append(f'head: {report["head"]}')
  return '\n'.join(lines)
