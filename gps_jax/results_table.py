"""Results of a grid of runs (tasks × methods × seeds) as tables: load, aggregate, compare.

A grid lives in one folder, one run per cell in ``<out>/<task>/<method>/seed_<s>``
(`cell_dir`); a cell is finished when its ``results.json`` exists. This module reads
those files and builds, in percentage points of test accuracy:

* per task and method: mean ± sample standard deviation over the seeds (ddof=1; no std
  with one seed), and the trainable counts and shares of the run;
* per method, the mean over tasks: for each seed that every task has, the mean over
  the tasks; then mean ± std over those seeds;
* a paired comparison of a reference method (gps) against each other method over the
  (task, seed) pairs both have: wins / ties / losses and the mean difference with a
  95 % t-interval;
* the GPS paper's number beside ours (`gps_jax.paper_results`), when the grid is a
  paper benchmark.

``format_markdown`` and ``write_csv`` write them; `tools/reproduce.py` is the command line.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
from collections.abc import Iterable, Sequence

import numpy as np

from gps_jax import files
from gps_jax import paper_results

DASH = '–'  # the std of a single seed, and any cell without a value


def cell_dir(out: str, task: str, method: str, seed: int) -> str:
  """The workdir of one cell of a grid."""
  return os.path.join(out, task, method, f'seed_{seed}')


def is_finished(workdir: str) -> bool:
  return os.path.isfile(os.path.join(workdir, 'results.json'))


_SEED_DIR = re.compile(r'^seed_(-?\d+)$')


def load_runs(
  out: str,
  tasks: Sequence[str] | None = None,
  methods: Sequence[str] | None = None,
  seeds: Sequence[int] | None = None,
) -> list[dict]:
  """Every finished cell under `out` (optionally only those tasks / methods / seeds).

  Each row is the cell's results.json (without its 'history') plus 'task', 'seed' and
  'workdir'; rows come in the order of `tasks`, `methods`, `seeds` when given, else
  sorted by name.
  """
  rows = []
  if not os.path.isdir(out):
    return rows
  task_names = list(tasks) if tasks is not None else sorted(_subdirs(out))
  for task in task_names:
    tdir = os.path.join(out, task)
    if not os.path.isdir(tdir):
      continue
    method_names = list(methods) if methods is not None else sorted(_subdirs(tdir))
    for method in method_names:
      mdir = os.path.join(tdir, method)
      if not os.path.isdir(mdir):
        continue
      if seeds is not None:
        seed_list = list(seeds)
      else:
        seed_list = sorted(int(m.group(1)) for d in _subdirs(mdir) if (m := _SEED_DIR.match(d)))
      for seed in seed_list:
        workdir = cell_dir(out, task, method, seed)
        path = os.path.join(workdir, 'results.json')
        if not os.path.isfile(path):
          continue
        with open(path) as f:
          res = json.load(f)
        res.pop('history', None)
        res.update(task=task, seed=seed, workdir=workdir, run_method=res.get('method'))
        res['method'] = method  # the folder's name: one method (at one K) per folder
        rows.append(res)
  return rows


def _subdirs(path: str) -> list[str]:
  return [d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))]


# ----------------------------------------------------------------------------- statistics


def t_quantile(p: float, df: int) -> float:
  """The p-quantile of Student's t distribution with `df` degrees of freedom."""
  if df < 1:
    raise ValueError(f'df={df}: the t distribution needs df >= 1')
  from scipy import stats  # a dependency of jax itself: always installed with gps_jax

  return float(stats.t.ppf(p, df))


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
  """(mean, sample std with ddof=1); the std is None for one value."""
  v = np.asarray(values, np.float64)
  if v.size == 0:
    raise ValueError('mean_std of no values')
  return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None)


