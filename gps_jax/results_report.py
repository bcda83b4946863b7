"""A grid's report: its finished runs as results.md, results.csv, paired.csv and plots/.

`write_report` loads the finished cells of a grid folder (`gps_jax.results_table`),
summarises them, writes the tables (`gps_jax.results_format`) and, optionally, the
figures (`gps_jax.plots`):

* ``plots/per_task.png``, ``plots/accuracy_vs_share.png``, the mask of the reference
  method's first run (``mask_<task>_<method>_seed_<s>.png``);
* with a method run at two or more K on one task, ``plots/accuracy_vs_k.png``
  (`k_series`) and, with several tasks, ``plots/accuracy_vs_k_mean.png``
  (`k_mean_series`: each method's mean over the tasks).

`tools/reproduce.py` is the command line (it runs the cells and prints the report).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import numpy as np

from gps_jax import files
from gps_jax import results_format as rf
from gps_jax import results_table as rt
from gps_jax.errors import UserError


@dataclasses.dataclass
class Report:
  """What `write_report` built: the summary, the Markdown and the files written
  (relative to the grid folder)."""

  summary: rt.Summary
  markdown: str
  written: list[str]


def write_report(
  out: str,
  tasks: Sequence[str],
  methods: Sequence[str] | None,
  seeds: Sequence[int] | None,
  reference: str,
  title: str,
  paper: rf.Paper | None = None,
  preferred: Sequence[str] = (),
  make_plots: bool = True,
) -> Report | None:
  """results.md, results.csv, paired.csv and plots/ under `out` from its finished cells.

  The report covers `tasks`, `methods` (None: every method folder found) and `seeds`
  (None: every seed found); None when no cell is finished. The columns come in the
  order of `methods` (or else `preferred`), then the other methods found.
  """
  runs = rt.load_runs(out, tasks=tasks, methods=methods, seeds=seeds)
  if not runs:
    return None
  present_tasks = [t for t in tasks if any(r['task'] == t for r in runs)]
  found = list(dict.fromkeys(r['method'] for r in runs))
  order = [m for m in (methods or preferred) if m in found]
  order += [m for m in found if m not in order]
  summary = rt.summarize(runs, tasks=present_tasks, methods=order, reference=reference)
  md = rf.format_markdown(summary, title=title, paper=paper)
  os.makedirs(out, exist_ok=True)
  files.write_atomic(os.path.join(out, 'results.md'), lambda f: f.write(md), binary=False)
  rf.write_csv(os.path.join(out, 'results.csv'), rf.csv_rows(summary, paper), rf.CSV_FIELDS)
  rf.write_csv(os.path.join(out, 'paired.csv'), rf.paired_rows(summary), rf.PAIRED_FIELDS)
  written = ['results.md', 'results.csv', 'paired.csv']
  if make_plots:
    written += [os.path.join('plots', p) for p in write_plots(out, summary, runs)]
  return Report(summary, md, written)


def write_plots(out: str, s: rt.Summary, runs: Sequence[dict]) -> list[str]:
  """The figures of the summary `s` of `runs` under `out`/plots; their file names."""
  try:
    from gps_jax import mask_plots, plots
  except ImportError as e:  # the tables are written already
    raise UserError(
      f'the plots need matplotlib ({e}): pip install matplotlib, or --no-plots'
    ) from None

  pdir = os.path.join(out, 'plots')
  names = []
  values = {key: (c.mean, c.std) for key, c in s.cells.items()}
  plots.plot_per_task(s.tasks, s.methods, values, os.path.join(pdir, 'per_task.png'))
  names.append('per_task.png')
  points = [
    {'method': m, 'share_pct': mm.share_pct, 'mean': mm.mean, 'std': mm.std}
    for m, mm in s.means.items()
    if mm.complete and mm.mean is not None
  ]
  plots.plot_accuracy_vs_share(points, os.path.join(pdir, 'accuracy_vs_share.png'))
  names.append('accuracy_vs_share.png')
  ref = [r for r in runs if r['method'] == s.reference]
  if ref:
    r = ref[0]
    path = os.path.join(r['workdir'], 'mask_stats.json')
    if os.path.isfile(path):
      with open(path) as f:
        stats = json.load(f)
      name = f'mask_{r["task"]}_{r["method"]}_seed_{r["seed"]}.png'
      mask_plots.plot_mask_shares(
        stats, os.path.join(pdir, name), title=f'{r["task"]} / {r["method"]} / seed {r["seed"]}'
      )
      names.append(name)
  k_points = k_series(runs)
  if k_points:  # one line per task and method; with several tasks also their mean
    plots.plot_accuracy_vs_k(k_points, os.path.join(pdir, 'accuracy_vs_k.png'))
    names.append('accuracy_vs_k.png')
    mean_points = k_mean_series(runs) if len({r['task'] for r in runs}) > 1 else []
    if mean_points:
      plots.plot_accuracy_vs_k(mean_points, os.path.join(pdir, 'accuracy_vs_k_mean.png'))
      names.append('accuracy_vs_k_mean.png')
  return names


def k_series(runs: Sequence[dict]) -> list[dict]:
  """accuracy-vs-K points of every (task, method) that ran with two or more K (the
  method of the run, whatever its folder: --ks puts each K in its own)."""
  by: dict[tuple[str, str], dict[int, list[float]]] = {}
  for r in runs:
    if r.get('k') is not None:
      by.setdefault((r['task'], r.get('run_method', r['method'])), {}).setdefault(
        r['k'], []
      ).append(100.0 * r['test_accuracy'])
  points = []
  for (task, method), ks in by.items():
    if len(ks) < 2:
      continue
    for k, accs in ks.items():
      mean, std = rt.mean_std(accs)
      points.append({'series': f'{task} / {method}', 'k': k, 'mean': mean, 'std': std})
  return points


def k_mean_series(runs: Sequence[dict]) -> list[dict]:
  """accuracy-vs-K points of each method averaged over the tasks: per seed the mean over
  the tasks that ran at that K, then mean ± std over the seeds that ran every task."""
  tasks = {r['task'] for r in runs}
  by: dict[tuple[str, int], dict[int, dict[str, float]]] = {}
  for r in runs:
    if r.get('k') is not None:
      key = (r.get('run_method', r['method']), r['k'])
      by.setdefault(key, {}).setdefault(r['seed'], {})[r['task']] = 100.0 * r['test_accuracy']
  points = []
  for (method, k), seeds in by.items():
    per_seed = [np.mean(list(t.values())) for t in seeds.values() if set(t) == tasks]
    if per_seed and sum(m == method for m, _ in by) > 1:
      mean, std = rt.mean_std(per_seed)
      points.append(
        {'series': f'{method} (mean of {len(tasks)} tasks)', 'k': k, 'mean': mean, 'std': std}
      )
  return points
