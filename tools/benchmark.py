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
"""

from __future__ import annotations

from gps_jax import quiet

quiet.import_tensorflow()  # gps_jax.experiment imports it: no C++ start-up lines on stderr

import argparse
import dataclasses
import statistics
import sys
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gps_jax import config_check
from gps_jax import config_defaults
from gps_jax import errors
from gps_jax import backbone as backbone_lib
from gps_jax import experiment
from gps_jax import files
from gps_jax import methods
from gps_jax import roles as roles_lib
from gps_jax import scoring
from gps_jax import selection
from gps_jax import sparse_grad
from gps_jax import step_cost
from gps_jax import trainer as trainer_lib
from gps_jax import tree as tree_lib
from gps_jax import updates
from gps_jax import weights
from gps_jax.models import fitting
from gps_jax.models import vit_flops

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
SELECT = 'select'  # the selection pass's entry in the timing rounds


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


# -- the model and its random weights ------------------------------------------------
def _random_leaf(path: str, shape: tuple, rng: np.random.Generator) -> np.ndarray:
  if path.endswith('scale'):
    return np.ones(shape, np.float32)
  if path.endswith('bias'):
    return np.zeros(shape, np.float32)
  return (0.02 * rng.standard_normal(shape, np.float32)).astype(np.float32)


def random_params(model, cache: dict) -> dict[str, np.ndarray]:
  """Flat float32 weights from `jax.eval_shape` (nothing compiled): kernels, embeddings and
  prompts ~ N(0, 0.02^2) as timm's init, norm scales 1, biases 0. A (path, shape) already
  drawn for another method's model is shared (`cache`)."""
  rng = np.random.default_rng(0)
  out = {}
  for path, shape in fitting.expected_shapes(model).items():
    if (path, shape) not in cache:
      cache[path, shape] = _random_leaf(path, shape, rng)
    out[path] = cache[path, shape]
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


def backbone(c: ml_collections.ConfigDict, classes: int, cache: dict) -> backbone_lib.Backbone:
  """As `gps_jax.backbone.setup_backbone` builds it (method fields included), with random weights
  on one device; a ValueError when the family lacks the method's layers."""
  model_cfg = backbone_lib.model_config_of(c, classes)
  model = weights.build_model(model_cfg)
  params = random_params(model, cache)
  rules = c.fan_in_rules or roles_lib.DEFAULT_FAN_IN_RULES
  roles = roles_lib.assign_roles(params, methods.rules(c), rules)
  return backbone_lib.Backbone(model, model_cfg, classes, params, roles, None, '', None)


def random_selection(c: ml_collections.ConfigDict, bb: backbone_lib.Backbone, cache: dict):
  """(indices, backbone with the roles after selection): K random inputs per neuron, drawn
  once per method of the registry (gps, gps_dense and gps_kentry share them)."""
  if not roles_lib.leaves_with_role(bb.roles, 'select'):
    return {}, bb
  key = ('selection', c.method)
  if key not in cache:
    scores = scoring.random_scores(bb.roles, jax.random.PRNGKey(1))
    cache[key] = selection.select(scores, c.gps.k, bb.roles, c.gps.level, c.gps.exclude)
  indices, roles = cache[key]
  return indices, dataclasses.replace(bb, roles=roles)


# -- compiled analysis -----------------------------------------------------------------
def _images(batch: int, size: int, views: int = 1) -> dict:
  return {
    'image': jax.ShapeDtypeStruct((views * batch, size, size, 3), jnp.float32),
    'label': jax.ShapeDtypeStruct((batch,), jnp.int32),
  }


def _real(abstract: dict, classes: int) -> dict:
  rng = np.random.default_rng(0)
  image, label = abstract['image'], abstract['label']
  return jax.device_put({
    'image': rng.standard_normal(image.shape, np.float32),
    'label': rng.integers(0, classes, label.shape).astype(np.int32),
  })  # fmt: skip


