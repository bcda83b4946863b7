"""Progress bars for a run's long loops: the selection pass, training, evaluation.

A bar shows images done, images/s and, where the total is known, the time remaining. It
is drawn on stderr by process 0 only when stderr is a terminal, so logs, CI and the
files a run writes stay as they were; ``GPS_JAX_PROGRESS=1`` draws it anyway (a notebook,
a pager), ``GPS_JAX_PROGRESS=0`` never.
"""

from __future__ import annotations

import os
import sys

import jax
import tqdm

ENV = 'GPS_JAX_PROGRESS'


def enabled() -> bool:
  """Whether bars are drawn: process 0, and GPS_JAX_PROGRESS=1 or a terminal on stderr."""
  if jax.process_index() != 0:
    return False
  forced = os.environ.get(ENV, '').strip()
  if forced in ('0', '1'):
    return forced == '1'
  return sys.stderr.isatty()


def bar(desc: str, total: int | None = None, initial: int = 0) -> tqdm.tqdm:
  """A bar counting images (``update(n)`` after each batch); a no-op one when not `enabled`."""
  return tqdm.tqdm(
    total=total or None,
    initial=initial,
    desc=desc,
    unit='img',
    leave=True,  # the finished bar stays: its count, time and rate
    dynamic_ncols=True,
    file=sys.stderr,
    disable=not enabled(),
  )
