"""Runs a config: the optional upstream stage, then one or several methods.

With `config.compare_methods` set, every listed method runs on the same
backbone and data (each in `workdir/<method>`, with its entry of
`config.method_overrides` applied) and one comparison table is printed and
saved as `comparison.json`.
"""

from __future__ import annotations

import json
import os
from typing import Callable

import ml_collections

from gps_jax import experiment
from gps_jax import upstream as upstream_lib


def method_config(config: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
  """A copy of `config` for `method`, with its `method_overrides` ('a.b' → value)."""
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.method = method
    for key, value in (config.get('method_overrides') or {}).get(method, {}).items():
      *parents, leaf = key.split('.')
      node = cfg
      for p in parents:
        node = node[p]
      if leaf not in node:
        raise KeyError(f'config.method_overrides.{method}: {key!r} is not a config key')
      node[leaf] = value
  return cfg


def format_comparison(rows: list[dict]) -> str:
  lines = [f'{"method":<10}{"test acc":>10}{"best val":>10}{"trainable":>12}'
           f'{"share %":>9}{"select s":>10}{"train s":>9}']
  for r in rows:
    val = r.get('best_val_accuracy')
    lines.append(f'{r["method"]:<10}{100 * r["test_accuracy"]:>10.2f}'
                 f'{(100 * val if val is not None else float("nan")):>10.2f}'
                 f'{r["trainable_without_head"]:>12,}{r["share_without_head_pct"]:>9.3f}'
                 f'{r["selection_seconds"]:>10.1f}{r["train_seconds"]:>9.1f}')
  return '\n'.join(lines)


def run_config(config: ml_collections.ConfigDict, workdir: str,
               printer: Callable[[str], None] = print) -> list[dict]:
  """Runs everything `config` asks for; returns the results of each method."""
  config = config.copy_and_resolve_references()
  methods = tuple(config.get('compare_methods') or ()) or (config.method,)
  for method in methods:  # fail on a bad method before hours of upstream training
    experiment.method_rules(method_config(config, method))
  if config.get('upstream'):
    path = upstream_lib.ensure_upstream(config.upstream, workdir, printer)
    with config.unlocked():
      config.model.checkpoint = path
  rows = []
  for method in methods:
    sub = os.path.join(workdir, method) if len(methods) > 1 else workdir
    res = experiment.run(method_config(config, method), sub, printer)
    res.pop('params')
    rows.append(res)
  if len(methods) > 1:
    table = format_comparison(rows)
    printer('\n' + table)
    with open(os.path.join(workdir, 'comparison.json'), 'w') as f:
      json.dump([{k: v for k, v in r.items() if k != 'history'} for r in rows], f, indent=1)
    with open(os.path.join(workdir, 'comparison.txt'), 'w') as f:
      f.write(table + '\n')
  return rows
