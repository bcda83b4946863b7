"""A grid's summary (`gps_jax.results_table.Summary`) as text: Markdown and CSV tables.

* ``format_markdown``: accuracy per task and the mean over tasks, the trainable
  parameters, the paired comparison;
* ``csv_rows`` / ``paired_rows`` with ``write_csv``: the same numbers as CSV
  (``CSV_FIELDS``, ``PAIRED_FIELDS``);
* ``Paper``: the GPS paper's number beside ours (`gps_jax.paper_results`), when the
  grid is a paper benchmark.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Sequence

import numpy as np

from gps_jax import files
from gps_jax import paper_results
from gps_jax.results_table import Summary

DASH = '–'  # the std of a single seed, and any cell without a value


def fmt_mean_std(mean: float | None, std: float | None, digits: int = 2) -> str:
  if mean is None:
    return DASH
  return (
    f'{mean:.{digits}f} ± {std:.{digits}f}' if std is not None else f'{mean:.{digits}f} ± {DASH}'
  )


def _fmt(x, spec: str = '.2f') -> str:
  return DASH if x is None else format(x, spec)


@dataclasses.dataclass(frozen=True)
class Paper:
  """Which of the paper's numbers to show: benchmark 'vtab' / 'fgvc' and the backbone."""

  benchmark: str
  backbone: str = 'vit_b16'

  def value(self, method: str, task: str):
    return paper_results.paper_value(self.benchmark, method, task, self.backbone)

  def mean(self, method: str, tasks: Sequence[str]) -> tuple[float | None, bool]:
    """(the paper's mean over `tasks`, derived): the printed mean when `tasks` are all of
    the benchmark's, else the mean of the paper's numbers of those tasks (derived=True),
    None when one of them has no number."""
    every = paper_results.VTAB_TASKS if self.benchmark == 'vtab' else paper_results.FGVC_TASKS
    if set(tasks) == set(every):
      return self.value(method, 'mean'), False
    values = [self.value(method, t) for t in tasks]
    if not values or any(v is None for v in values):
      return None, True
    return round(float(np.mean(values)), 2), True

  def params_pct(self, method: str):
    return paper_results.paper_params_pct(self.benchmark, method, self.backbone)

  def tables(self, methods: Sequence[str]) -> str:
    found = sorted(
      {paper_results.source(self.benchmark, m, self.backbone) for m in methods} - {None}
    )
    return ', '.join(found)


def format_markdown(s: Summary, title: str = 'Results', paper: Paper | None = None) -> str:
  """The grid's tables as Markdown: accuracy per task, trainable shares, paired comparison."""
  seeds = sorted({x for c in s.cells.values() for x in c.seeds})
  lines = [f'# {title}', '']
  note = (
    f'Test accuracy (%) after the last epoch, mean ± sample std over seeds (ddof=1; '
    f'`{DASH}` with one seed); seeds {", ".join(map(str, seeds)) or DASH}. '
    'The mean row averages the tasks per seed (the seeds every task has), then over seeds.'
  )
  if paper is not None and paper.tables(s.methods):
    note += (
      f" **[paper]** is the GPS paper's number ({paper.tables(s.methods)}, "
      f'{paper.benchmark}, {paper.backbone}): the best test accuracy over epochs, chosen on '
      "test; ours is the last epoch's, with nothing chosen on test."
    )
  lines += [note, '']
  lines.append('| task | ' + ' | '.join(s.methods) + ' |')
  lines.append('|---|' + '---:|' * len(s.methods))
  for t in s.tasks:
    row = [t]
    for m in s.methods:
      c = s.cells.get((t, m))
      text = fmt_mean_std(c.mean, c.std) if c else DASH
      if c and len(c.seeds) < len(seeds):
        text += f' (n={len(c.seeds)})'
      pv = paper.value(m, t) if paper else None
      if pv is not None:
        text += f' [{pv:.2f}]'
      row.append(text)
    lines.append('| ' + ' | '.join(row) + ' |')
  row, any_derived = ['**mean**'], False
  for m in s.methods:
    mm = s.means.get(m)
    if mm is None or not mm.complete:
      text = 'incomplete' if mm is not None else DASH
    else:
      text = fmt_mean_std(mm.mean, mm.std)
      if len(mm.seeds) < len(seeds):
        text += f' (n={len(mm.seeds)})'
    pv, derived = paper.mean(m, s.tasks) if paper else (None, False)
    if pv is not None:
      text += f' [{pv:.2f}{"*" if derived else ""}]'
      any_derived = any_derived or derived
    row.append(text)
  lines.append('| ' + ' | '.join(row) + ' |')
  if any_derived:
    lines += [
      '',
      f"[x*]: the mean of the paper's numbers over these {len(s.tasks)} tasks (the paper "
      "prints the mean over all of the benchmark's tasks).",
    ]

  lines += [
    '',
    '## Trainable parameters',
    '',
    (
      'Mean over tasks (the head differs per task; K may too). "backbone" counts every '
      'parameter but the classification head.'
    ),
    '',
  ]
  header = '| method | trainable (backbone) | share of backbone % | share with head % |'
  rule = '|---|---:|---:|---:|'
  if paper is not None:
    header += ' paper params % |'
    rule += '---:|'
  lines += [header, rule]
  for m in s.methods:
    mm = s.means.get(m)
    if mm is None:
      continue
    row = [
      m,
      f'{mm.trainable_without_head:,.0f}',
      f'{mm.share_without_head_pct:.3f}',
      f'{mm.share_pct:.3f}',
    ]
    if paper is not None:
      row.append(_fmt(paper.params_pct(m)))
    lines.append('| ' + ' | '.join(row) + ' |')

  if s.paired:
    lines += [
      '',
      f'## {s.reference} against each method, paired over task × seed',
      '',
      (
        f'Difference {s.reference} − method in points of test accuracy; a win is a pair where '
        f'{s.reference} is higher. 95 % interval: Student t over the pairs (needs two or more).'
      ),
      '',
      '| method | pairs | wins | ties | losses | mean diff | 95 % interval |',
      '|---|---:|---:|---:|---:|---:|---:|',
    ]
    for p in s.paired:
      ci = p.interval
      ci_text = f'[{ci[0]:+.2f}, {ci[1]:+.2f}]' if ci else DASH
      lines.append(
        f'| {p.method} | {p.n} | {p.wins} | {p.ties} | {p.losses} | {p.mean_diff:+.2f} | {ci_text} |'
      )
  return '\n'.join(lines) + '\n'


