"""The result figures of gps_jax (matplotlib, Agg backend, PNG): curves, K, shares, per task.

* `plot_curves` / `curves_figure` — from runs' ``metrics.jsonl`` records: training loss,
  and training and evaluation accuracy, against the step, one line per run (and split).
* `plot_accuracy_vs_k` — test accuracy against K (``gps.k``), one line per task.
* `plot_accuracy_vs_share` — accuracy against the trainable share, one point per method,
  log x, with error bars (std over seeds).
* `plot_per_task` — grouped bars per task, one bar per method, with error bars.

The figure of a run's mask (share per block and kind of layer) is `gps_jax.mask_plots`.
Figures have a fixed size in inches at `DPI` (no tight bounding box), so a PNG's pixel
size is known in advance: `figure_size_px`; `save_figure` writes one.

Pure functions of their inputs; matplotlib is imported here only (the figures never need
a display). `gps_jax.results_report` writes them for a grid of runs (``tools/reproduce.py``),
`gps_jax.report` for a run or a comparison directory.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence

import matplotlib
import matplotlib.lines
import matplotlib.ticker

matplotlib.use('Agg')  # before anything imports pyplot; a no-op when it already is Agg

from matplotlib.figure import Figure


DPI = 100


def figure_size_px(figsize: tuple[float, float], dpi: int = DPI) -> tuple[int, int]:
  """(width, height) in pixels of a figure of `figsize` inches saved at `dpi`."""
  return round(figsize[0] * dpi), round(figsize[1] * dpi)


def save_figure(fig: Figure, path: str) -> str:
  """Writes `fig` as a PNG at `DPI` to `path` (its folder made); returns `path`."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=DPI, format='png')
  return path


CURVES_FIGSIZE = (12.0, 4.5)


def _value(v) -> float:
  return float(v)  # metrics.jsonl keeps NaN / inf as the strings 'nan' / 'inf'


def plot_curves(
  runs: Mapping[str, Sequence[Mapping]],
  path: str,
  title: str = '',
  groups: Mapping[str, str] | None = None,
) -> str:
  """Training loss (left) and accuracy (%, right) against the step, saved to `path`.

  `runs`: {label: the run's metrics.jsonl records}. Left: the 'train' records' loss.
  Right: their training accuracy (dashed) and every split of the 'eval' and 'final'
  records (val, val_ema, test, ...), one marker per split. A run's colour is that of its
  group (`groups`: {label: group}, e.g. the method of each seed's run; default: the
  label), and the legends name the groups and the splits, not every run. Returns `path`.
  """
  return save_figure(curves_figure(runs, title, groups), path)


def png_bytes(fig: Figure) -> bytes:
  """`fig` as PNG bytes (at `DPI`), for a notebook's display instead of a file."""
  buf = io.BytesIO()
  fig.savefig(buf, dpi=DPI, format='png')
  return buf.getvalue()


def curves_figure(
  runs: Mapping[str, Sequence[Mapping]],
  title: str = '',
  groups: Mapping[str, str] | None = None,
) -> Figure:
  """The figure of `plot_curves`, not saved (`gps_jax.notebook.LiveCurves` redraws it)."""
  fig = Figure(figsize=CURVES_FIGSIZE, dpi=DPI)
  ax_l, ax_a = fig.subplots(1, 2)
  colors = matplotlib.colormaps['tab10']
  groups = {label: (groups or {}).get(label, label) for label in runs}
  color_of = {g: colors(i % 10) for i, g in enumerate(dict.fromkeys(groups.values()))}
  markers: dict[str, str] = {}
  for label, records in runs.items():
    color = color_of[groups[label]]
    train = [r for r in records if r.get('kind') == 'train']
    steps = [r['step'] for r in train]
    if train:
      ax_l.plot(steps, [_value(r['loss']) for r in train], color=color)
    if train and 'accuracy' in train[0]:
      acc = [100 * _value(r['accuracy']) for r in train]
      ax_a.plot(steps, acc, color=color, linestyle='--', alpha=0.5)
    evals = [r for r in records if r.get('kind') in ('eval', 'final')]
    for split in dict.fromkeys(k for r in evals for k in r if k not in ('kind', 'step', 'time')):
      marker = markers.setdefault(split, 'osD^v<>p'[len(markers) % 8])
      pts = sorted({r['step']: 100 * _value(r[split]) for r in evals if split in r}.items())
      ax_a.plot([p[0] for p in pts], [p[1] for p in pts], color=color, marker=marker)
  handles = [
    matplotlib.lines.Line2D([], [], color=c, label=g or 'run') for g, c in color_of.items()
  ]
  ax_l.legend(handles=handles, fontsize=8)
  split_handles = [matplotlib.lines.Line2D([], [], color='0.3', linestyle='--', label='train')]
  split_handles += [
    matplotlib.lines.Line2D([], [], color='0.3', marker=m, label=s) for s, m in markers.items()
  ]
  ax_a.legend(handles=split_handles, fontsize=8)
  for ax, name in ((ax_l, 'training loss'), (ax_a, 'accuracy (%)')):
    ax.set_xlabel('step')
    ax.set_ylabel(name)
    ax.grid(alpha=0.3)
  ax_l.set_title('loss', fontsize=10)
  ax_a.set_title('accuracy: training (dashed) and evaluations', fontsize=10)
  if title:
    fig.suptitle(title, fontsize=11)
  fig.tight_layout()
  return fig


K_FIGSIZE = (7.0, 4.5)


