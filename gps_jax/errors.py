"""Which exceptions are the user's (one ``error:`` line) and which are bugs (a traceback).

A user error is a problem of the input — a config value, a path, a data set
that is not prepared, a checkpoint that does not fit — and its message already
says what to change, so the command-line entry points print ``error: <message>``
and exit with status 1 instead of a traceback that buries it. Everything else
(TypeError, AttributeError, a ValueError raised inside JAX or NumPy) is a bug
and stays loud. ``GPS_JAX_TRACEBACK=1`` (or ``--verbose`` where a CLI has it)
shows the traceback of a user error too.

The user errors are:
- `UserError` (a ValueError, so ``pytest.raises(ValueError)`` still holds), raised
  by the places that validate input: config_check, the delta store, resumable
  checkpoints, data splits;
- FileNotFoundError and its kin (a path that is not there or not readable), and
  any OSError that names its file (a read-only or full disk under --out);
- a plain ValueError raised by a ``raise`` statement in gps_jax's own source:
  the weights, data and model-file readers (owned elsewhere) check their input
  with ValueError. A ValueError whose innermost frame is outside gps_jax (JAX,
  NumPy, orbax) is not ours to explain and counts as a bug.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

TRACEBACK_ENV = 'GPS_JAX_TRACEBACK'
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


class UserError(ValueError):
  """A problem of the user's input, with a message that says what to change."""


def _raised_in_gps_jax(e: BaseException) -> bool:
  tb = e.__traceback__
  if tb is None:
    return False
  while tb.tb_next is not None:
    tb = tb.tb_next
  return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_PACKAGE_DIR)


def user_message(e: BaseException) -> str | None:
  """The message to print for a user error `e`; None when `e` is a bug."""
  if (
    isinstance(e, (UserError, *_PATH_ERRORS))
    or (isinstance(e, OSError) and e.filename is not None)  # a path: disk full, read-only, ...
    or (type(e) is ValueError and _raised_in_gps_jax(e))
  ):
    return str(e) or type(e).__name__
  return None


def wants_traceback() -> bool:
  return os.environ.get(TRACEBACK_ENV, '') not in ('', '0')


def print_error(message: str) -> None:
  print(f'error: {message}', file=sys.stderr, flush=True)


def report(e: BaseException, *, verbose: bool = False) -> int | None:
  """Prints a user error as ``error: <message>`` (with its traceback when asked) and
  returns the exit status 1; None for a bug, which the caller re-raises."""
  message = user_message(e)
  if message is None:
    return None
  if verbose or wants_traceback():
    traceback.print_exception(e, file=sys.stderr)
  print_error(message)
  return 1


def run(fn: Callable[[], object], *, verbose: bool = False) -> int:
  """Calls `fn` (an entry point's body): 0, or 1 after `report` for a user error."""
  try:
    fn()
  except Exception as e:  # a bug is re-raised below
    code = report(e, verbose=verbose)
    if code is None:
      raise
    return code
  return 0
