"""Reads back the TensorBoard event files a run writes (gps_jax.metrics)."""

import glob
import os

import tensorflow as tf

from gps_jax import metrics


def events(workdir) -> dict[tuple[str, int], float]:
  """{(tag, step): value} of every event file under <workdir>/tensorboard."""
  out = {}
  pattern = os.path.join(str(workdir), metrics.TENSORBOARD_DIR, 'events.out.tfevents.*')
  for path in sorted(glob.glob(pattern)):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        out[value.tag, event.step] = float(tf.make_ndarray(value.tensor))
  return out
