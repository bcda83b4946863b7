"""What one train step of each fine-tuning method costs: memory, optimizer state, FLOPs, time.

  # CPU: compiled at batch 32, timed at batch 8 (ViT-B/16: many minutes on 2 cores)
  .venv/bin/python tools/benchmark.py --wall-batch 8
  # GPU, unchanged: compiled and timed at batch 32
  .venv/bin/python tools/benchmark.py --json runs/benchmark.json
  # some methods, another backbone, a smaller ViT
  .venv/bin/python tools/benchmark.py --methods full,gps,lora --model swin_b
  .venv/bin/python tools/benchmark.py --model vit:Ti/16 --image-size 32 --model-override hidden_size=64

One backbone (default ViT-B/16 at 224 px, batch 32) with random weights: nothing is
downloaded. Every method's train step is the real one: `gps_jax.trainer.MaskedFinetuner`
with the rule of `gps_jax.experiment.update_rule`, the config being
`gps_jax.config_defaults.experiment_config()` with the method's settings. One markdown
table (stdout; progress goes to stderr) gives per method, with its ratio to `full`:

* the trainable state and the optimizer state the step carries, in MiB;
* XLA's FLOPs of the train step compiled at --batch (``cost_analysis()['flops']``) and
  its compiled memory (``memory_analysis()``): arguments, temporaries, outputs, aliased
  (donated) buffers, and the live peak = arguments + temporaries + outputs - aliased;
* the median wall time of a step at --wall-batch, and its images/s: --rounds rounds, in
  each of them every method in turn (round-robin) runs one warm-up step and --steps timed
  steps; the median is over all of a method's timed steps;
* XLA's FLOPs of the eval step at --batch on the merged parameters: GPS's must equal
  full's (after merging, a GPS model is the plain backbone).

Below the table: the selection pass (GPS's SupCon score step,
`gps_jax.scoring.make_score_step`, two views of every image) in images/s against full
fine-tuning's train step, timed in the same rounds. GPS's indices are K random inputs per
neuron: the scores choose which entries train, not what a step costs.

Methods: full, gps (sparse delta with the default config.train.sparse_grad='auto': K-entry
weight gradients where K <= MAX_K_SHARE * fan-in), gps_kentry (K-entry for every matmul
kernel: 'on'), gps_autodiff (effective kernels and autodiff's dense weight gradients:
'off'), gps_dense (dense masked rule), linear, bitfit, lora, ssf, adapter, vpt_shallow,
vpt_deep.
`full` is always measured (the ratios need it); a method whose layers the backbone family
lacks (VPT outside ViT) is skipped with a note. The per-layer sweep behind
`gps_jax.sparse_grad.MAX_K_SHARE` is tools/layer_sweep.py.

This file holds the flags, the methods' settings and the ratios to full; the backbone with
random weights is tools/benchmark_model.py, the compiled steps (train, eval, selection
pass) tools/benchmark_steps.py, the printed text tools/benchmark_report.py.
"""

from __future__ import annotations

from gps_jax import quiet

quiet.import_tensorflow()  # gps_jax.experiment imports it: no C++ start-up lines on stderr

import argparse
import statistics
import os
import sys
from typing import Sequence

import ml_collections

from gps_jax import config_check
from gps_jax import config_defaults
from gps_jax import errors
from gps_jax import files
from gps_jax import methods
from gps_jax import step_cost

TOOLS = os.path.dirname(os.path.abspath(__file__))
if TOOLS not in sys.path:  # the benchmark_* modules beside this file, when it is loaded by path
  sys.path.append(TOOLS)

import benchmark_report  # noqa: E402
import benchmark_steps as steps  # noqa: E402

# Table name -> (config.method, config.train.update_mode, config.train.sparse_grad).
SETTINGS: dict[str, tuple[str, str, str]] = {
  'full': ('full', 'sparse', 'off'),
  'gps': ('gps', 'sparse', 'auto'),
  'gps_kentry': ('gps', 'sparse', 'on'),
  'gps_autodiff': ('gps', 'sparse', 'off'),
  'gps_dense': ('gps', 'dense', 'off'),
  # The registry's own methods, each with its own rules and update rule.
  **{
    m: (m, 'sparse', 'off')
    for m in ('linear', 'bitfit', 'lora', 'ssf', 'adapter', 'vpt_shallow', 'vpt_deep')
  },
}


