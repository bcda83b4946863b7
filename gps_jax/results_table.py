"""Results of a grid of runs (tasks × methods × seeds): load and aggregate.

A grid lives in one folder, one run per cell in ``<out>/<task>/<method>/seed_<s>``
(`cell_dir`); a cell is finished when its ``results.json`` exists. This module reads
those files and builds, in percentage points of test accuracy:

* per task and method: mean ± sample standard deviation over the seeds (ddof=1; no std
  with one seed), and the trainable counts and shares of the run;
* per method, the mean over tasks: for each seed that every task has, the mean over
  the tasks; then mean ± std over those seeds;
* a paired comparison of a reference method (gps) against each other method over the
  (task, seed) pairs both have: wins / ties / losses and the mean difference with a
  95 % t-interval.

`gps_jax.results_format` writes them as Markdown and CSV; `tools/reproduce.py` is the
command line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Iterable, Sequence

import numpy as np


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
