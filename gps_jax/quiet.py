"""TensorFlow imported without its C++ start-up lines on stderr.

TensorFlow's C++ side prints an absl notice and "oneDNN custom operations are
on" to stderr when it loads, before any Python logging setting applies
(TF_CPP_MIN_LOG_LEVEL no longer silences them). gps_jax uses TensorFlow for
tf.data only, so the command-line entry points import it here first, with
file descriptor 2 pointed at /dev/null for the duration of the import. An
import that fails still raises, and its traceback is printed after stderr is
restored. oneDNN stays on: turning it off would change the numbers.
"""

from __future__ import annotations

import os
import sys


def import_tensorflow() -> None:
  """Imports tensorflow (once) with stderr silenced at the file-descriptor level."""
  if 'tensorflow' in sys.modules:
    return
  sys.stderr.flush()
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    import tensorflow  # noqa: F401
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)
