"""Delta tools: inspect, apply, compose and export the sparse result of a run.

  python -m gps_jax.delta inspect RUN/checkpoint [--json]
  python -m gps_jax.delta apply RUN/checkpoint --base BASE --out tuned.npz [--force]
  python -m gps_jax.delta compose D1 D2 ... --base BASE --out merged.npz
      [--overlap sum|mean|error] [--train-rule sum|mean|error]
      [--head-from N | --no-head] [--force]
  python -m gps_jax.delta export RUN/checkpoint --out delta.safetensors|delta.npz

A delta is what `gps_jax.experiment.run` writes: the orbax directory
``checkpoint/`` (int32 (neurons, K) `indices` and `delta` values of every
selected leaf, and the `train` leaves: head, biases, ...) and its manifest
``checkpoint.manifest.json`` (see `gps_jax.checkpoint`: method, K, model config,
the base file's path and SHA-256, fan_in_ndim and shape of every delta leaf).
Every command also reads an exported file (below) in place of the directory.

apply
  Loads BASE with `gps_jax.weights.load_checkpoint` for the manifest's model
  config (num_classes from the delta's head), adds each delta at its indices
  with `gps_jax.sparse.scatter_add` (the manifest's fan_in_ndim), replaces the
  trained leaves by the delta's values and writes a dense gps_jax-layout
  ``.npz`` (`gps_jax.vit_npz.save_vit_npz`): the fine-tuned model of the run.
  BASE must be the file the run started from: its SHA-256 must equal the
  manifest's, else a ValueError names both hashes; ``--force`` applies anyway
  with a warning (also to a delta trained from a random init, which has none).

compose
  Several deltas of one base (same SHA-256) and one architecture (the model
  configs may differ only in num_classes, the checkpoint fields and the
  dropout / drop-path rates) are combined into one dense model. Every delta is
  a change from the base: on a selected leaf, its values at its (neuron, input)
  positions; on a trained leaf, ``trained - base`` on the whole leaf. A
  position shared by two or more deltas combines by a rule:

  * ``sum``: the changes add up (task arithmetic);
  * ``mean``: the average of the changes of the deltas that share the position;
    a position of one delta keeps that delta's change;
  * ``error``: refused; nothing is written.

  ``--overlap`` is the rule of the selected entries; the per-leaf and total
  counts of shared positions are printed. ``--train-rule`` (default: the
  ``--overlap`` rule) is the rule of the trained leaves other than the head
  (biases, layer-scale gammas, ...): every delta trains every bias, so with
  ``error`` two deltas with biases are refused; pass ``--train-rule sum|mean``.
  A leaf must be of one kind in all deltas (selected, or trained in full).

  Heads are task-specific and never combined: with one head among the deltas
  (or all heads equal), it is used; with different heads, compose refuses
  unless ``--head-from N`` (0-based, in the order given) picks one delta's head
  or ``--no-head`` writes the model without a head (a backbone, as the demo's
  upstream cache: `load_checkpoint` gives it a fresh head).

export
  One self-describing file: ``<leaf>/indices`` (int32) and ``<leaf>/values``
  of every selected leaf, ``<leaf>`` of every trained leaf, and the manifest
  as JSON: in ``.safetensors`` the metadata entry ``gps_jax_manifest``; in
  ``.npz`` the uint8 array ``__manifest__`` of its UTF-8 bytes (every member a
  plain array: ``np.load(allow_pickle=False)`` reads it). `read_export` returns
  (arrays, manifest).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import warnings
from typing import Callable, Mapping, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from gps_jax import checkpoint
from gps_jax import mask_stats
from gps_jax import tree as tree_lib
from gps_jax import sparse

RULES = ('sum', 'mean', 'error')
EXPORT_SUFFIXES = ('.safetensors', '.npz')
MANIFEST_MEMBER = '__manifest__'
SAFETENSORS_KEY = 'gps_jax_manifest'
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


# ----------------------------------------------------------------------------- loading


@dataclasses.dataclass
class Delta:
  """A delta: flat {leaf: array} parts and the manifest (None for an old checkpoint)."""

  source: str
  indices: dict[str, np.ndarray]
  delta: dict[str, np.ndarray]
  train: dict[str, np.ndarray]
  manifest: Optional[dict]

  @property
  def base_sha256(self) -> Optional[str]:
    return self.manifest['base']['sha256'] if self.manifest else None


def _is_export(path: str) -> bool:
  return os.path.isfile(path) and path.endswith(EXPORT_SUFFIXES)


def load(path: str, *, require_manifest: bool = True) -> Delta:
  """A delta from a checkpoint directory (and its manifest) or from an exported file."""
  path = os.fspath(path)
  if _is_export(path):
    arrays, manifest = read_export(path)
    parts = split_export(arrays, manifest, path)
  else:
    parts = checkpoint.load_delta(path)
    try:
      manifest = checkpoint.load_manifest(path)
    except FileNotFoundError:
      if require_manifest:
        raise
      manifest = None
  d = Delta(
    source=path,
    indices={p: np.asarray(v) for p, v in parts['indices'].items()},
    delta={p: np.asarray(v) for p, v in parts['delta'].items()},
    train={p: np.asarray(v) for p, v in parts['train'].items()},
    manifest=manifest,
  )
  validate(d)
  return d


def validate(d: Delta) -> None:
  """Checks that indices, values and manifest agree (leaves, shapes, index range)."""
  if set(d.indices) != set(d.delta):
    raise ValueError(
      f'{d.source}: indices and delta values name different leaves: '
      f'{sorted(set(d.indices) ^ set(d.delta))}'
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
      raise ValueError(
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
    raise ValueError(f'{d.source} is not a consistent delta:\n  ' + '\n  '.join(problems))


def _require_manifest(d: Delta) -> dict:
  if d.manifest is None:
    raise ValueError(f'{d.source} has no manifest; apply and compose need one')
  return d.manifest


# ----------------------------------------------------------------------------- inspect


def inspect_delta(d: Delta) -> dict:
  """Entries and bytes per block (delta values, indices, trained leaves) and in total."""
  fields = (
    'entries',
    'delta_entries',
    'train_entries',
    'values_bytes',
    'indices_bytes',
    'train_bytes',
    'bytes',
  )
  blocks: dict[str, dict[str, int]] = {}

  def add(path, **counts):
    b = blocks.setdefault(mask_stats.block_of(path), dict.fromkeys(fields, 0))
    for key, n in counts.items():
      b[key] += int(n)

  for p, values in d.delta.items():
    idx = d.indices[p]
    add(
      p,
      entries=values.size,
      delta_entries=values.size,
      values_bytes=values.nbytes,
      indices_bytes=idx.nbytes,
      bytes=values.nbytes + idx.nbytes,
    )
  for p, value in d.train.items():
    add(
      p, entries=value.size, train_entries=value.size, train_bytes=value.nbytes, bytes=value.nbytes
    )
  totals = {key: sum(b[key] for b in blocks.values()) for key in fields}
  m = d.manifest
  ks = sorted({int(v.shape[-1]) for v in d.indices.values()})
  return {
    'source': d.source,
    'format': m['format'] if m else None,
    'method': m['method'] if m else None,
    'k': m['k'] if m else (ks[0] if len(ks) == 1 else ks or None),
    'base': m['base'] if m else None,
    'created': m['created'] if m else None,
    'delta_leaves': len(d.delta),
    'train_leaves': len(d.train),
    'blocks': blocks,
    'total': totals,
  }


def format_inspect(report: dict) -> str:
  """The report of `inspect_delta` as text."""
  base = report['base'] or {}
  w = max([len('block')] + [len(name) for name in report['blocks']]) + 2
  lines = [
    f'delta       {report["source"]}',
    f'method      {report["method"]}    K {report["k"]}    created {report["created"]}',
    f'base        {base.get("path")}',
    f'base sha256 {base.get("sha256")}',
    f'leaves      {report["delta_leaves"]} sparse, {report["train_leaves"]} trained in full',
    '',
    f'{"block":<{w}}{"entries":>12}{"values B":>12}{"indices B":>12}{"trained B":>12}{"total B":>13}',
  ]
  for name, b in list(report['blocks'].items()) + [('total', report['total'])]:
    lines.append(
      f'{name:<{w}}{b["entries"]:>12,}{b["values_bytes"]:>12,}{b["indices_bytes"]:>12,}'
      f'{b["train_bytes"]:>12,}{b["bytes"]:>13,}'
    )
  if report['format'] is None:
    lines.append('(no manifest: an older checkpoint; apply and compose need one)')
  return '\n'.join(lines)


# ----------------------------------------------------------------------------- apply


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
  out = sparse.scatter_add(jnp.asarray(base), jnp.asarray(idx), jnp.asarray(values), fan_in_ndim)
  return np.asarray(out)


def apply_delta(
  d: Delta, base_path: str, *, force: bool = False, warn: Callable = _warn
) -> dict[str, np.ndarray]:
  """The fine-tuned flat params: base + delta at its indices, trained leaves replaced."""
  m = _require_manifest(d)
  check_base([m], base_path, force=force, warn=warn)
  params = load_base(base_path, m['model'], _num_classes(d.train, m))
  _check_leaves(d, params)
  for p, values in d.delta.items():
    params[p] = _scatter(params[p], d.indices[p], values, int(m['fan_in_ndim'][p]))
  for p, v in d.train.items():
    params[p] = np.asarray(v, params[p].dtype)
  return params


def write_npz(path: str, params: Mapping[str, np.ndarray]) -> None:
  """A dense gps_jax-layout .npz of flat params (atomic)."""
  from gps_jax.vit_npz import save_vit_npz

  save_vit_npz(path, tree_lib.unflat(dict(params)))


# ----------------------------------------------------------------------------- compose


def _arch(model: Mapping) -> dict:
  return {k: v for k, v in model.items() if k not in NON_ARCH_KEYS}


def check_compatible(deltas: Sequence[Delta]) -> None:
  """All deltas share the base hash, the architecture and every shared leaf's layout."""
  ms = [_require_manifest(d) for d in deltas]
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
  deltas: Sequence[Delta], head_from: Optional[int], no_head: bool
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
  train_rule: Optional[str] = None,
  head_from: Optional[int] = None,
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


