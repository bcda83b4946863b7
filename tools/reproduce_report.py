"""The report of tools/reproduce.py: results.md, results.csv, paired.csv and plots/ of the
grid's finished cells (written by `gps_jax.results_report`), printed.
"""

from __future__ import annotations

from reproduce_grid import DEFAULT_METHODS, Grid, method_cells, split_commas

from gps_jax import results_report
from gps_jax import results_table as rt


def report(grid: Grid, args, make_plots: bool = True) -> rt.Summary | None:
  """results.md, results.csv, paired.csv and plots/ from every finished cell under --out
  (`gps_jax.results_report`), printed.

  The report covers the suite's tasks (all of them, or --tasks), the methods (--methods,
  else every method folder found) and the seeds (--seeds, else every seed found).
  """
  methods = [label for label, _, _ in method_cells(grid)] if split_commas(args.methods) else None
  tasks = split_commas(args.tasks) or grid.all_tasks
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
