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
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import os
import shlex
import sys
import time
from collections.abc import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # `python tools/reproduce.py` from anywhere
  sys.path.insert(0, REPO)

from gps_jax import errors
from gps_jax import results_format as rf
from gps_jax import results_report
from gps_jax import results_table as rt
from gps_jax.errors import UserError

# TensorFlow (imported by the data modules the config files load) comes in `make_grid`,
# through gps_jax.quiet: --help and bad arguments answer without its seconds of start-up.


@dataclasses.dataclass(frozen=True)
class Suite:
  """A benchmark: its config file, how a task becomes the file's argument, the paper's table."""

  name: str
  config: str  # relative to the repository root
  paper: str | None  # paper_results benchmark: 'vtab', 'fgvc' or None
  single_task: str | None = None  # a config without a task argument (cifar100)


SUITES = {
  'mini_vtab': Suite('mini_vtab', 'configs/mini_vtab.py', None),
  'vtab': Suite('vtab', 'configs/vtab.py', 'vtab'),
  'fgvc': Suite('fgvc', 'configs/fgvc.py', 'fgvc'),
  'cifar100': Suite('cifar100', 'configs/cifar100.py', None, single_task='cifar100'),
}
# The paper's methods, in the order of its tables; the default --methods are those that
# gps_jax.methods.METHODS registers.
DEFAULT_METHODS = (
  'gps',
  'full',
  'linear',
  'bitfit',
  'lora',
  'ssf',
  'adapter',
  'vpt_shallow',
  'vpt_deep',
)
BACKBONE_OPTIONS = ('swin_b', 'convnext_b')
# Set per cell by the grid; an override of them would make every cell the same run.
GRID_KEYS = ('method', 'seed', 'compare_methods', 'compare_seeds')


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


# ----------------------------------------------------------------------------- the grid


def _split(text: str) -> list[str]:
  return [x.strip() for x in text.split(',') if x.strip()]


def load_module(path: str):
  """A config file as a module (configs/ is not a package)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config file {path}: no such file')
  name = 'gps_jax_reproduce_' + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # a dataclass in the file looks its module up there
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise UserError(f'{path} has no get_config(arg)')
  return module


@dataclasses.dataclass
class Grid:
  suite: Suite
  config_path: str
  module: object
  all_tasks: list[str]
  tasks: list[str]
  methods: list[str]
  seeds: list[int] | None  # None: the config's seed
  ks: list[int] | None  # None: the config's gps.k; else each selecting method at each K
  options: list[str]
  overrides: list[tuple[str, str]]
  out: str
  paper: rf.Paper | None

  def task_arg(self, task: str) -> str:
    parts = ([] if self.suite.single_task else [task]) + self.options
    return ','.join(parts)


def suite_of(args) -> tuple[Suite, str]:
  if args.suite is not None:
    if args.suite not in SUITES:
      raise UserError(f'--suite={args.suite!r}: use one of {", ".join(SUITES)}')
    suite = SUITES[args.suite]
    return suite, os.path.join(REPO, suite.config)
  path = os.path.abspath(os.path.expanduser(args.config_file))
  return Suite(os.path.splitext(os.path.basename(path))[0], path, None), path


def tasks_of(suite: Suite, module) -> list[str]:
  """The suite's tasks: the module's TASKS (names, or a dict keyed by them), else RECIPES."""
  if suite.single_task:
    return [suite.single_task]
  for attr in ('TASKS', 'RECIPES'):
    names = getattr(module, attr, None)
    if names:
      return list(names)
  raise UserError(f'{suite.config} has no TASKS: the config module must list its task names')


def parse_overrides(items: Sequence[str], text: str) -> list[tuple[str, str]]:
  """(key, value) pairs from --set KEY=VALUE and --config-overrides "K=V ..."."""
  out = []
  for item in [*items, *shlex.split(text)]:
    raw = item
    for prefix in ('--config.', '-config.', 'config.'):
      if item.startswith(prefix):
        item = item[len(prefix) :]
        break
    key, sep, value = item.partition('=')
    if not sep or not key.strip():
      raise UserError(f'override {raw!r}: write KEY=VALUE, e.g. model.checkpoint=/path/to/file')
    key = key.strip()
    if key.split('.')[0] in GRID_KEYS:
      raise UserError(
        f'override {raw!r}: {key} is set per cell by the grid; use --methods / --seeds'
      )
    out.append((key, value))
  return out


def make_grid(args) -> Grid:
  from gps_jax import methods as methods_lib

  suite, path = suite_of(args)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config file {path}: no such file')
  from gps_jax import quiet

  quiet.import_tensorflow()  # before anything imports it: no C++ start-up lines on stderr
  module = load_module(path)
  all_tasks = tasks_of(suite, module)
  tasks = _split(args.tasks) or list(all_tasks)
  unknown = [t for t in tasks if t not in all_tasks]
  if unknown:
    raise UserError(
      f'--tasks: unknown task(s) {", ".join(map(repr, unknown))} of suite {suite.name}; '
      f'use {", ".join(all_tasks)}'
    )
  methods = _split(args.methods) or [m for m in DEFAULT_METHODS if m in methods_lib.METHODS]
  unknown = [m for m in methods if m not in methods_lib.METHODS]
  if unknown:
    raise UserError(
      f'--methods: unknown method(s) {", ".join(map(repr, unknown))}; '
      f'use {", ".join(methods_lib.METHODS)}'
    )
  seeds = None
  if _split(args.seeds):
    try:
      seeds = [int(s) for s in _split(args.seeds)]
    except ValueError:
      raise UserError(f'--seeds={args.seeds!r}: give integers, e.g. --seeds=42,43,44') from None
  ks = None
  if _split(args.ks):
    try:
      ks = [int(k) for k in _split(args.ks)]
    except ValueError:
      raise UserError(f'--ks={args.ks!r}: give positive integers, e.g. --ks=1,4,16') from None
    if min(ks) < 1:
      raise UserError(f'--ks={args.ks!r}: give positive integers, e.g. --ks=1,4,16')
  options = _split(args.options)
  if args.paper == 'auto':
    benchmark = suite.paper
  else:
    benchmark = None if args.paper == 'none' else args.paper
  backbone = next((o for o in options if o in BACKBONE_OPTIONS), 'vit_b16')
  paper = rf.Paper(benchmark, backbone) if benchmark else None
  return Grid(
    suite=suite,
    config_path=path,
    module=module,
    all_tasks=all_tasks,
    tasks=list(dict.fromkeys(tasks)),
    methods=list(dict.fromkeys(methods)),
    seeds=list(dict.fromkeys(seeds)) if seeds else None,
    ks=list(dict.fromkeys(ks)) if ks else None,
    options=options,
    overrides=parse_overrides(args.set, args.config_overrides),
    out=os.path.abspath(os.path.expanduser(args.out)),
    paper=paper,
  )


def task_config(grid: Grid, task: str):
  """The task's config, with the overrides applied as gps_jax.main applies --config.K=V."""
  from absl import flags
  from ml_collections import config_flags

  from gps_jax import config_check

  arg = grid.task_arg(task)
  try:
    config = grid.module.get_config(arg) if arg else grid.module.get_config()
  except ValueError as e:  # the config file's own check of its argument
    raise UserError(f'{_spec(grid, task)}: {e}') from None
  for key, _ in grid.overrides:
    message = config_check.unknown_key(config, key)
    if message:
      raise UserError(message)
  if not grid.overrides:
    return config
  argv = ['reproduce', *[f'--config.{k}={v}' for k, v in grid.overrides]]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_dict('config', config, flag_values=fv, sys_argv=argv)
  try:
    fv(argv)
  except flags.Error as e:
    raise UserError(str(e)) from None
  return fv.config


