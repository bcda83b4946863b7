"""Runs a benchmark grid (tasks × methods × seeds) and tabulates it beside the GPS paper.

  python tools/reproduce.py --suite=mini_vtab --options=tiny --out=runs/repro_mini
  python tools/reproduce.py --suite=vtab --out=runs/vtab --seeds=42,43,44 \\
      --set model.checkpoint=/ckpt/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz \\
      --set data.data_dir=~/tensorflow_datasets
  python tools/reproduce.py --suite=vtab --out=runs/vtab --report-only

Every cell runs in its own workdir, ``<out>/<task>/<method>/seed_<s>``, exactly as

  python -m gps_jax.main --config=<config file>:<task>[,options] --workdir=<that dir> \\
      --config.method=<method> --config.seed=<s> [--config.<key>=<value> ...]

would run it (``--dry-run`` prints those commands), but in this one process: gps_jax and
TensorFlow are imported once, and a config's upstream stage (the offline suites' backbone)
is trained or found in its cache once per task. A cell whose ``results.json`` exists is
finished and skipped; a cell that was interrupted resumes from the checkpoints in its
``train_state/`` (``experiment.run`` does that by itself in the same workdir).

Afterwards (and with ``--report-only``, from the workdirs alone) it writes:

* ``<out>/results.md`` — per task and the mean over tasks, every method: test accuracy
  after the last epoch, mean ± std over seeds, the paper's number beside it where the
  suite is a paper benchmark (the paper's is the best test accuracy over epochs); the
  trainable counts and shares; gps against each method paired over task × seed (wins /
  ties / losses, mean difference, 95 % t-interval);
* ``<out>/results.csv`` (per task × method, plus the 'mean' rows), ``<out>/paired.csv``;
* ``<out>/plots/``: ``per_task.png``, ``accuracy_vs_share.png``, the mask of one gps
  run (``mask_<task>_gps_seed_<s>.png``) and, when a method ran with several K on one
  task, ``accuracy_vs_k.png`` (and with several tasks ``accuracy_vs_k_mean.png``, each
  method's mean over the tasks).

``--ks 1,4,16`` adds a K dimension: each selecting method (gps, random, magnitude) runs at
every K in ``<out>/<task>/<method>_k<K>/seed_<s>`` (``--config.gps.k=<K>``), the others
once; ``--reference gps_k1`` then pairs against K = 1.

Bad input (an unknown suite, task or method, a bad seed or override) is one ``error:`` line
and exit status 1.

This file is the command line; tools/reproduce_grid.py builds the grid (suites, tasks ×
methods × seeds, each cell's config and command), tools/reproduce_runner.py runs it and
tools/reproduce_report.py writes and prints the report.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

TOOLS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TOOLS)
if REPO not in sys.path:  # `python tools/reproduce.py` from anywhere
  sys.path.insert(0, REPO)
if TOOLS not in sys.path:  # the reproduce_* modules beside this file, when it is loaded by path
  sys.path.append(TOOLS)

import reproduce_grid as grid_lib
from reproduce_grid import DEFAULT_METHODS, SUITES, make_grid
from reproduce_report import report
from reproduce_runner import compile_cache, run_grid

from gps_jax import errors
from gps_jax.errors import UserError

# Names the tests use on this module besides main and build_parser (tests/repro_env.py).
task_config = grid_lib.task_config
cell_config = grid_lib.cell_config
_display_path = grid_lib.display_path


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line through errors.run, not usage + message
    raise UserError(f'{message} (see --help)')


def build_parser() -> argparse.ArgumentParser:
  p = _Parser(
    prog='tools/reproduce.py',
    description='Runs tasks × methods × seeds of a benchmark config (one workdir per cell,\n'
    'finished cells skipped, interrupted ones resumed) and writes results.md, results.csv,\n'
    'paired.csv and plots/ under --out.',
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog='Each cell equals:\n  python -m gps_jax.main --config=FILE:TASK[,OPTIONS] '
    '--workdir=OUT/TASK/METHOD/seed_S \\\n    --config.method=METHOD --config.seed=S '
    '[--config.KEY=VALUE ...]',
  )
  which = p.add_mutually_exclusive_group(required=True)
  which.add_argument('--suite', help=f'one of {", ".join(SUITES)}')
  which.add_argument(
    '--config-file',
    metavar='PATH',
    help='any config module with TASKS (task names) and get_config(arg), arg = "task[,options]"',
  )
  p.add_argument('--out', required=True, metavar='DIR', help='the grid folder')
  p.add_argument(
    '--options',
    default='',
    metavar='OPTS',
    help='comma list appended to each task argument, e.g. tiny,scratch (mini_vtab), val, '
    'folder (vtab), tfds, swin_b (fgvc)',
  )
  p.add_argument('--tasks', default='', metavar='T1,T2', help='only these tasks (default: all)')
  p.add_argument(
    '--methods',
    default='',
    metavar='M1,M2',
    help='methods (default: those of ' + ', '.join(DEFAULT_METHODS) + ' that gps_jax has)',
  )
  p.add_argument(
    '--seeds', default='', metavar='S1,S2', help="seeds (default: the config's seed, 42)"
  )
  p.add_argument(
    '--ks',
    default='',
    metavar='K1,K2',
    help='also a K dimension: every selecting method (gps, random, magnitude) runs at each K, '
    'in <method>_k<K> folders (plots/accuracy_vs_k.png); other methods run once',
  )
  p.add_argument(
    '--set',
    action='append',
    default=[],
    metavar='KEY=VALUE',
    help='a config override, as --config.KEY=VALUE of gps_jax.main (repeatable), e.g. '
    'model.checkpoint=/path/to/B_16.npz',
  )
  p.add_argument(
    '--config-overrides',
    default='',
    metavar='"K=V ..."',
    help='overrides in one string, space-separated: "model.checkpoint=/x data.data_dir=/y" '
    '(a --config. prefix is allowed)',
  )
  p.add_argument(
    '--reference',
    default='gps',
    metavar='METHOD',
    help='the method paired against every other one (default: gps)',
  )
  p.add_argument(
    '--paper',
    default='auto',
    choices=('auto', 'none', 'vtab', 'fgvc'),
    help="the paper's table to show beside ours (auto: by suite; none for --config-file)",
  )
  p.add_argument(
    '--dry-run',
    action='store_true',
    help='print the equivalent gps_jax.main commands only (tasks, methods and override keys '
    'are checked; files such as model.checkpoint are not)',
  )
  p.add_argument(
    '--report-only', action='store_true', help='only rebuild the tables and plots from --out'
  )
  p.add_argument(
    '--compile-cache',
    default='',
    metavar='DIR',
    help="keep XLA's compiled programs in DIR (JAX's persistent compilation cache, every "
    'compile however short): cells of the same shapes compile once, across runs of the tool '
    "too. Default: JAX's own setting ($JAX_COMPILATION_CACHE_DIR, usually none)",
  )
  p.add_argument('--no-plots', action='store_true', help='tables only')
  p.add_argument('--verbose', action='store_true', help='the traceback of a user error too')
  return p


def _main(argv: Sequence[str] | None, state: dict) -> None:
  args = build_parser().parse_args(argv)
  state['verbose'] = args.verbose
  if args.dry_run and args.report_only:
    raise UserError('--dry-run and --report-only exclude each other')
  grid = make_grid(args)
  state['grid'] = grid
  if not args.report_only:
    start = time.perf_counter()
    with compile_cache(args.compile_cache if not args.dry_run else ''):
      outcome = run_grid(grid, dry_run=args.dry_run)
    state['outcome'] = outcome
    if args.dry_run:
      return
    minutes = (time.perf_counter() - start) / 60
    print(
      f'[reproduce] {len(outcome.ran)} cell(s) run in {minutes:.1f} min (wall), '
      f'{len(outcome.skipped)} already finished'
    )
  state['summary'] = report(grid, args, make_plots=not args.no_plots)


def main(argv: Sequence[str] | None = None, state: dict | None = None) -> int:
  """The command line; returns the exit status (0, or 1 after one error line).

  `state` (a dict), when given, receives 'grid', 'outcome' (the cells run / skipped) and
  'summary' for the caller to inspect (the tests do).
  """
  state = {} if state is None else state
  argv = list(sys.argv[1:] if argv is None else argv)
  return errors.run(lambda: _main(argv, state), verbose='--verbose' in argv)


if __name__ == '__main__':
  sys.exit(main())
