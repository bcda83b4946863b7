"""A run's metrics: one writer for ``<workdir>/metrics.jsonl``, TensorBoard and the console.

Each record is one JSON object on its own line::

  {"kind": "train", "step": 50, "loss": 0.61, "accuracy": 0.81, "lr": 0.0098,
   "images_per_s": 412.0, "time": 1796256255.0}
  {"kind": "eval", "step": 125, "val": 0.905, "val_ema": 0.91, "time": ...}

``kind`` is ``train`` (the logged steps), ``eval`` (periodic and final
evaluations) or ``final`` (the accuracies the run reports). The file is opened
for appending, so a resumed run continues its history in the same file; a line
cut off by a crash is skipped by :func:`read`. Only process 0 writes and
prints; the other processes' writers do nothing.

The same numbers go to TensorBoard event files in ``<workdir>/tensorboard`` through
clu's summary writer (as big_vision and scenic write theirs), named ``<kind>/<key>``
(``train/loss``, ``eval/val``, ``final/test``): ``tensorboard --logdir <workdir>``.
A resumed run adds an event file beside the first.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax

FILENAME = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'


def is_writer() -> bool:
  """Process 0 writes the files and the console lines of a run."""
  return jax.process_index() == 0


def say(message: str) -> None:
  """A console line, from process 0 only."""
  if is_writer():
    print(message, flush=True)


def _number(value: Any):
  value = float(value)
  return value if math.isfinite(value) else str(value)  # JSON has no NaN / inf


class MetricsLog:
  """Appends records to ``<workdir>/metrics.jsonl`` and its TensorBoard events (none when
  `workdir` is None)."""

  def __init__(self, workdir: str | None):
    self.path = os.path.join(workdir, FILENAME) if workdir and is_writer() else None
    self._events = None
    if self.path is not None:
      from clu import metric_writers  # TensorFlow's summary API: imported only when writing

      self._events = metric_writers.SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR))

  def write(self, kind: str, step: int, **values) -> None:
    if self.path is None:
      return
    record = {'kind': kind, 'step': int(step), **{k: _number(v) for k, v in values.items()}}
    record['time'] = round(time.time(), 3)
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    if self._events is not None:
      self._events.write_scalars(int(step), {f'{kind}/{k}': float(v) for k, v in values.items()})
      self._events.flush()

  def close(self) -> None:
    """Closes the event file (the records are flushed at every write already)."""
    if self._events is not None:
      self._events.close()
      self._events = None


def read(path: str) -> list[dict]:
  """The records of a metrics.jsonl file (or of the one in a workdir), in order."""
  if os.path.isdir(path):
    path = os.path.join(path, FILENAME)
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        if line.endswith('\n'):
          raise ValueError(f'{path}: a line that is not JSON: {line[:80]!r}') from None
        # the last line of a run that was killed mid-write
  return records
