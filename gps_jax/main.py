"""Command line: python -m gps_jax.main --config=configs/demo.py --workdir=DIR.

Stages: load backbone → select → fine-tune → evaluate. Override any config
field with --config.<key>=<value>, e.g. --config.gps.k=2 --config.method=linear.
Several processes (hosts): start the same command on each with
--coordinator_address=HOST:PORT --num_processes=N --process_id=I; every process
reads its share of the data, process 0 writes the files and the log.
"""

import os
import sys

from gps_jax import quiet

quiet.import_tensorflow()  # before anything imports it: no C++ start-up lines on stderr

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

from gps_jax import config_check
from gps_jax import errors
from gps_jax import sweep
from gps_jax.methods import METHODS

# --help prints this docstring: it lists the registered methods.
__doc__ += '\nMethods (--config.method=NAME):\n' + '\n'.join(
  f'  {name:<12} {method.doc}' for name, method in METHODS.items()
)

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  'config', None, 'Experiment config file (a .py with get_config).', lock_config=True
)
flags.DEFINE_string(
  'workdir',
  None,
  'Directory for results.json, mask_stats.json, metrics.jsonl, the delta checkpoint and the '
  'resumable train_state (a rerun in the same directory resumes).',
)
flags.DEFINE_string(
  'coordinator_address',
  None,
  'Multi-process runs: host:port of process 0 (jax.distributed). Unset: a single process, '
  'unless the JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID variables '
  'give the same three values.',
)
flags.DEFINE_integer('num_processes', None, 'Multi-process runs: the number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-process runs: this process, 0 .. num_processes-1.')
flags.DEFINE_bool(
  'verbose',
  False,
  'Print the traceback of a user error (a bad config value, a missing file) too, not only '
  f'its error: line; the same as {errors.TRACEBACK_ENV}=1.',
)
flags.mark_flags_as_required(['config', 'workdir'])

_ENV = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')


def init_distributed() -> None:
  """jax.distributed from the flags or the environment; nothing for a single process."""
  import jax

  if FLAGS.coordinator_address is None and not any(os.environ.get(v) for v in _ENV):
    return
  # CPU processes exchange collectives over gloo (GPUs use NCCL by themselves).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(
    coordinator_address=FLAGS.coordinator_address or os.environ.get(_ENV[0]),
    num_processes=FLAGS.num_processes or _env_int(_ENV[1]),
    process_id=FLAGS.process_id if FLAGS.process_id is not None else _env_int(_ENV[2]),
  )


def _env_int(name: str):
  value = os.environ.get(name)
  return int(value) if value else None


def _config_file(argv: list[str]) -> str | None:
  for i, arg in enumerate(argv):
    for name in ('--config', '-config'):
      if arg.startswith(name + '='):
        return arg[len(name) + 1 :]
      if arg == name and i + 1 < len(argv):
        return argv[i + 1]
  return None


def unknown_override(argv: list[str]) -> str | None:
  """The message for the first ``--config.<key>`` of `argv` that the config file lacks."""
  path = _config_file(argv)
  if path is None:
    return None
  try:
    config = ConfigFileFlagParser('config', lock_config=False).parse(path)
  except Exception:  # noqa: BLE001  (the flag parser reports a broken config file itself)
    return None
  for arg in argv:
    for prefix in ('--config.', '-config.'):
      if arg.startswith(prefix):
        message = config_check.unknown_key(config, arg[len(prefix) :].split('=', 1)[0])
        if message:
          return message
  return None


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing; an unknown ``--config.<key>`` becomes one error line."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError):  # ml_collections' error for a key the config lacks
    message = unknown_override(argv)
    if message is None or errors.wants_traceback() or '--verbose' in argv:
      raise
    errors.print_error(message)
    sys.exit(1)


def _run() -> None:
  path = config_flags.get_config_filename(FLAGS['config']).split(':', 1)[0]  # file.py:arg
  if not os.path.isfile(path):  # config_flags would fail later, with a traceback
    raise FileNotFoundError(f'--config={path}: no such file')
  init_distributed()
  sweep.run_config(FLAGS.config, FLAGS.workdir)  # process 0 prints and writes


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  return errors.run(_run, verbose=FLAGS.verbose)  # a user error: one line, exit status 1


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