def _spec(grid: Grid, task: str) -> str:
  arg = grid.task_arg(task)
  return f'{_display_path(grid.config_path)}:{arg}' if arg else _display_path(grid.config_path)


def _display_path(path: str) -> str:
  rel = os.path.relpath(path)
  return path if rel.startswith('..') else rel


def cell_config(config, method: str, seed: int, k: int | None = None):
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.method = method
    cfg.seed = seed
    cfg.compare_methods = ()
    cfg.compare_seeds = ()
    if k is not None:
      cfg.gps.k = k
  return cfg


def method_cells(grid: Grid) -> list[tuple[str, str, int | None]]:
  """(folder label, method, K or None) of every method column: with --ks a selecting
  method (one with a score source) is one column per K, '<method>_k<K>'."""
  from gps_jax import methods as methods_lib

  cells = []
  for m in grid.methods:
    if grid.ks and methods_lib.get(m).score is not None:
      cells += [(f'{m}_k{k}', m, k) for k in grid.ks]
    else:
      cells.append((m, m, None))
  return cells


def check_cell(cfg) -> None:
  """What sweep.run_config checks before anything runs, for one cell."""
  from gps_jax import config_check
  from gps_jax import methods as methods_lib
  from gps_jax import sweep

  config_check.validate(cfg)
  mcfg = sweep.method_config(cfg, cfg.method)
  if cfg.method in cfg.method_overrides:
    config_check.validate(mcfg, what=f'config.method_overrides.{cfg.method}')
  methods_lib.rules(mcfg)


def seeds_of(grid: Grid, config) -> list[int]:
  return grid.seeds if grid.seeds is not None else [int(config.seed)]