def k_entry_kernels(tuner, bb: backbone_lib.Backbone, state, frozen, aux) -> tuple[int, int]:
  """(kernels on the K-entry path, selected kernels) of a sparse-delta rule's forward,
  traced abstractly as `updates.SparseDelta.forward` runs it; (0, 0) for another rule."""
  rule = tuner.update
  if not isinstance(rule, updates.SparseDelta) or not state.trainable['delta']:
    return 0, 0
  layout, delta = rule.layout, state.trainable['delta']
  params = tree_lib.unflat({**frozen, **state.trainable['train']})
  seen: dict[str, str] = {}
  size = bb.model_config['image_size']

  def forward(params, delta, images):
    entries = {p: (aux[p], v, layout[p]) for p, v in delta.items()}  # fan_in_ndim: static
    out, paths = sparse_grad.forward(
      bb.model.apply, params, entries, rule.grad, images, train=True,
      rngs={'dropout': jax.random.PRNGKey(0)},
    )  # fmt: skip
    seen.update(paths)
    return out

  jax.eval_shape(forward, params, delta, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  return sum(v == 'sparse' for v in seen.values()), len(seen)


@dataclasses.dataclass
class Measured:
  """One step under test: the numbers of its analysis, and a runner for the timed rounds."""

  name: str
  stats: dict
  run: Callable[[], None]
  images: int  # images per timed step


def _runner(compiled, state, args: tuple) -> Callable[[], None]:
  """Runs `compiled(state, *args)` and waits; the donated state is carried over."""
  box = {'state': state}

  def run():
    box['state'], out = compiled(box['state'], *args)
    jax.block_until_ready(out)

  return run


def _compile_both(fn, fn_args: Callable[[int], tuple], args: argparse.Namespace) -> tuple:
  """`fn` compiled at --batch (analysed) and at --wall-batch (timed; one when they are
  equal); `fn_args(batch size)` gives its arguments."""
  analysed = fn.lower(*fn_args(args.batch)).compile()
  same = args.wall_batch == args.batch
  return analysed, analysed if same else fn.lower(*fn_args(args.wall_batch)).compile()


def make_tuner(name: str, args: argparse.Namespace, cache: dict):
  """(the project's trainer for table method `name`, its backbone)."""
  c = run_config(name, args)
  bb = backbone(c, args.classes, cache)
  indices, bb = random_selection(c, bb, cache)
  tuner = trainer_lib.MaskedFinetuner(
    bb.model.apply, bb.roles, indices, c, num_classes=args.classes, total_steps=1000,
    update=experiment.update_rule(c, bb, indices),
  )  # fmt: skip
  return tuner, bb


def measure_method(name: str, args: argparse.Namespace, cache: dict) -> Measured:
  """The train step of `name` (and its eval step), compiled and analysed."""
  tuner, bb = make_tuner(name, args, cache)
  state, frozen, aux = tuner.init(bb.params)
  size, rng = bb.model_config['image_size'], jax.random.PRNGKey(0)
  train, timed = _compile_both(
    tuner.train_step, lambda b: (state, frozen, aux, _images(b, size), rng), args
  )
  composed = jax.eval_shape(tuner.compose, frozen, aux, state.trainable)
  evaluate = tuner.eval_step.lower(composed, _images(args.batch, size)).compile()
  k_entry, selected = k_entry_kernels(tuner, bb, state, frozen, aux)
  stats = {
    'rule': tuner.mode + (f', K-entry {k_entry}/{selected}' if selected else ''),
    'flops': step_cost.flops(train),
    'memory': step_cost.memory(train),
    'trainable_bytes': step_cost.nbytes(state.trainable),
    'opt_state_bytes': step_cost.nbytes(state.opt_state),
    'eval_flops': step_cost.flops(evaluate),
    'k_entry_kernels': k_entry,
    'selected_kernels': selected,
  }
  batch = _real(_images(args.wall_batch, size), args.classes)
  return Measured(name, stats, _runner(timed, state, (frozen, aux, batch, rng)), args.wall_batch)


def measure_selection(args: argparse.Namespace, cache: dict) -> Measured:
  """GPS's SupCon score step (two views per image) on the plain backbone."""
  c = run_config('gps', args)
  bb = backbone(c, args.classes, cache)
  candidates = list(roles_lib.leaves_with_role(bb.roles, 'select'))
  step = scoring.make_score_step(
    bb.model.apply, candidates, c.gps.temperature, chunks=args.score_chunks
  )
  scores = {p: jnp.zeros(bb.params[p].shape, jnp.float32) for p in candidates}
  params = jax.device_put(bb.params)
  size, rng = bb.model_config['image_size'], jax.random.PRNGKey(0)
  compiled, timed = _compile_both(
    step, lambda b: (scores, params, _images(b, size, views=2), rng), args
  )
  stats = {'flops': step_cost.flops(compiled), 'memory': step_cost.memory(compiled)}
  if args.score_chunks > 1:  # XLA counts a loop body once: the FLOPs of the unrolled chunks
    unrolled = scoring.make_score_step(
      bb.model.apply, candidates, c.gps.temperature, chunks=args.score_chunks, unroll=True
    )
    stats['flops'] = step_cost.flops(
      unrolled.lower(scores, params, _images(args.batch, size, 2), rng).compile()
    )
  batch = _real(_images(args.wall_batch, size, views=2), args.classes)
  return Measured(SELECT, stats, _runner(timed, scores, (params, batch, rng)), args.wall_batch)


# -- the method table ---------------------------------------------------------------
# What gets a ratio to full: <key without _bytes / _s>_ratio (memory_bytes -> memory_ratio).
RATIOS = ('flops', 'memory_bytes', 'wall_s', 'opt_state_bytes', 'trainable_bytes', 'eval_flops')


def _ratio(value, base) -> float | None:
  return None if value is None or not base else value / base


def summarize(measured: dict[str, Measured], select: Measured | None, times: dict) -> dict:
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
    wall = statistics.median(times[SELECT])
    rows['gps']['select'] = {
      **select.stats,
      'memory_bytes': select.stats['memory'].get('peak'),
      'wall_s': wall,
      'images_per_s': select.images / wall,
      'images_per_s_ratio': (select.images / wall) / full['images_per_s'],
      'memory_ratio': _ratio(select.stats['memory'].get('peak'), full['memory_bytes']),
    }
  return rows


def _mem_parts(m: dict) -> str:
  if not m:
    return 'n/a'
  return ' / '.join(step_cost.mib(m[k]) for k in ('argument', 'temp', 'output', 'alias'))


COLUMNS = (
  'method', 'update rule', 'trainable MiB', 'opt state MiB', 'opt ×', 'GFLOP', 'FLOPs ×',
  'live peak MiB', 'peak ×', 'args / temp / out / alias MiB', 'step ms', 'time ×', 'img/s',
  'eval GFLOP', 'eval ×',
)  # fmt: skip


def _row(name: str, r: dict) -> list[str]:
  return [
    name, r['rule'], step_cost.mib(r['trainable_bytes']), step_cost.mib(r['opt_state_bytes']),
    step_cost.times(r['opt_state_ratio']), step_cost.giga(r['flops']), step_cost.times(r['flops_ratio']),
    step_cost.mib(r['memory_bytes']), step_cost.times(r['memory_ratio']), _mem_parts(r['memory']),
    step_cost.num(1e3 * r['wall_s']), step_cost.times(r['wall_ratio']), step_cost.num(r['images_per_s']),
    step_cost.giga(r['eval_flops']), step_cost.times(r['eval_flops_ratio']),
  ]  # fmt: skip


def _select_line(rows: dict, args: argparse.Namespace) -> str:
  s, full = rows['gps']['select'], rows['full']
  chunks = f', backward in {args.score_chunks} chunks' if args.score_chunks > 1 else ''
  return (
    f'Selection pass (SupCon score step, 2 views per image{chunks}): '
    f'{step_cost.num(s["images_per_s"])} img/s at batch {args.wall_batch} ({2 * args.wall_batch} views), '
    f"{step_cost.times(s['images_per_s_ratio'])} the images/s of full's train step "
    f'({step_cost.num(full["images_per_s"])}); {step_cost.giga(s["flops"])} GFLOP, live peak '
    f'{step_cost.mib(s["memory_bytes"])} MiB at batch {args.batch}, {step_cost.times(s["memory_ratio"])} '
    "full's step."
  )


def _eval_line(rows: dict, args: argparse.Namespace) -> str:
  gps, full = rows['gps']['eval_flops'], rows['full']['eval_flops']
  verdict = 'equal' if gps == full else 'NOT equal'
  return (
    f'Eval step at batch {args.batch} on the merged parameters: gps {step_cost.giga(gps)} GFLOP, '
    f'full {step_cost.giga(full)} GFLOP: {verdict}.'
  )


def _analytic_line(rows: dict, args: argparse.Namespace) -> str:
  split = vit_flops.step_split(args.model_config, args.classes)
  full = sum(split.values()) * args.batch
  ratio = vit_flops.k_entry_ratio(args.model_config, args.k, args.classes)
  return (
    'Analytic matmul FLOPs per image (gps_jax.models.vit_flops): forward '
    f'{step_cost.giga(split["forward"])}, input gradients {step_cost.giga(split["input_grads"])}, weight '
    f'gradients {step_cost.giga(split["weight_grads"])} GFLOP; a full step at batch {args.batch}: '
    f"{step_cost.giga(full)} GFLOP (XLA's count above: {step_cost.giga(rows['full']['flops'])}, with the "
    f'elementwise work); with K-entry weight gradients at K = {args.k}: {step_cost.times(ratio)} full.'
  )


def _default_grad() -> str:
  return config_defaults.experiment_config().train.sparse_grad


def render(rows: dict, args: argparse.Namespace, notes: list[str]) -> str:
  extra = f'batch {args.batch} (analysis) / {args.wall_batch} (wall) | K {args.k}'
  head = step_cost.header(args.model_config, args.overrides, extra, args.steps, args.rounds)
  lines = [head, '', step_cost.markdown(COLUMNS, [_row(n, r) for n, r in rows.items()], 2), '']
  if 'gps' in rows:
    if 'select' in rows['gps']:
      lines.append(_select_line(rows, args))
    lines.append(_eval_line(rows, args))
  if vit_flops.applies(args.model_config) and 'full' in rows:
    lines.append(_analytic_line(rows, args))
  lines += [
    f"FLOPs and memory: XLA's analysis of the steps compiled at batch {args.batch}; time: "
    f'median of {args.rounds} rounds x {args.steps} timed steps at batch {args.wall_batch} '
    '(methods round-robin, one warm-up step each per round). Ratios are to full.',
    'Random weights; GPS indices: K random inputs per neuron (the selection scores do not '
    "change a step's cost). K-entry a/b: selected kernels on sparse_grad's K-entry path "
    f'(MAX_K_SHARE = {step_cost.share(sparse_grad.MAX_K_SHARE)}); gps runs sparse_grad=auto '
    f"(the config's default: {_default_grad()}), gps_kentry on, gps_autodiff off.",
    *notes,
  ]
  return '\n'.join(lines)


def method_table(args: argparse.Namespace) -> None:
  names = args.method_names
  notes = []
  if 'full' not in names:
    names = ['full', *names]
    notes.append('full was added: the ratios are against it.')
  cache: dict = {}
  measured: dict[str, Measured] = {}
  for name in names:
    step_cost.log(f'[benchmark] {name}: building and compiling')
    try:
      measured[name] = measure_method(name, args, cache)
    except ValueError as e:
      if not methods.get(SETTINGS[name][0]).model:  # only a method's added layers may be missing
        raise
      notes.append(f'{name} skipped: {e}')
  select = None
  if 'gps' in measured:
    step_cost.log('[benchmark] selection step: compiling')
    select = measure_selection(args, cache)
  runs = {n: m.run for n, m in measured.items()}
  if select is not None:
    runs[SELECT] = select.run
  rows = summarize(measured, select, step_cost.time_rounds(runs, args.steps, args.rounds))
  print(render(rows, args, notes))
  if args.json:
    files.write_json(args.json, rows)


def main(argv: Sequence[str] | None = None) -> int:
  """The tool's entry point: 0, 1 after a user error (one `error:` line), 2 for bad flags."""
  args = parse_args(argv)
  return errors.run(lambda: method_table(args))


if __name__ == '__main__':
  sys.exit(main())