# -- command line ----------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
  p = step_cost.Parser(
    description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter
  )
  step_cost.add_model_flags(p)
  p.add_argument(
    '--train',
    action='append',
    default=[],
    metavar='KEY=VALUE',
    help='a config.train field for every method, e.g. base_dtype=bfloat16 (repeatable)',
  )
  p.add_argument('--batch', type=int, default=32, help='batch of the FLOPs / memory analysis')
  p.add_argument('--wall-batch', type=int, default=0, help='batch of the timed steps (0: --batch)')
  p.add_argument('--steps', type=int, default=3, help='timed steps per method per round')
  p.add_argument('--rounds', type=int, default=3, help='rounds, methods interleaved')
  p.add_argument('--k', type=int, default=1, help="GPS's K (inputs per neuron)")
  p.add_argument('--score-chunks', type=int, default=1,
                 help="the selection pass's backward in this many chunks (config.gps.score_chunks)")  # fmt: skip
  p.add_argument('--methods', default=','.join(SETTINGS), help='comma-separated, of: %(default)s')
  p.add_argument('--json', default='', metavar='FILE', help='also write the numbers as JSON')
  return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  """The flags, checked: every problem is one `error:` line and exit status 2."""
  parser = _parser()
  args = parser.parse_args(argv)
  names = list(dict.fromkeys(m.strip() for m in args.methods.split(',') if m.strip()))
  unknown = [m for m in names if m not in SETTINGS]
  if unknown or not names:
    parser.error(f'--methods: unknown {", ".join(map(repr, unknown)) or "(none given)"}; '
                 f'use some of {", ".join(SETTINGS)}')  # fmt: skip
  args.method_names = names
  for flag in ('image_size', 'classes', 'batch', 'steps', 'rounds', 'k'):
    if getattr(args, flag) < 1:
      parser.error(f'--{flag.replace("_", "-")}={getattr(args, flag)}: want a positive integer')
  if args.wall_batch < 0:
    parser.error('--wall-batch: want 0 (the default) or a positive integer')
  if args.score_chunks < 1 or any(
    (2 * b) % args.score_chunks for b in (args.batch, args.wall_batch)
  ):
    parser.error('--score-chunks: want a positive divisor of the 2 x batch views')
  args.wall_batch = args.wall_batch or args.batch
  try:
    args.overrides = step_cost.model_overrides(args.model_override)
    args.model_config = step_cost.model_config(
      args.model, args.image_size, args.classes, args.overrides
    )
    args.train_overrides = _train_overrides(args.train)
  except ValueError as e:
    parser.error(str(e))
  return args


def _train_overrides(items: Sequence[str]) -> dict:
  """--train KEY=VALUE pairs as config.train values of the key's type, checked like a run's."""
  defaults = config_defaults.experiment_config().train
  out = {}
  for item in items:
    key, sep, value = item.partition('=')
    if not sep or key not in defaults:
      raise ValueError(f'--train {item!r}: use KEY=VALUE with a config.train key')
    kind = type(defaults[key])
    out[key] = value.lower() in ('1', 'true', 'yes') if kind is bool else kind(value)
  config = config_defaults.experiment_config()
  config.train.update(out)
  try:
    config_check.validate(config)
  except errors.UserError as e:
    raise ValueError(f'--train: {e}') from None
  return out


def run_config(name: str, args: argparse.Namespace) -> ml_collections.ConfigDict:
  """The experiment config of table method `name`."""
  method, mode, grad = SETTINGS[name]
  c = config_defaults.experiment_config()
  c.method = method
  c.model = ml_collections.ConfigDict(args.model_config.to_dict())
  c.gps.k = args.k
  c.train.update_mode = mode
  c.train.sparse_grad = grad
  c.data.batch_size = args.batch
  for key, value in args.train_overrides.items():
    c.train[key] = value
  return c


# -- the method table ---------------------------------------------------------------
# What gets a ratio to full: <key without _bytes / _s>_ratio (memory_bytes -> memory_ratio).
RATIOS = ('flops', 'memory_bytes', 'wall_s', 'opt_state_bytes', 'trainable_bytes', 'eval_flops')


def _ratio(value, base) -> float | None:
  return None if value is None or not base else value / base


def summarize(
  measured: dict[str, steps.Measured], select: steps.Measured | None, times: dict
) -> dict:
  """{method: numbers and ratios to full} as --json writes it."""
  rows = {}
  for name, m in measured.items():
    wall = statistics.median(times[name])
    rows[name] = {
      **m.stats,
      'memory_bytes': m.stats['memory'].get('peak'),
      'wall_s': wall,
      'images_per_s': m.images / wall,
    }
  full = rows['full']
  for row in rows.values():
    for key in RATIOS:
      row[key.removesuffix('_bytes').removesuffix('_s') + '_ratio'] = _ratio(row[key], full[key])
  if select is not None:
    wall = statistics.median(times[steps.SELECT])
    rows['gps']['select'] = {
      **select.stats,
      'memory_bytes': select.stats['memory'].get('peak'),
      'wall_s': wall,
      'images_per_s': select.images / wall,
      'images_per_s_ratio': (select.images / wall) / full['images_per_s'],
      'memory_ratio': _ratio(select.stats['memory'].get('peak'), full['memory_bytes']),
    }
  return rows


def method_table(args: argparse.Namespace) -> None:
  """Measures every method of --methods (and full), times them in rounds, prints the table."""
  names = args.method_names
  notes = []
  if 'full' not in names:
    names = ['full', *names]
    notes.append('full was added: the ratios are against it.')
  cache: dict = {}
  measured: dict[str, steps.Measured] = {}
  for name in names:
    step_cost.log(f'[benchmark] {name}: building and compiling')
    try:
      measured[name] = steps.measure_train(
        name, run_config(name, args), args.classes, args.batch, args.wall_batch, cache
      )
    except ValueError as e:
      if not methods.get(SETTINGS[name][0]).model:  # only a method's added layers may be missing
        raise
      notes.append(f'{name} skipped: {e}')
  select = None
  if 'gps' in measured:
    step_cost.log('[benchmark] selection step: compiling')
    select = steps.measure_selection(
      run_config('gps', args), args.classes, args.batch, args.wall_batch, args.score_chunks,
      cache,
    )  # fmt: skip
  runs = {n: m.run for n, m in measured.items()}
  if select is not None:
    runs[steps.SELECT] = select.run
  rows = summarize(measured, select, step_cost.time_rounds(runs, args.steps, args.rounds))
  print(benchmark_report.render(rows, args, notes))
  if args.json:
    files.write_json(args.json, rows)


def main(argv: Sequence[str] | None = None) -> int:
  """The tool's entry point: 0, 1 after a user error (one `error:` line), 2 for bad flags."""
  args = parse_args(argv)
  return errors.run(lambda: method_table(args))


if __name__ == '__main__':
  sys.exit(main())
