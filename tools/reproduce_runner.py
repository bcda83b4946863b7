"""Runs the grid of tools/reproduce_grid.py: every cell checked before the first one runs,
finished cells (a ``results.json``) skipped, interrupted ones resumed from their
``train_state/``, all in this process (gps_jax and TensorFlow imported once, an upstream
backbone trained or found in its cache once per task); --dry-run prints the commands.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time

from reproduce_grid import (
  Grid,
  cell_config,
  check_cell,
  command,
  display_path,
  method_cells,
  seeds_of,
  task_config,
)

from gps_jax import results_table as rt


@dataclasses.dataclass
class Outcome:
  """The cells (task, method folder, seed) run and those skipped as finished."""

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
        print(f'# finished, skipped: {display_path(workdir)}')
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
    say(f'[reproduce] {t} / {m} / seed {s}: {display_path(workdir)}')
    start = time.perf_counter()
    sweep.run_config(cfg, workdir)
    say(f'[reproduce] {t} / {m} / seed {s} done in {time.perf_counter() - start:.1f} s')
    outcome.ran.append((t, m, s))
  return outcome


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