def t_interval(diffs: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
  """The `level` t-interval of the mean of `diffs`; None with fewer than two values."""
  d = np.asarray(diffs, np.float64)
  if d.size < 2:
    return None
  half = t_quantile(0.5 + level / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
  return float(d.mean() - half), float(d.mean() + half)


@dataclasses.dataclass
class Cell:
  """One (task, method): accuracies (%) over seeds and the trainable counts of its runs."""

  task: str
  method: str
  seeds: list[int]
  accs: list[float]  # percent, in the order of `seeds`
  trainable: int
  trainable_without_head: int
  share_pct: float
  share_without_head_pct: float
  k: int | None = None

  @property
  def mean(self) -> float:
    return mean_std(self.accs)[0]

  @property
  def std(self) -> float | None:
    return mean_std(self.accs)[1]


@dataclasses.dataclass
class MethodMean:
  """One method's mean over tasks: per seed the mean over all tasks, then over seeds."""

  method: str
  seeds: list[int]  # the seeds every task has
  per_seed: list[float]  # percent
  share_pct: float  # mean over tasks
  share_without_head_pct: float
  trainable_without_head: float
  complete: bool  # every task of the grid has a run of this method

  @property
  def mean(self) -> float | None:
    return mean_std(self.per_seed)[0] if self.per_seed else None

  @property
  def std(self) -> float | None:
    return mean_std(self.per_seed)[1] if self.per_seed else None


@dataclasses.dataclass
class Paired:
  """`reference` − `method` over the (task, seed) pairs both ran, in points."""

  reference: str
  method: str
  diffs: list[float]
  pairs: list[tuple[str, int]]

  @property
  def n(self) -> int:
    return len(self.diffs)

  @property
  def wins(self) -> int:
    return sum(d > 0 for d in self.diffs)

  @property
  def ties(self) -> int:
    return sum(d == 0 for d in self.diffs)

  @property
  def losses(self) -> int:
    return sum(d < 0 for d in self.diffs)

  @property
  def mean_diff(self) -> float | None:
    return float(np.mean(self.diffs)) if self.diffs else None

  @property
  def interval(self) -> tuple[float, float] | None:
    return t_interval(self.diffs)


@dataclasses.dataclass
class Summary:
  tasks: list[str]
  methods: list[str]
  cells: dict[tuple[str, str], Cell]
  means: dict[str, MethodMean]
  paired: list[Paired]
  reference: str


def _ordered(names: Iterable[str], preferred: Sequence[str] | None) -> list[str]:
  names = list(dict.fromkeys(names))
  if preferred is None:
    return names
  return [n for n in preferred if n in names] + [n for n in names if n not in preferred]


def summarize(
  runs: Sequence[dict],
  tasks: Sequence[str] | None = None,
  methods: Sequence[str] | None = None,
  reference: str = 'gps',
) -> Summary:
  """Aggregates `load_runs` rows; `tasks` / `methods` give the order (and the grid)."""
  tasks = _ordered([r['task'] for r in runs], tasks) if tasks is None else list(tasks)
  methods = _ordered([r['method'] for r in runs], methods) if methods is None else list(methods)
  by_cell: dict[tuple[str, str], list[dict]] = {}
  for r in runs:
    by_cell.setdefault((r['task'], r['method']), []).append(r)
  cells = {}
  for key, rs in by_cell.items():
    rs = sorted(rs, key=lambda r: r['seed'])
    cells[key] = Cell(
      task=key[0],
      method=key[1],
      seeds=[r['seed'] for r in rs],
      accs=[100.0 * r['test_accuracy'] for r in rs],
      trainable=rs[0]['trainable'],
      trainable_without_head=rs[0]['trainable_without_head'],
      share_pct=rs[0]['share_pct'],
      share_without_head_pct=rs[0]['share_without_head_pct'],
      k=rs[0].get('k'),
    )
  means = {}
  for m in methods:
    mine = [cells[(t, m)] for t in tasks if (t, m) in cells]
    if not mine:
      continue
    common = sorted(set.intersection(*(set(c.seeds) for c in mine)))
    complete = len(mine) == len(tasks)
    per_seed = (
      [float(np.mean([c.accs[c.seeds.index(s)] for c in mine])) for s in common] if complete else []
    )
    means[m] = MethodMean(
      method=m,
      seeds=common if complete else [],
      per_seed=per_seed,
      share_pct=float(np.mean([c.share_pct for c in mine])),
      share_without_head_pct=float(np.mean([c.share_without_head_pct for c in mine])),
      trainable_without_head=float(np.mean([c.trainable_without_head for c in mine])),
      complete=complete,
    )
  paired = []
  if any(m == reference for (_, m) in cells):
    for m in methods:
      if m == reference:
        continue
      diffs, pairs = [], []
      for t in tasks:
        a, b = cells.get((t, reference)), cells.get((t, m))
        if a is None or b is None:
          continue
        for s in a.seeds:
          if s in b.seeds:
            diffs.append(a.accs[a.seeds.index(s)] - b.accs[b.seeds.index(s)])
            pairs.append((t, s))
      if diffs:
        paired.append(Paired(reference, m, diffs, pairs))
  return Summary(tasks, methods, cells, means, paired, reference)


# ----------------------------------------------------------------------------- formatting


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
