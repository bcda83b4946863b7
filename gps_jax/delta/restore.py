"""An orbax restore of a delta checkpoint that fails quietly: one error, no asyncio noise.

Orbax reads the arrays of a checkpoint as many tensorstore reads gathered on one
asyncio event loop. When the files are broken, the first failed read ends the
restore, and the others still fail afterwards: asyncio logs each one, when it
is garbage-collected, as 'Task/Future exception was never retrieved' with a
traceback, and tensorstore's late callbacks into the closed loop print
'Event loop is closed' tracebacks (at interpreter exit too). When that happens
depends on the thread timing, so the noise comes and goes. Two guards:

1. before orbax is asked anything, every array listed in the checkpoint's
   ``_METADATA`` must be in its store (OCDBT database or zarr folders): a
   checkpoint with missing arrays fails here, synchronously, naming them;
2. after a failed restore, those asyncio records whose exception names the
   checkpoint's directory (and orbax's pending reads) are dropped, and so are
   the closed-loop callbacks. Any other asyncio record is logged as before.
"""

from __future__ import annotations

import json
import logging
import os
import sys

from gps_jax import checkpoint
from gps_jax.errors import UserError

_ARRAY_TYPES = ('np.ndarray', 'jax.Array')
_UNRETRIEVED = ('Task exception was never retrieved', 'Future exception was never retrieved')


class _FailedRestoreFilter(logging.Filter):
  """Drops the asyncio records of the reads of failed restores (see the module doc)."""

  def __init__(self):
    super().__init__()
    self.paths: set[str] = set()

  def filter(self, record: logging.LogRecord) -> bool:
    message = str(record.msg)
    if message.startswith(_UNRETRIEVED) and record.exc_info and record.exc_info[1] is not None:
      text = str(record.exc_info[1])
      return not any(path in text for path in self.paths)
    if message.startswith('Task was destroyed but it is pending') and self.paths:
      return 'orbax' not in record.getMessage()
    return True


_FILTER = _FailedRestoreFilter()


def _drop_closed_loop_callbacks() -> None:
  """Tensorstore's callbacks into the closed event loop of a failed restore raise
  RuntimeError('Event loop is closed'), printed as 'Exception ignored' tracebacks: a
  `sys.unraisablehook` wrapper (installed once) drops those, passes every other one on."""
  previous = sys.unraisablehook
  if getattr(previous, 'gps_jax_drops_closed_loop', False):
    return

  def hook(unraisable) -> None:
    e = unraisable.exc_value
    if isinstance(e, RuntimeError) and str(e) == 'Event loop is closed':
      return
    previous(unraisable)

  hook.gps_jax_drops_closed_loop = True
  sys.unraisablehook = hook


def quiet_failed_restore(path: str) -> None:
  """Silences the late asyncio noise of the failed restore of the checkpoint `path`."""
  _FILTER.paths.add(os.path.abspath(path).rstrip(os.sep))
  logger = logging.getLogger('asyncio')
  if _FILTER not in logger.filters:
    logger.addFilter(_FILTER)
  _drop_closed_loop_callbacks()


def _listed_arrays(path: str) -> tuple[list[str], bool] | None:
  """The array names `_METADATA` lists and whether they live in an OCDBT database;
  None when it is not readable as such (orbax then reports what is wrong)."""
  try:
    with open(os.path.join(path, '_METADATA'), encoding='utf-8') as f:
      meta = json.load(f)
    names = [
      '.'.join(str(k['key']) for k in entry['key_metadata'])
      for entry in meta['tree_metadata'].values()
      if entry['value_metadata'].get('value_type') in _ARRAY_TYPES
      and not entry['value_metadata'].get('skip_deserialize')
    ]
    return names, bool(meta.get('use_ocdbt', True))
  except (OSError, ValueError, KeyError, TypeError, AttributeError):
    return None


def _stored_arrays(path: str, ocdbt: bool) -> set[str]:
  """The names of the arrays whose zarr metadata is in the store of `path`."""
  if ocdbt:
    if not os.path.isfile(os.path.join(path, 'manifest.ocdbt')):
      return set()
    import tensorstore as ts

    try:  # synchronous: no event loop, nothing left behind
      kv = ts.KvStore.open({'driver': 'ocdbt', 'base': f'file://{path}'}).result()
      keys = [k.decode('utf-8', 'replace') for k in kv.list().result()]
    except Exception as e:  # noqa: BLE001  (tensorstore reports a damaged database as anything)
      text = ' '.join(str(e).split())[:300]
      raise UserError(
        f'{path} is not a readable delta checkpoint: its OCDBT database is damaged '
        f'({type(e).__name__}: {text})'
      ) from None
  else:
    keys = [
      os.path.relpath(os.path.join(r, f), path).replace(os.sep, '/')
      for r, _, fs in os.walk(path)
      for f in fs
    ]
  return {k.rsplit('/', 1)[0] for k in keys if k.endswith(('/.zarray', '/zarr.json'))}


def check_arrays_present(path: str) -> None:
  """A UserError naming `path` when an array its metadata lists is not stored."""
  listed = _listed_arrays(path)
  if listed is None:
    return
  names, ocdbt = listed
  missing = sorted(set(names) - _stored_arrays(path, ocdbt))
  if missing:
    raise UserError(
      f'{path} is not a readable delta checkpoint: {len(missing)} of its {len(names)} arrays '
      f'are missing (e.g. {", ".join(missing[:3])})'
    )


def restore(path: str) -> dict:
  """`checkpoint.load_delta(path)` after `check_arrays_present`; a failed restore is
  followed by no asyncio noise."""
  path = os.path.abspath(path)
  check_arrays_present(path)
  try:
    return checkpoint.load_delta(path)
  except BaseException:
    quiet_failed_restore(path)
    raise
