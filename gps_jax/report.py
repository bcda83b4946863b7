"""``python -m gps_jax.report WORKDIR``: a run, or a comparison of runs, as PNG plots and one
markdown summary.

WORKDIR is what ``python -m gps_jax.main`` wrote: one run (``results.json``,
``metrics.jsonl``, ``mask_stats.json``), or a comparison (``--config.compare_methods``
and / or several seeds: one such run directory per method and seed below it). Written to
``WORKDIR/report`` (``--out`` elsewhere):

* ``curves.png`` — training loss, training and evaluation accuracy against the step, one
  line per run (`gps_jax.plots.plot_curves`);
* ``mask_<run>.png`` — for each run that selected entries (a K), the trainable share per
  block and per kind of layer (`plot_mask_shares`);
* ``accuracy_vs_share.png`` — with several methods, test accuracy against the trainable
  share (mean and std over seeds; `plot_accuracy_vs_share`);
* ``summary.md`` — a table of the runs (method, data set, K, trainable share, accuracies,
  times) and the figures.

Nothing is recomputed: the numbers are the run's own files.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Sequence

from gps_jax import errors
from gps_jax import files
from gps_jax import metrics
from gps_jax import mask_plots
from gps_jax import plots

RESULTS = 'results.json'


def find_runs(workdir: str) -> list[str]:
  """The run directories of `workdir`: itself when it holds a run, else those below it
  (method / seed_N, two levels at most), in name order."""
  if os.path.isfile(os.path.join(workdir, RESULTS)):
    return [workdir]
  runs = []
  for root, dirs, names in os.walk(workdir):
    depth = os.path.relpath(root, workdir).count(os.sep) + 1
    dirs[:] = sorted(d for d in dirs if depth < 2 and d not in ('report', 'checkpoint'))
    if root != workdir and RESULTS in names:
      runs.append(root)
  if not runs:
    raise errors.UserError(f'{workdir}: no {RESULTS} in it or its method / seed folders')
  return sorted(runs)


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise errors.UserError(f'{path}: cannot read it ({e})') from None


def _label(workdir: str, run: str) -> str:
  rel = os.path.relpath(run, workdir)
  return '' if rel == '.' else rel.replace(os.sep, '/')


def _pct(x) -> str:
  return '–' if x is None else f'{100 * x:.2f}'


def _row(label: str, r: dict) -> str:
  k = r.get('k')
  cells = [
    label or r.get('method', ''),
    r.get('method', ''),
    r.get('dataset', ''),
    '–' if k is None else str(k),
    f'{r.get("trainable_without_head", 0):,}',
    f'{r.get("share_without_head_pct", 0.0):.3f}',
    _pct(r.get('test_accuracy')),
    _pct(r.get('best_val_accuracy')),
    _pct(r.get('final_val_accuracy')),
    f'{r.get("selection_seconds") or 0.0:.1f}',
    f'{r.get("train_seconds") or 0.0:.1f}',
  ]
  return '| ' + ' | '.join(cells) + ' |'


COLUMNS = ('run', 'method', 'data set', 'K', 'backbone trainable', 'backbone share %', 'test %',
           'best val %', 'final val %', 'selection s', 'training s')  # fmt: skip


def share_points(results: Sequence[dict]) -> list[dict]:
  """Per method: the trainable share (head included, %) and the test accuracy's mean and
  std (%) over its runs (seeds)."""
  by_method: dict[str, list[dict]] = {}
  for r in results:
    if r.get('test_accuracy') is not None:
      by_method.setdefault(r['method'], []).append(r)
  points = []
  for method, rs in by_method.items():
    accs = [100 * r['test_accuracy'] for r in rs]
    points.append({
      'method': method,
      'share_pct': statistics.mean(r['share_pct'] for r in rs),
      'mean': statistics.mean(accs),
      'std': statistics.stdev(accs) if len(accs) > 1 else None,
    })  # fmt: skip
  return points


def report(workdir: str, out: str = '') -> list[str]:
  """Writes the figures and summary.md of `workdir` to `out` (default WORKDIR/report);
  returns the paths written."""
  workdir = os.path.abspath(workdir)
  if not os.path.isdir(workdir):
    raise errors.UserError(f'{workdir}: no such directory')
  out = os.path.abspath(out or os.path.join(workdir, 'report'))
  runs = find_runs(workdir)
  labels = {run: _label(workdir, run) for run in runs}
  results = {run: _read_json(os.path.join(run, RESULTS)) for run in runs}
  written, figures = [], []
  logged = [run for run in runs if os.path.isfile(os.path.join(run, metrics.FILENAME))]
  name_of = {run: labels[run] or results[run].get('method', '') for run in logged}
  if logged:
    path = plots.plot_curves(
      {name_of[run]: metrics.read(run) for run in logged},
      os.path.join(out, 'curves.png'),
      groups={name_of[run]: results[run].get('method', '') for run in logged},
    )
    figures.append(('Curves', path))
  for run in runs:
    stats_path = os.path.join(run, 'mask_stats.json')
    if results[run].get('k') is not None and os.path.isfile(stats_path):
      name = 'mask_' + (labels[run].replace('/', '_') or results[run]['method']) + '.png'
      title = f'{labels[run] or results[run]["method"]}: trainable share'
      path = mask_plots.plot_mask_shares(_read_json(stats_path), os.path.join(out, name), title)
      figures.append((f'Selected share: {labels[run] or results[run]["method"]}', path))
  points = share_points(list(results.values()))
  if len(points) > 1:
    path = plots.plot_accuracy_vs_share(
      points, os.path.join(out, 'accuracy_vs_share.png'), ylabel='test accuracy (%)'
    )
    figures.append(('Accuracy against trainable share', path))
  written += [p for _, p in figures]
  lines = [
    f'# {os.path.basename(workdir)}',
    '',
    f'{len(runs)} run(s) in `{workdir}`; test accuracy after the last step (nothing chosen '
    'on test); shares of the backbone without the head.',
    '',
    '| ' + ' | '.join(COLUMNS) + ' |',
    '|' + '---|' * 3 + '---:|' * (len(COLUMNS) - 3),
    *[_row(labels[run], results[run]) for run in runs],
  ]
  for title, path in figures:
    lines += ['', f'## {title}', '', f'![{title}]({os.path.relpath(path, out)})']
  os.makedirs(out, exist_ok=True)
  summary = os.path.join(out, 'summary.md')
  files.write_atomic(summary, lambda f: f.write('\n'.join(lines) + '\n'), binary=False)
  return [*written, summary]


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(
    prog='python -m gps_jax.report', description=__doc__.split('\n\n')[0].replace('``', '')
  )
  p.add_argument('workdir', help='a run or comparison directory of python -m gps_jax.main')
  p.add_argument('--out', default='', help='where to write (default: WORKDIR/report)')
  args = p.parse_args(argv)

  def run():
    for path in report(args.workdir, args.out):
      print(path)

  return errors.run(run)


if __name__ == '__main__':
  sys.exit(main())