def command(grid: Grid, task: str, label: str, seed: int, config, cell=None) -> str:
  """The gps_jax.main command line of one cell: `label` is its method folder, `config`
  the task's config, `cell` the cell's (its method, and K where the label names one)."""
  cell = cell if cell is not None else cell_config(config, label, seed)
  parts = [
    'python',
    '-m',
    'gps_jax.main',
    f'--config={_spec(grid, task)}',
    f'--workdir={_display_path(rt.cell_dir(grid.out, task, label, seed))}',
    f'--config.method={cell.method}',
    f'--config.seed={seed}',
  ]
  if label != cell.method:
    parts.append(f'--config.gps.k={cell.gps.k}')
  if tuple(config.compare_methods):
    parts.append('--config.compare_methods=()')
  if tuple(config.compare_seeds):
    parts.append('--config.compare_seeds=()')
  parts += [f'--config.{k}={v}' for k, v in grid.overrides]
  return ' '.join(shlex.quote(p) for p in parts)


@dataclasses.dataclass
class Outcome:
  ran: list[tuple[str, str, int]] = dataclasses.field(default_factory=list)
  skipped: list[tuple[str, str, int]] = dataclasses.field(default_factory=list)


def run_grid(grid: Grid, dry_run: bool = False) -> Outcome:
  """Runs (or with `dry_run` prints) every unfinished cell; checks all cells first."""
  from gps_jax import sweep
  from gps_jax import upstream as upstream_lib
  from gps_jax.metrics import say

  configs = {t: task_config(grid, t) for t in grid.tasks}
  plan = []
  for t in grid.tasks:
    for label, m, k in method_cells(grid):
      for s in seeds_of(grid, configs[t]):
        cfg = cell_config(configs[t], m, s, k)
        if not dry_run:  # the printed commands may be meant for another machine's files
          check_cell(cfg)  # every cell before the first one runs
        plan.append((t, label, s, cfg))
  outcome = Outcome()
  if dry_run:
    for t, m, s, cfg in plan:
      workdir = rt.cell_dir(grid.out, t, m, s)
      if rt.is_finished(workdir):
        print(f'# finished, skipped: {_display_path(workdir)}')
        outcome.skipped.append((t, m, s))
      else:
        print(command(grid, t, m, s, configs[t], cfg))
        outcome.ran.append((t, m, s))
    return outcome
  backbones: dict[str, str] = {}
  for t, m, s, cfg in plan:
    workdir = rt.cell_dir(grid.out, t, m, s)
    if rt.is_finished(workdir):
      outcome.skipped.append((t, m, s))
      continue
    if cfg.upstream and t not in backbones:
      # Trained once, in <out>/<task>/upstream, and cached by its config's hash: run_config
      # below finds the cached file (as every later cell and task with the same upstream).
      backbones[t] = upstream_lib.ensure_upstream(cfg.upstream, os.path.join(grid.out, t))
    say(f'[reproduce] {t} / {m} / seed {s}: {_display_path(workdir)}')
    start = time.perf_counter()
    sweep.run_config(cfg, workdir)
    say(f'[reproduce] {t} / {m} / seed {s} done in {time.perf_counter() - start:.1f} s')
    outcome.ran.append((t, m, s))
  return outcome


# ----------------------------------------------------------------------------- the report


def report(grid: Grid, args, make_plots: bool = True) -> rt.Summary | None:
  """results.md, results.csv, paired.csv and plots/ from every finished cell under --out
  (`gps_jax.results_report`), printed.

  The report covers the suite's tasks (all of them, or --tasks), the methods (--methods,
  else every method folder found) and the seeds (--seeds, else every seed found).
  """
  methods = [label for label, _, _ in method_cells(grid)] if _split(args.methods) else None
  tasks = _split(args.tasks) or grid.all_tasks
  title = f'Results: {grid.suite.name}' + (f' ({",".join(grid.options)})' if grid.options else '')
  done = results_report.write_report(
    grid.out,
    tasks,
    methods,
    grid.seeds,
    args.reference,
    title,
    paper=grid.paper,
    preferred=DEFAULT_METHODS,
    make_plots=make_plots,
  )
  if done is None:
    print(f'[reproduce] no finished runs under {grid.out}: no report')
    return None
  print(done.markdown)
  print(f'[reproduce] wrote {", ".join(done.written)} under {grid.out}')
  return done.summary


# ----------------------------------------------------------------------------- main


@contextlib.contextmanager
def compile_cache(path: str):
  """JAX's persistent compilation cache in `path` for the duration (nothing when empty);
  the previous settings come back afterwards, for callers that go on in this process."""
  if not path:
    yield
    return
  import jax
  from jax._src import compilation_cache

  names = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs')
  saved = {n: getattr(jax.config, n) for n in names}
  os.makedirs(path, exist_ok=True)
  jax.config.update(names[0], os.path.abspath(os.path.expanduser(path)))
  jax.config.update(names[1], 0.0)
  compilation_cache.reset_cache()  # the directory is read when the cache initialises
  try:
    yield
  finally:
    for n, v in saved.items():
      jax.config.update(n, v)
    compilation_cache.reset_cache()


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
