"""tools/reproduce.py loaded as a module, the tiny grid of tests/tiny_suite_config.py and fake
finished runs: shared by tests/test_reproduce_grid.py, test_reproduce_cli.py and
test_results_tables.py (tests/ is on sys.path under pytest)."""

import csv
import importlib.util
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'tiny_suite_config.py')


def _load(name, path):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


reproduce = _load('reproduce_tool', os.path.join(REPO, 'tools', 'reproduce.py'))
GRID = ['--config-file', CONFIG, '--methods', 'gps,linear', '--seeds', '1,2']
TASKS, METHODS, SEEDS = ('digits_a', 'digits_b'), ('gps', 'linear'), (1, 2)


def _csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def _fake_run(out, task, method, seed, acc, share, k=None, stats=None):
  d = out / task / method / f'seed_{seed}'
  d.mkdir(parents=True)
  (d / 'results.json').write_text(
    json.dumps(
      {
        'method': method,
        'test_accuracy': acc,
        'trainable': 100,
        'trainable_without_head': 60,
        'share_pct': share,
        'share_without_head_pct': share / 2,
        'k': k,
        'history': [1, 2, 3],
      }
    )
  )
  if stats is not None:
    (d / 'mask_stats.json').write_text(json.dumps(stats))
