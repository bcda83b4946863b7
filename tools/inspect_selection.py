"""How a selection spreads over each neuron's inputs, from delta checkpoints.

  python tools/inspect_selection.py runs/demo/gps/checkpoint runs/demo/random/checkpoint

For every selected leaf: the number of distinct inputs (fan-in positions) that
at least one neuron picked, and the share of all picks that go to the 5 most
picked inputs. Gradient scores are input activation × output error, so inputs
with large activations tend to win the top-K of many neurons at once; random
selection spreads evenly.
"""

import re

from absl import app
from absl import flags
from absl import logging
import numpy as np

from gps_jax import checkpoint
from gps_jax import errors

flags.DEFINE_string('leaves', r'encoderblock_1/|^embedding/', 'Regex of the leaves to show.')
FLAGS = flags.FLAGS


def spread(indices: np.ndarray) -> tuple[int, float]:
  """(distinct inputs picked, share of picks on the 5 most picked inputs)."""
  counts = np.bincount(indices.ravel())
  top5 = np.sort(counts)[::-1][:5].sum()
  return int(np.count_nonzero(counts)), float(top5 / indices.size)


def main(argv):
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  pattern = re.compile(FLAGS.leaves)
  for path in argv[1:]:
    delta = checkpoint.load_delta(path)
    print(path)
    print(f'  {"leaf":<72}{"neurons":>8}{"K":>4}{"distinct inputs":>17}{"top-5 share":>13}')
    for leaf, idx in delta['indices'].items():
      if pattern.search(leaf):
        distinct, top5 = spread(idx)
        print(f'  {leaf:<72}{idx.shape[0]:>8}{idx.shape[1]:>4}{distinct:>17}{top5:>13.2f}')


if __name__ == '__main__':
  app.run(lambda argv: errors.run(lambda: main(argv)))  # a bad path: one error: line, status 1