# ----------------------------------------------------------------------------- export


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
  return arrays


def _atomic(path: str, write: Callable[[str], None]) -> None:
  fd, tmp = tempfile.mkstemp(
    dir=os.path.dirname(os.path.abspath(path)), prefix=os.path.basename(path) + '.', suffix='.tmp'
  )
  os.close(fd)
  try:
    write(tmp)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def export_delta(d: Delta, out: str) -> None:
  """Writes `d` as one self-describing .safetensors or .npz file (see the module doc)."""
  manifest = json.dumps(_require_manifest(d), sort_keys=True)
  arrays = export_arrays(d)
  if out.endswith('.safetensors'):
    from safetensors.numpy import save_file

    _atomic(out, lambda tmp: save_file(arrays, tmp, metadata={SAFETENSORS_KEY: manifest}))
  elif out.endswith('.npz'):
    member = np.frombuffer(manifest.encode('utf-8'), np.uint8)

    def write(tmp):
      with open(tmp, 'wb') as f:
        np.savez(f, **arrays, **{MANIFEST_MEMBER: member})

    _atomic(out, write)
  else:
    raise ValueError(f'{out}: export to a .safetensors or .npz file')


def read_export(path: str) -> tuple[dict[str, np.ndarray], dict]:
  """(flat arrays, manifest) of an exported delta; nothing is unpickled."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no exported delta {path}')
  if path.endswith('.safetensors'):
    from safetensors import safe_open

    with safe_open(path, framework='numpy') as f:
      text = (f.metadata() or {}).get(SAFETENSORS_KEY)
      arrays = {k: f.get_tensor(k) for k in f.keys()}
    if text is None:
      raise ValueError(f'{path}: no {SAFETENSORS_KEY!r} metadata: not a gps_jax delta export')
  elif path.endswith('.npz'):
    with np.load(path, allow_pickle=False) as npz:
      arrays = {k: npz[k] for k in npz.files}
    member = arrays.pop(MANIFEST_MEMBER, None)
    if member is None:
      raise ValueError(f'{path}: no {MANIFEST_MEMBER!r} member: not a gps_jax delta export')
    text = member.tobytes().decode('utf-8')
  else:
    raise ValueError(f'{path}: an exported delta is a .safetensors or .npz file')
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
  parts['train'] = rest
  return parts


# ----------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog='python -m gps_jax.delta',
    description='Inspect, apply, compose and export gps_jax deltas.',
    epilog='See the docstring of gps_jax/delta.py for the rules.',
  )
  sub = parser.add_subparsers(dest='command', required=True)
  p = sub.add_parser('inspect', help='entries and bytes per block, K, method, base')
  p.add_argument('delta')
  p.add_argument('--json', action='store_true', help='print the report as JSON')
  p = sub.add_parser('apply', help='base + delta as a dense gps_jax-layout .npz')
  p.add_argument('delta')
  p.add_argument('--base', required=True)
  p.add_argument('--out', required=True)
  p.add_argument('--force', action='store_true', help='apply to a base of another sha256')
  p = sub.add_parser('compose', help='several deltas of one base as one dense .npz')
  p.add_argument('deltas', nargs='+')
  p.add_argument('--base', required=True)
  p.add_argument('--out', required=True)
  p.add_argument('--overlap', choices=RULES, default='sum', help='rule for shared positions')
  p.add_argument('--train-rule', choices=RULES, default=None, help='for trained leaves')
  p.add_argument('--head-from', type=int, default=None, help='0-based delta whose head is used')
  p.add_argument('--no-head', action='store_true', help='write the model without a head')
  p.add_argument('--force', action='store_true', help='use a base of another sha256')
  p = sub.add_parser('export', help='one self-describing .safetensors or .npz file')
  p.add_argument('delta')
  p.add_argument('--out', required=True)
  return parser


def _cli_warn(message: str) -> None:
  print(f'warning: {message}', file=sys.stderr, flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parser().parse_args(argv)
  try:
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every restore at INFO
  except ImportError:
    pass
  try:
    if args.command == 'inspect':
      report = inspect_delta(load(args.delta, require_manifest=False))
      print(json.dumps(report, indent=1) if args.json else format_inspect(report))
    elif args.command == 'apply':
      d = load(args.delta)
      params = apply_delta(d, args.base, force=args.force, warn=_cli_warn)
      write_npz(args.out, params)
      entries = sum(v.size for v in d.delta.values())
      print(
        f'wrote {args.out}: {len(params)} leaves; {entries:,} selected entries changed in '
        f'{len(d.delta)} leaves, {len(d.train)} trained leaves replaced'
      )
    elif args.command == 'compose':
      deltas = [load(p) for p in args.deltas]
      params, report = compose_deltas(
        deltas,
        args.base,
        overlap=args.overlap,
        train_rule=args.train_rule,
        head_from=args.head_from,
        no_head=args.no_head,
        force=args.force,
        warn=_cli_warn,
      )
      print(format_overlap(report))
      write_npz(args.out, params)
      print(f'wrote {args.out}: {len(params)} leaves from {len(deltas)} deltas')
    elif args.command == 'export':
      export_delta(load(args.delta), args.out)
      print(f'wrote {args.out} ({os.path.getsize(args.out):,} bytes)')
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
