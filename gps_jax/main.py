"""Command line: python -m gps_jax.main --config=configs/demo.py --workdir=DIR.

Stages: load backbone → select → fine-tune → evaluate. Override any config
field with --config.<key>=<value>, e.g. --config.gps.k=2 --config.method=linear.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from gps_jax import sweep

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  'config', None, 'Experiment config file (a .py with get_config).', lock_config=True
)
flags.DEFINE_string(
  'workdir',
  None,
  'Directory for results.json, mask_stats.json and the checkpoint of the trainable state.',
)
flags.mark_flags_as_required(['config', 'workdir'])


def _print(msg: str) -> None:
  print(msg, flush=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  sweep.run_config(FLAGS.config, FLAGS.workdir, _print)


if __name__ == '__main__':
  app.run(main)