def plot_accuracy_vs_k(points: Sequence[Mapping], path: str, title: str = '') -> str:
  """Test accuracy (%) against K, one line per series, with error bars.

  `points`: dicts with 'series' (e.g. the task), 'k', 'mean' and optionally 'std'
  (None or absent: no bar). Returns `path`.
  """
  fig = Figure(figsize=K_FIGSIZE, dpi=DPI)
  ax = fig.subplots()
  series: dict[str, list] = {}
  for p in points:
    series.setdefault(str(p['series']), []).append(p)
  for name, ps in series.items():
    ps = sorted(ps, key=lambda p: p['k'])
    ax.errorbar(
      [p['k'] for p in ps],
      [p['mean'] for p in ps],
      yerr=[p.get('std') or 0.0 for p in ps],
      marker='o',
      capsize=3,
      label=name,
    )
  ks = sorted({p['k'] for p in points})
  if ks:
    ax.set_xticks(ks)
  ax.set_xlabel('K (inputs kept per neuron)')
  ax.set_ylabel('test accuracy (%)')
  ax.grid(alpha=0.3)
  if series:
    ax.legend(fontsize=8)
  ax.set_title(title or 'accuracy vs K', fontsize=10)
  fig.tight_layout()
  return save_figure(fig, path)


SHARE_FIGSIZE = (7.5, 5.0)


def plot_accuracy_vs_share(
  points: Sequence[Mapping],
  path: str,
  title: str = '',
  ylabel: str = 'test accuracy (%), mean over tasks',
) -> str:
  """Accuracy (%) against the trainable share (%, log x), one labelled point per method.

  `points`: dicts with 'method', 'share_pct' (> 0), 'mean' and optionally 'std'.
  Points with a share <= 0 cannot sit on a log axis and are left out. Returns `path`.
  """
  fig = Figure(figsize=SHARE_FIGSIZE, dpi=DPI)
  ax = fig.subplots()
  colors = matplotlib.colormaps['tab10']
  shown = [p for p in points if p['share_pct'] > 0 and p.get('mean') is not None]
  for i, p in enumerate(shown):
    ax.errorbar(
      [p['share_pct']],
      [p['mean']],
      yerr=[p.get('std') or 0.0],
      marker='o',
      markersize=7,
      capsize=4,
      color=colors(i % 10),
      label=p['method'],
    )
    # Methods with the same share (gps and random select as many entries) would print
    # their names on top of each other: each further one at that share goes 13 pt lower.
    same = sum(abs(math.log10(q['share_pct'] / p['share_pct'])) < 0.02 for q in shown[:i])
    ax.annotate(
      p['method'],
      (p['share_pct'], p['mean']),
      textcoords='offset points',
      xytext=(6, 6 - 13 * same),
      fontsize=9,
    )
  ax.set_xscale('log')
  ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f'{v:g}'))
  if shown:
    lo = min(p['share_pct'] for p in shown)
    hi = max(p['share_pct'] for p in shown)
    ax.set_xlim(lo / 2.5, hi * 2.5)
  ax.set_xlabel('trainable share of the model, head included (%, log scale)')
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3, which='both')
  ax.set_title(title or 'accuracy vs trainable share (error bars: std over seeds)', fontsize=10)
  fig.tight_layout()
  return save_figure(fig, path)


def per_task_figsize(num_tasks: int, num_methods: int) -> tuple[float, float]:
  """The size (inches) of `plot_per_task`'s figure: wider with more bars."""
  width = min(40.0, max(8.0, 2.0 + 0.14 * max(num_tasks, 1) * max(num_methods, 1)))
  return (round(width, 1), 5.0)


def plot_per_task(
  tasks: Sequence[str],
  methods: Sequence[str],
  values: Mapping[tuple[str, str], tuple[float, float | None]],
  path: str,
  title: str = '',
) -> str:
  """Grouped bars: per task, one bar per method at its mean accuracy (%), error bar = std.

  `values[(task, method)] = (mean, std or None)`; a missing pair leaves a gap.
  Returns `path`.
  """
  fig = Figure(figsize=per_task_figsize(len(tasks), len(methods)), dpi=DPI)
  ax = fig.subplots()
  colors = matplotlib.colormaps['tab10']
  n = max(len(methods), 1)
  width = 0.8 / n
  for j, m in enumerate(methods):
    xs, ys, es = [], [], []
    for i, t in enumerate(tasks):
      if (t, m) in values:
        mean, std = values[(t, m)]
        xs.append(i - 0.4 + width * (j + 0.5))
        ys.append(mean)
        es.append(std or 0.0)
    ax.bar(xs, ys, width=width, yerr=es, capsize=2, color=colors(j % 10), label=m)
  ax.set_xticks(range(len(tasks)))
  many = len(tasks) > 4
  ax.set_xticklabels(
    tasks, rotation=30 if many else 0, ha='right' if many else 'center', fontsize=9
  )
  ax.set_xlim(-0.6, len(tasks) - 0.4)
  ax.set_ylabel('test accuracy (%)')
  top = max([v[0] + (v[1] or 0.0) for v in values.values()] + [0.0])
  ax.set_ylim(0, min(100.0, math.ceil(top / 10 + 0.5) * 10) if top > 0 else 1.0)
  ax.grid(axis='y', alpha=0.3)
  # Outside the axes, right: never over a bar (tight_layout makes room for it).
  ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.005, 1.0), borderaxespad=0.0)
  ax.set_title(title or 'test accuracy per task (error bars: std over seeds)', fontsize=10)
  fig.tight_layout()
  return save_figure(fig, path)