CSV_FIELDS = (
  'task',
  'method',
  'n_seeds',
  'seeds',
  'test_acc_mean',
  'test_acc_std',
  'paper_acc',
  'trainable',
  'trainable_without_head',
  'share_pct',
  'share_without_head_pct',
  'k',
)
PAIRED_FIELDS = (
  'reference',
  'method',
  'pairs',
  'wins',
  'ties',
  'losses',
  'mean_diff',
  'ci95_low',
  'ci95_high',
)


def csv_rows(s: Summary, paper: Paper | None = None) -> list[dict]:
  """One row per (task, method) and one 'mean' row per method (empty = no value)."""
  rows = []
  for t in s.tasks:
    for m in s.methods:
      c = s.cells.get((t, m))
      if c is None:
        continue
      rows.append(
        {
          'task': t,
          'method': m,
          'n_seeds': len(c.seeds),
          'seeds': ' '.join(map(str, c.seeds)),
          'test_acc_mean': c.mean,
          'test_acc_std': c.std,
          'paper_acc': paper.value(m, t) if paper else None,
          'trainable': c.trainable,
          'trainable_without_head': c.trainable_without_head,
          'share_pct': c.share_pct,
          'share_without_head_pct': c.share_without_head_pct,
          'k': c.k,
        }
      )
  for m in s.methods:
    mm = s.means.get(m)
    if mm is None:
      continue
    rows.append(
      {
        'task': 'mean',
        'method': m,
        'n_seeds': len(mm.seeds),
        'seeds': ' '.join(map(str, mm.seeds)),
        'test_acc_mean': mm.mean,
        'test_acc_std': mm.std,
        'paper_acc': paper.mean(m, s.tasks)[0] if paper else None,
        'trainable': None,
        'trainable_without_head': mm.trainable_without_head,
        'share_pct': mm.share_pct,
        'share_without_head_pct': mm.share_without_head_pct,
        'k': None,
      }
    )
  return rows


def paired_rows(s: Summary) -> list[dict]:
  out = []
  for p in s.paired:
    ci = p.interval
    out.append(
      {
        'reference': p.reference,
        'method': p.method,
        'pairs': p.n,
        'wins': p.wins,
        'ties': p.ties,
        'losses': p.losses,
        'mean_diff': p.mean_diff,
        'ci95_low': ci[0] if ci else None,
        'ci95_high': ci[1] if ci else None,
      }
    )
  return out


def _csv_value(x):
  if x is None:
    return ''
  return round(x, 4) if isinstance(x, float) else x


def write_csv(path: str, rows: Sequence[dict], fields: Sequence[str]) -> None:
  """`rows` as CSV (None as an empty field), written atomically."""

  def write(f):
    w = csv.DictWriter(f, fieldnames=list(fields), lineterminator='\n')
    w.writeheader()
    for r in rows:
      w.writerow({k: _csv_value(r.get(k)) for k in fields})

  files.write_atomic(path, write, binary=False)
