"""Crash-safe file writes: a temporary file in the same folder, fsync'ed, then renamed."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import IO


def write_atomic(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = True) -> None:
  """Calls ``write(file)`` on a temporary file beside ``path``, then moves it over ``path``:
  a crash never leaves a half-written file, and an existing one stays until the end."""
  path = os.fspath(path)
  fd, tmp = tempfile.mkstemp(
    dir=os.path.dirname(os.path.abspath(path)), prefix=os.path.basename(path) + '.', suffix='.tmp'
  )
  try:
    with os.fdopen(fd, 'wb' if binary else 'w') as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
