"""Runs a config: the optional upstream stage, then one or several methods.

With `config.compare_methods` set, every listed method runs on the same
backbone and data (each in `workdir/<method>`, with its entry of
`config.method_overrides` applied); with `config.compare_seeds`, each method
runs once per seed (in `.../seed_<s>`). One comparison table (mean±std over
seeds) is printed and saved as `comparison.txt` and `comparison.json`.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

from gps_jax import config_check
from gps_jax import experiment
from gps_jax import files
from gps_jax import methods as methods_lib
from gps_jax import upstream as upstream_lib
from gps_jax.errors import UserError
from gps_jax.metrics import say


def _merge(node: ml_collections.ConfigDict, overrides, where: str) -> None:
  for key, value in overrides.items():
    if key not in node:
      raise UserError(f'{where}.{key} is not a config key')
    if isinstance(node[key], ml_collections.ConfigDict):
      _merge(node[key], value, f'{where}.{key}')
    else:
      node[key] = value


def method_config(config: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
  """A copy of `config` for `method`, with `config.method_overrides[method]` merged in.

  An override is a nested dict in the shape of the config, e.g.
  `{'full': {'optim': {'lr': 1e-3}}}`.
  """
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.method = method
    overrides = config.method_overrides.get(method, {})
    _merge(cfg, overrides, f'config.method_overrides.{method}')
  return cfg


def _mean_std(values: list[float]) -> str:
  v = np.asarray(values, np.float64) * 100
  return f'{v.mean():.2f}' if v.size == 1 else f'{v.mean():.2f}±{v.std(ddof=1):.2f}'


def _test_metrics(row: dict) -> list[str]:
  """The task's metrics of a results row, headline first (accuracy; dice, iou)."""
  metric = row.get('metric', 'accuracy')
  others = [
    k[len('test_') :]
    for k in row
    if k.startswith('test_') and k != f'test_{metric}' and not k.endswith(('_raw', '_ema'))
  ]
  return [metric, *others]


def format_comparison(rows: list[dict]) -> str:
  """One line per method; the test metrics (accuracy, or mDice and mIoU) and the best
  validation value of the headline metric are mean±std over seeds when several ran."""
  by_method: dict[str, list[dict]] = {}
  for r in rows:
    by_method.setdefault(r['method'], []).append(r)
  names = _test_metrics(rows[0])
  short = {'accuracy': 'acc'}
  lines = [
    f'{"method":<10}{"seeds":>6}'
    + ''.join(f'{"test " + short.get(m, m) + " %":>14}' for m in names)
    + f'{"best val %":>14}{"trainable":>11}{"share %":>9}{"select s":>10}{"train s":>9}'
  ]
  for method, rs in by_method.items():
    key = f'best_val_{names[0]}'
    val = [r[key] for r in rs if r.get(key) is not None]
    r0 = rs[0]
    lines.append(
      f'{method:<10}{len(rs):>6}'
      + ''.join(f'{_mean_std([r["test_" + m] for r in rs]):>14}' for m in names)
      + f'{(_mean_std(val) if val else "-"):>14}'
      f'{r0["trainable_without_head"]:>11,}{r0["share_without_head_pct"]:>9.3f}'
      f'{np.mean([r["selection_seconds"] for r in rs]):>10.1f}'
      f'{np.mean([r["train_seconds"] for r in rs]):>9.1f}'
    )
  return '\n'.join(lines)


def run_config(
  config: ml_collections.ConfigDict, workdir: str
) -> list[dict]:
  """Runs everything `config` asks for; returns the results of every run."""
  config = config.copy_and_resolve_references()
  methods = tuple(config.compare_methods) or (config.method,)
  seeds = tuple(config.compare_seeds) or (config.seed,)
  # Fail on a bad value before hours of upstream training: the config, then each method's.
  config_check.validate(config)
  for method in methods:
    cfg = method_config(config, method)
    if method in config.method_overrides:
      config_check.validate(cfg, what=f'config.method_overrides.{method}')
    methods_lib.rules(cfg)
  if config.upstream:
    path = upstream_lib.ensure_upstream(config.upstream, workdir)
    with config.unlocked():
      config.model.checkpoint = path
  rows = []
  for method in methods:
    for seed in seeds:
      sub = os.path.join(workdir, method) if len(methods) > 1 else workdir
      if len(seeds) > 1:
        sub = os.path.join(sub, f'seed_{seed}')
      cfg = method_config(config, method)
      cfg.seed = seed
      res, _ = experiment.run(cfg, sub)
      res['seed'] = seed
      rows.append(res)
  if len(rows) > 1 and jax.process_index() == 0:
    table = format_comparison(rows)
    say('\n' + table)
    files.write_json(
      os.path.join(workdir, 'comparison.json'),
      [{k: v for k, v in r.items() if k != 'history'} for r in rows],
    )
    files.write_atomic(
      os.path.join(workdir, 'comparison.txt'), lambda f: f.write(table + '\n'), binary=False
    )
  return rows
