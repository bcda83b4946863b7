"""Draws the predictions of finished segmentation runs on a few test images.

  python tools/polyp_figure.py --config=configs/polyp.py:synthetic,compare \
      --workdir=runs/polyp_synthetic --methods=linear,gps --images=4 --out=docs/polyp.png

Each method's run (``WORKDIR/<method>``, or WORKDIR itself for one method) is rebuilt from
what it saved: the base of the config (its checkpoint, or the same random init from the
run's seed) plus the run's delta (``checkpoint/``), whose base SHA-256 must match. The
first column after the ground truth is the untuned base. Rows are the first test images.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

from gps_jax import errors
from gps_jax import experiment
from gps_jax import notebook
from gps_jax import seg_figures
from gps_jax import sweep
from gps_jax.plots import png_bytes

flags.DEFINE_string('config', None, 'The runs\' config, as --config of gps_jax.main (file.py:arg).')
flags.DEFINE_string('workdir', None, 'The --workdir of the runs.')
flags.DEFINE_list('methods', ['gps'], 'Methods to show (subfolders of workdir when several ran).')
flags.DEFINE_integer('images', 4, 'Test images (rows).')
flags.DEFINE_string('out', None, 'The PNG to write.')
flags.DEFINE_string('title', '', 'Figure title.')
flags.mark_flags_as_required(['config', 'workdir', 'out'])
FLAGS = flags.FLAGS


def _run() -> None:
  config = notebook.load_config(FLAGS.config)
  several = len(tuple(config.compare_methods)) > 1
  role = config.data.test_split
  predictions, base = {}, None
  for method in FLAGS.methods:
    cfg = sweep.method_config(config, method)
    run_dir = os.path.join(FLAGS.workdir, method) if several else FLAGS.workdir
    bb, params = notebook.run_params(cfg, run_dir)
    _, batches = experiment.eval_batches(cfg, role)
    if base is None:  # the untuned model: the base every method started from
      images, targets, base = seg_figures.predict_masks(cfg, bb.model, bb.params, batches(), FLAGS.images)
      predictions['untuned'] = base
    predictions[method] = seg_figures.predict_masks(cfg, bb.model, params, batches(), FLAGS.images)[2]
  fig = seg_figures.overlay_figure(images, targets, predictions, FLAGS.title)
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  with open(FLAGS.out, 'wb') as f:
    f.write(png_bytes(fig))
  print(f'wrote {FLAGS.out}', file=sys.stderr)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  return errors.run(_run)


if __name__ == '__main__':
  app.run(main)
