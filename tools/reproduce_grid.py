"""The grid of tools/reproduce.py: its suites, the tasks × methods × seeds (× K) that the
command line's arguments select, every cell's config and its gps_jax.main command line.

Nothing here trains: `make_grid` checks the arguments against the config file (one
`UserError` per mistake), `task_config` / `cell_config` build the configs that
tools/reproduce_runner.py runs, `command` the equivalent command of one cell (--dry-run).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shlex
import sys
from collections.abc import Sequence

from gps_jax import results_format as rf
from gps_jax import results_table as rt
from gps_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


def split_commas(text: str) -> list[str]:
  """The items of a comma list, stripped, empty ones dropped."""
  return [x.strip() for x in text.split(',') if x.strip()]


def int_list(flag: str, text: str, want: str, least: int | None = None) -> list[int] | None:
  """The integers of a comma-separated flag (None when it is empty); anything else, or a
  value under `least`, is one error naming --`flag` and what it `want`s."""
  if not split_commas(text):
    return None
  try:
    values = [int(v) for v in split_commas(text)]
  except ValueError:
    values = None
  if values is None or (least is not None and min(values) < least):
    raise UserError(f'--{flag}={text!r}: give {want}')
  return values


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
  """What one invocation covers: the suite, the chosen tasks, methods, seeds and K, the
  overrides and the output folder."""

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
    """The config file's argument for `task`: 'task[,options]'."""
    parts = ([] if self.suite.single_task else [task]) + self.options
    return ','.join(parts)


def suite_of(args) -> tuple[Suite, str]:
  """The suite of --suite, or an ad-hoc one of --config-file, and its config's path."""
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
  """The grid of the parsed arguments, each checked against the config file."""
  from gps_jax import methods as methods_lib

  suite, path = suite_of(args)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config file {path}: no such file')
  from gps_jax import quiet

  quiet.import_tensorflow()  # before anything imports it: no C++ start-up lines on stderr
  module = load_module(path)
  all_tasks = tasks_of(suite, module)
  tasks = split_commas(args.tasks) or list(all_tasks)
  unknown = [t for t in tasks if t not in all_tasks]
  if unknown:
    raise UserError(
      f'--tasks: unknown task(s) {", ".join(map(repr, unknown))} of suite {suite.name}; '
      f'use {", ".join(all_tasks)}'
    )
  methods = split_commas(args.methods) or [m for m in DEFAULT_METHODS if m in methods_lib.METHODS]
  unknown = [m for m in methods if m not in methods_lib.METHODS]
  if unknown:
    raise UserError(
      f'--methods: unknown method(s) {", ".join(map(repr, unknown))}; '
      f'use {", ".join(methods_lib.METHODS)}'
    )
  seeds = int_list('seeds', args.seeds, 'integers, e.g. --seeds=42,43,44')
  ks = int_list('ks', args.ks, 'positive integers, e.g. --ks=1,4,16', least=1)
  options = split_commas(args.options)
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
  """The --config value of gps_jax.main for `task`: 'FILE[:ARG]'."""
  arg = grid.task_arg(task)
  return f'{display_path(grid.config_path)}:{arg}' if arg else display_path(grid.config_path)


def display_path(path: str) -> str:
  """`path` relative to the current directory, or absolute when outside it."""
  rel = os.path.relpath(path)
  return path if rel.startswith('..') else rel


def cell_config(config, method: str, seed: int, k: int | None = None):
  """One cell's config: the task's `config` with its method, seed (and K), no comparisons."""
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
  """--seeds, else the task config's own seed."""
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
    f'--workdir={display_path(rt.cell_dir(grid.out, task, label, seed))}',
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
