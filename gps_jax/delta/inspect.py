"""Inspect: entries and bytes of a delta per block (values, indices, trained leaves)."""

from __future__ import annotations

from gps_jax import mask_stats
from gps_jax.delta.store import Delta


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
  for name, value in d.factors.items():  # LoRA / SSF arrays count with the trained ones
    add(
      name, entries=value.size, train_entries=value.size, train_bytes=value.nbytes, bytes=value.nbytes
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
    'factors': len(d.factors),
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
    f'leaves      {report["delta_leaves"]} sparse, {report["train_leaves"]} trained in full'
    + (f', {report["factors"]} factor arrays' if report.get('factors') else ''),
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
