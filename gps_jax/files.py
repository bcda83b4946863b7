"""Crash-safe file writes: a temporary file in the same folder, fsync'ed, then renamed.

`write_atomic_path` is the one implementation; `write_atomic` (an open file) and
`write_json` are built on it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import IO, Any


def _fsync(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def write_atomic_path(path: str | os.PathLike, write_to_tmp: Callable[[str], None]) -> None:
  """Calls ``write_to_tmp(tmp)`` with the path of a temporary file beside ``path`` (created
  empty and closed: the callback writes it by name, e.g. a library's ``save(tmp)``), fsyncs
  it, then moves it over ``path``: a crash never leaves a half-written file, and an existing
  one stays until the end. The temporary file is removed if anything fails."""
  path = os.fspath(path)
  fd, tmp = tempfile.mkstemp(
    dir=os.path.dirname(os.path.abspath(path)), prefix=os.path.basename(path) + '.', suffix='.tmp'
  )
  os.close(fd)
  try:
    write_to_tmp(tmp)
    _fsync(tmp)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_atomic(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = True) -> None:
  """Calls ``write(file)`` on a temporary file beside ``path``, then moves it over ``path``:
  a crash never leaves a half-written file, and an existing one stays until the end."""

  def write_to_tmp(tmp: str) -> None:
    with open(tmp, 'wb' if binary else 'w') as f:
      write(f)

  write_atomic_path(path, write_to_tmp)


def write_json(path: str | os.PathLike, obj: Any, *, sort_keys: bool = False) -> None:
  """Writes ``obj`` as UTF-8 JSON (indent=1, keys in their order unless `sort_keys`, a
  trailing newline), atomically (`write_atomic_path`)."""

  def write_to_tmp(tmp: str) -> None:
    with open(tmp, 'w', encoding='utf-8') as f:
      json.dump(obj, f, indent=1, sort_keys=sort_keys)
      f.write('\n')

  write_atomic_path(path, write_to_tmp)
