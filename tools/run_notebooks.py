"""Reruns the notebooks of notebooks/ in place: the command behind their committed outputs.

  python tools/run_notebooks.py [quickstart] [vtab_gpu] [deltas]   (default: all three)

Each runs top to bottom in a fresh kernel (`gps_jax.notebook.execute`) with the
parameters below, and is written back with its outputs. quickstart and deltas run with
their own defaults; vtab_gpu needs a GPU, a ViT-B/16 file and VTAB data that this
project's CPU machine lacks, so its committed run replaces the task by the offline
mini-VTAB stand-in (stated in the notebook, in its injected-parameters cell). To run a
notebook with other values, change its parameters cell, or use papermill
(``papermill notebooks/vtab_gpu.ipynb out.ipynb -p CONFIG configs/vtab.py:dtd ...``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COMMITTED = {
  'quickstart': ({}, ''),
  'vtab_gpu': (
    {
      'CONFIG': 'configs/mini_vtab.py:dsprites_loc',
      'CHECKPOINT': '',
      'DATA_DIR': '',
      'OVERRIDES': {'train.log_every': 25},
    },
    'The committed CPU run (tools/run_notebooks.py): no GPU, no ViT-B/16 file and no VTAB\n'
    'data on that machine, so the offline mini-VTAB task dsprites_loc on the demo backbone\n'
    'stands in for the real task. Delete this cell to run the parameters above.',
  ),
  'deltas': ({}, ''),
}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('names', nargs='*', help=f'notebooks of {", ".join(COMMITTED)} (default: all)')
  args = p.parse_args(argv)
  import nbformat

  from gps_jax import errors, notebook

  def run():
    unknown = sorted(set(args.names) - set(COMMITTED))
    if unknown:
      raise errors.UserError(f'no notebook {unknown[0]!r}; use one of {", ".join(COMMITTED)}')
    for name in args.names or COMMITTED:
      params, note = COMMITTED[name]
      path = os.path.join(ROOT, 'notebooks', f'{name}.ipynb')
      t0 = time.perf_counter()
      nbformat.write(notebook.execute(path, params, note=note), path)
      print(f'{path}: ran in {time.perf_counter() - t0:.0f} s')

  return errors.run(run)


if __name__ == '__main__':
  sys.exit(main())
