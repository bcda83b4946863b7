"""What one train step of each fine-tuning method costs: memory, optimizer state, FLOPs, time.

  # CPU: compiled at batch 32, timed at batch 8 (ViT-B/16: many minutes on 2 cores)
  .venv/bin/python tools/benchmark.py --wall-batch 8
  # GPU, unchanged: compiled and timed at batch 32
  .venv/bin/python tools/benchmark.py --json runs/benchmark.json
  # some methods, another backbone, a smaller ViT
  .venv/bin/python tools/benchmark.py --methods full,gps,lora --model swin_b
  .venv/bin/python tools/benchmark.py --model vit:Ti/16 --image-size 32 --model-override hidden_size=64
  # the per-layer sweep behind gps_jax.sparse_grad.MAX_K_SHARE
  .venv/bin/python tools/benchmark.py --layers --wall-batch 8

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
lacks (VPT outside ViT) is skipped with a note.

--layers: the sweep that sets `gps_jax.sparse_grad.MAX_K_SHARE`. For every kernel shape
(default: the model's MLP fc1 and fc2, q/k/v and attention out) on T tokens (default: wall
batch x tokens per image) and every K of --ks, the forward and backward (gradients of the
layer input and of the delta) of the dense path ``x @ scatter_add(W, idx, delta)`` against
the K-entry path ``sparse_grad.delta_matmul(x, W, idx, delta)``, interleaved over rounds, with XLA's
FLOPs of both, and the largest K / fan-in share up to which the K-entry path is faster for
every shape.
"""

from __future__ import annotations

from gps_jax import quiet

quiet.import_tensorflow()  # gps_jax.experiment imports it: no C++ start-up lines on stderr

import argparse
import ast
import dataclasses
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gps_jax import config_check
from gps_jax import config_defaults
from gps_jax import errors
from gps_jax import experiment
from gps_jax import files
from gps_jax import methods
from gps_jax import roles as roles_lib
from gps_jax import scoring
from gps_jax import selection
from gps_jax import sparse
from gps_jax import sparse_grad
from gps_jax import trainer as trainer_lib
from gps_jax import tree as tree_lib
from gps_jax import updates
from gps_jax import weights
from gps_jax.models import fitting
from gps_jax.models import registry
from gps_jax.models import vit_flops

MIB = 2**20
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
DEFAULT_KS = (1, 2, 4, 8, 16, 32, 64)
SELECT = 'select'  # the selection pass's entry in the timing rounds


def _log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


# -- command line ----------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
  def error(self, message: str):  # one line, no usage block
    errors.print_error(f'{message} (see --help)')
    sys.exit(2)


def _parser() -> argparse.ArgumentParser:
  p = _Parser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
  backbones = ', '.join(config_defaults.BACKBONES)
  p.add_argument('--model', default='vit_b16', help=f'{backbones}, <family>:<variant> (vit:Ti/16)')
  p.add_argument('--model-override', action='append', default=[], metavar='KEY=VALUE',
                 help='a model config field, e.g. hidden_size=64 (repeatable)')  # fmt: skip
  p.add_argument(
    '--train',
    action='append',
    default=[],
    metavar='KEY=VALUE',
    help='a config.train field for every method, e.g. base_dtype=bfloat16 (repeatable)',
  )
  p.add_argument('--image-size', type=int, default=224)
  p.add_argument('--classes', type=int, default=100, help='classes of the task head')
  p.add_argument('--batch', type=int, default=32, help='batch of the FLOPs / memory analysis')
  p.add_argument('--wall-batch', type=int, default=0, help='batch of the timed steps (0: --batch)')
  p.add_argument('--steps', type=int, default=3, help='timed steps per method per round')
  p.add_argument('--rounds', type=int, default=3, help='rounds, methods interleaved')
  p.add_argument('--k', type=int, default=1, help="GPS's K (inputs per neuron)")
  p.add_argument('--score-chunks', type=int, default=1,
                 help="the selection pass's backward in this many chunks (config.gps.score_chunks)")  # fmt: skip
  p.add_argument('--methods', default=','.join(SETTINGS), help='comma-separated, of: %(default)s')
  p.add_argument('--json', default='', metavar='FILE', help='also write the numbers as JSON')
  p.add_argument('--layers', action='store_true', help='the per-layer K-entry sweep instead')
  p.add_argument('--ks', default=','.join(map(str, DEFAULT_KS)), help='--layers: the Ks')
  p.add_argument('--layer-shapes', default='', metavar='NAME=FxN,...',
                 help="--layers: kernels (fan-in x neurons); default: the model's")  # fmt: skip
  p.add_argument('--tokens', type=int, default=0, help='--layers: T (0: wall batch x tokens/image)')
  return p


def _value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _overrides(items: Sequence[str]) -> dict[str, Any]:
  out = {}
  for item in items:
    key, sep, value = item.partition('=')
    if not sep or not key.strip():
      raise ValueError(f'--model-override {item!r}: use KEY=VALUE, e.g. hidden_size=64')
    out[key.strip()] = _value(value.strip())
  return out


def _family_variant(spec: str) -> tuple[str, str]:
  if spec in config_defaults.BACKBONES:
    m = config_defaults.backbone_model(spec)
    return m.name, m.variant
  family, sep, variant = spec.partition(':')
  if not sep:
    owners = [f.name for f in registry.FAMILIES.values() if spec in f.variants]
    if len(owners) > 1:
      raise ValueError(
        f'--model {spec!r}: a variant of {" and ".join(owners)}; write <family>:{spec}'
      )
    if not owners:
      raise ValueError(
        f'--model {spec!r}: use a backbone ({", ".join(config_defaults.BACKBONES)}) or '
        f'<family>:<variant> with a family of {", ".join(registry.FAMILIES)}, e.g. vit:Ti/16'
      )
    return owners[0], spec
  fam = registry.family(family)
  if variant not in fam.variants:
    raise ValueError(f'--model {spec!r}: {family} variants are {", ".join(fam.variants)}')
  return family, variant


def model_config(
  spec: str, image_size: int, classes: int, overrides: dict
) -> ml_collections.ConfigDict:
  """The backbone's model config: a backbone name or <family>:<variant>, plus overrides."""
  family, variant = _family_variant(spec)
  fields = {'image_size': image_size, **overrides}
  size = fields.pop('image_size')
  try:
    return registry.family(family).config(variant, num_classes=classes, image_size=size, **fields)
  except ValueError as e:
    raise ValueError(f'--model-override: {e}') from None


def _ints(text: str, flag: str) -> tuple[int, ...]:
  try:
    values = tuple(int(v) for v in text.split(',') if v.strip())
  except ValueError:
    raise ValueError(f'{flag} {text!r}: want comma-separated integers') from None
  if not values or min(values) < 1:
    raise ValueError(f'{flag} {text!r}: want positive integers')
  return values


def _layer_shapes(text: str) -> list[tuple[str, int, int]]:
  shapes = []
  for i, item in enumerate(s.strip() for s in text.split(',') if s.strip()):
    name, sep, dims = item.rpartition('=')
    f, x, n = dims.partition('x')
    if not (x and f.isdigit() and n.isdigit() and int(f) and int(n)):
      raise ValueError(f'--layer-shapes {item!r}: use [NAME=]FANINxNEURONS, e.g. fc1=768x3072')
    shapes.append((name if sep else f'layer {i}', int(f), int(n)))
  return shapes


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
  if args.wall_batch < 0 or args.tokens < 0:
    parser.error('--wall-batch and --tokens: want 0 (the default) or a positive integer')
  if args.score_chunks < 1 or any(
    (2 * b) % args.score_chunks for b in (args.batch, args.wall_batch)
  ):
    parser.error('--score-chunks: want a positive divisor of the 2 x batch views')
  args.wall_batch = args.wall_batch or args.batch
  try:
    args.overrides = _overrides(args.model_override)
    args.model_config = model_config(args.model, args.image_size, args.classes, args.overrides)
    args.k_list = _ints(args.ks, '--ks')
    args.shapes = _layer_shapes(args.layer_shapes)
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


def backbone(c: ml_collections.ConfigDict, classes: int, cache: dict) -> experiment.Backbone:
  """As `experiment.setup_backbone` builds it (method fields included), with random weights
  on one device; a ValueError when the family lacks the method's layers."""
  model_cfg = experiment.model_config_of(c, classes)
  model = weights.build_model(model_cfg)
  params = random_params(model, cache)
  rules = c.fan_in_rules or roles_lib.DEFAULT_FAN_IN_RULES
  roles = roles_lib.assign_roles(params, methods.rules(c), rules)
  return experiment.Backbone(model, model_cfg, classes, params, roles, None, '', None)


def random_selection(c: ml_collections.ConfigDict, bb: experiment.Backbone, cache: dict):
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


def flops(compiled) -> float | None:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
    cost = cost[0] if cost else None
  return float(cost['flops']) if cost and 'flops' in cost else None


def memory(compiled) -> dict[str, int]:
  """Compiled memory in bytes; peak = arguments + temporaries + outputs - aliased."""
  m = compiled.memory_analysis()
  if m is None:
    return {}
  out = {
    'argument': int(m.argument_size_in_bytes),
    'temp': int(m.temp_size_in_bytes),
    'output': int(m.output_size_in_bytes),
    'alias': int(m.alias_size_in_bytes),
  }
  out['peak'] = out['argument'] + out['temp'] + out['output'] - out['alias']
  return out


def nbytes(tree) -> int:
  return int(sum(np.dtype(x.dtype).itemsize * int(np.prod(x.shape)) for x in jax.tree.leaves(tree)))


def k_entry_kernels(tuner, bb: experiment.Backbone, state, frozen, aux) -> tuple[int, int]:
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
    'flops': flops(train),
    'memory': memory(train),
    'trainable_bytes': nbytes(state.trainable),
    'opt_state_bytes': nbytes(state.opt_state),
    'eval_flops': flops(evaluate),
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
  stats = {'flops': flops(compiled), 'memory': memory(compiled)}
  if args.score_chunks > 1:  # XLA counts a loop body once: the FLOPs of the unrolled chunks
    unrolled = scoring.make_score_step(
      bb.model.apply, candidates, c.gps.temperature, chunks=args.score_chunks, unroll=True
    )
    stats['flops'] = flops(
      unrolled.lower(scores, params, _images(args.batch, size, 2), rng).compile()
    )
  batch = _real(_images(args.wall_batch, size, views=2), args.classes)
  return Measured(SELECT, stats, _runner(timed, scores, (params, batch, rng)), args.wall_batch)


# -- timing ------------------------------------------------------------------------
def time_rounds(
  runs: dict[str, Callable[[], None]], steps: int, rounds: int
) -> dict[str, list[float]]:
  """Seconds of every timed step: per round, each entry in turn runs one warm-up step and
  `steps` timed steps (round-robin, so that drifts of the machine hit every entry alike)."""
  times: dict[str, list[float]] = {name: [] for name in runs}
  for r in range(rounds):
    _log(f'[benchmark] round {r + 1}/{rounds}')
    for name, run in runs.items():
      run()
      for _ in range(steps):
        t0 = time.perf_counter()
        run()
        times[name].append(time.perf_counter() - t0)
  return times


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


def _num(x: float | None) -> str:
  if x is None:
    return 'n/a'
  return f'{x:,.1f}' if abs(x) >= 10 else f'{x:.3g}'


def _times(r: float | None) -> str:
  if r is None:
    return 'n/a'
  return f'{r:.2f}×' if r >= 0.1 else f'{r:.3g}×'


def _mib(b: int | None) -> str:
  return 'n/a' if b is None else _num(b / MIB)


def _giga(f: float | None) -> str:
  return 'n/a' if f is None else _num(f / 1e9)


def _mem_parts(m: dict) -> str:
  if not m:
    return 'n/a'
  return ' / '.join(_mib(m[k]) for k in ('argument', 'temp', 'output', 'alias'))


COLUMNS = (
  'method', 'update rule', 'trainable MiB', 'opt state MiB', 'opt ×', 'GFLOP', 'FLOPs ×',
  'live peak MiB', 'peak ×', 'args / temp / out / alias MiB', 'step ms', 'time ×', 'img/s',
  'eval GFLOP', 'eval ×',
)  # fmt: skip


def _row(name: str, r: dict) -> list[str]:
  return [
    name, r['rule'], _mib(r['trainable_bytes']), _mib(r['opt_state_bytes']),
    _times(r['opt_state_ratio']), _giga(r['flops']), _times(r['flops_ratio']),
    _mib(r['memory_bytes']), _times(r['memory_ratio']), _mem_parts(r['memory']),
    _num(1e3 * r['wall_s']), _times(r['wall_ratio']), _num(r['images_per_s']),
    _giga(r['eval_flops']), _times(r['eval_flops_ratio']),
  ]  # fmt: skip


def markdown(columns: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
  """A markdown table; the first `left` columns left-aligned, the others right-aligned."""
  align = ['---'] * left + ['---:'] * (len(columns) - left)
  lines = [columns, align, *rows]
  return '\n'.join('| ' + ' | '.join(line) + ' |' for line in lines)


def header(args: argparse.Namespace, extra: str) -> str:
  d, n = jax.devices()[0], jax.device_count()
  m = args.model_config
  model = f'{m.name} {m.variant}' + ''.join(f' {k}={v}' for k, v in args.overrides.items())
  used = f' (1 of {n} used)' if n > 1 else ''
  return (
    f'device {d.platform} ({d.device_kind}){used} | model {model} | '
    f'image {m.image_size} px | {extra} | steps {args.steps} | rounds {args.rounds} | '
    f'jax {jax.__version__}'
  )


def _select_line(rows: dict, args: argparse.Namespace) -> str:
  s, full = rows['gps']['select'], rows['full']
  chunks = f', backward in {args.score_chunks} chunks' if args.score_chunks > 1 else ''
  return (
    f'Selection pass (SupCon score step, 2 views per image{chunks}): '
    f'{_num(s["images_per_s"])} img/s at batch {args.wall_batch} ({2 * args.wall_batch} views), '
    f"{_times(s['images_per_s_ratio'])} the images/s of full's train step "
    f'({_num(full["images_per_s"])}); {_giga(s["flops"])} GFLOP, live peak '
    f'{_mib(s["memory_bytes"])} MiB at batch {args.batch}, {_times(s["memory_ratio"])} '
    "full's step."
  )


def _eval_line(rows: dict, args: argparse.Namespace) -> str:
  gps, full = rows['gps']['eval_flops'], rows['full']['eval_flops']
  verdict = 'equal' if gps == full else 'NOT equal'
  return (
    f'Eval step at batch {args.batch} on the merged parameters: gps {_giga(gps)} GFLOP, '
    f'full {_giga(full)} GFLOP: {verdict}.'
  )


def _analytic_line(rows: dict, args: argparse.Namespace) -> str:
  split = vit_flops.step_split(args.model_config, args.classes)
  full = sum(split.values()) * args.batch
  ratio = vit_flops.k_entry_ratio(args.model_config, args.k, args.classes)
  return (
    'Analytic matmul FLOPs per image (gps_jax.models.vit_flops): forward '
    f'{_giga(split["forward"])}, input gradients {_giga(split["input_grads"])}, weight '
    f'gradients {_giga(split["weight_grads"])} GFLOP; a full step at batch {args.batch}: '
    f"{_giga(full)} GFLOP (XLA's count above: {_giga(rows['full']['flops'])}, with the "
    f'elementwise work); with K-entry weight gradients at K = {args.k}: {_times(ratio)} full.'
  )


def _default_grad() -> str:
  return config_defaults.experiment_config().train.sparse_grad


def render(rows: dict, args: argparse.Namespace, notes: list[str]) -> str:
  extra = f'batch {args.batch} (analysis) / {args.wall_batch} (wall) | K {args.k}'
  lines = [header(args, extra), '', markdown(COLUMNS, [_row(n, r) for n, r in rows.items()], 2), '']
  if 'gps' in rows:
    if 'select' in rows['gps']:
      lines.append(_select_line(rows, args))
    lines.append(_eval_line(rows, args))
  if args.model_config.get('name') == 'vit' and 'full' in rows:
    lines.append(_analytic_line(rows, args))
  lines += [
    f"FLOPs and memory: XLA's analysis of the steps compiled at batch {args.batch}; time: "
    f'median of {args.rounds} rounds x {args.steps} timed steps at batch {args.wall_batch} '
    '(methods round-robin, one warm-up step each per round). Ratios are to full.',
    'Random weights; GPS indices: K random inputs per neuron (the selection scores do not '
    "change a step's cost). K-entry a/b: selected kernels on sparse_grad's K-entry path "
    f'(MAX_K_SHARE = {_share(sparse_grad.MAX_K_SHARE)}); gps runs sparse_grad=auto '
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
    _log(f'[benchmark] {name}: building and compiling')
    try:
      measured[name] = measure_method(name, args, cache)
    except ValueError as e:
      if not methods.get(SETTINGS[name][0]).model:  # only a method's added layers may be missing
        raise
      notes.append(f'{name} skipped: {e}')
  select = None
  if 'gps' in measured:
    _log('[benchmark] selection step: compiling')
    select = measure_selection(args, cache)
  runs = {n: m.run for n, m in measured.items()}
  if select is not None:
    runs[SELECT] = select.run
  rows = summarize(measured, select, time_rounds(runs, args.steps, args.rounds))
  print(render(rows, args, notes))
  if args.json:
    files.write_json(args.json, rows)


# -- the per-layer sweep --------------------------------------------------------------
def dense_path(x, w, idx, delta):
  return x @ sparse.scatter_add(w, idx, delta, 1)


def k_entry_path(x, w, idx, delta):
  return sparse_grad.delta_matmul(x, w, idx, delta)


PATHS = {'dense': dense_path, 'k_entry': k_entry_path}


def _fwd_bwd(path: Callable) -> Callable:
  """jit of (x, w, idx, delta, dy) -> (y, dx, d_delta): the base kernel w is frozen."""

  def run(x, w, idx, delta, dy):
    y, vjp = jax.vjp(lambda x_, d_: path(x_, w, idx, d_), x, delta)
    return (y, *vjp(dy))

  return jax.jit(run)


def default_layer_shapes(model) -> list[tuple[str, int, int]]:
  d, mlp, heads = (getattr(model, a, None) for a in ('hidden_size', 'mlp_dim', 'num_heads'))
  if not (d and mlp and heads):
    raise errors.UserError(
      '--layers: this model has no hidden_size / mlp_dim / num_heads; give --layer-shapes'
    )
  return [
    ('mlp fc1', d, mlp),
    ('mlp fc2', mlp, d),
    ('q/k/v', d, d),
    (f'attn out ({heads}·{d // heads})', d, d),
  ]


def tokens_per_image(model) -> int:
  patch, size = getattr(model, 'patch_size', None), getattr(model, 'image_size', None)
  if not (patch and size):
    raise errors.UserError('--layers: tokens per image unknown for this model; give --tokens')
  return (size // patch) ** 2 + 1


def _layer_inputs(fan_in: int, neurons: int, tokens: int, rng: np.random.Generator) -> tuple:
  x = rng.standard_normal((tokens, fan_in), np.float32)
  w = (0.02 * rng.standard_normal((fan_in, neurons), np.float32)).astype(np.float32)
  dy = rng.standard_normal((tokens, neurons), np.float32)
  return tuple(jax.device_put(a) for a in (x, w, dy))


def _entries(fan_in: int, neurons: int, k: int, rng: np.random.Generator) -> tuple:
  idx = np.sort(rng.random((neurons, fan_in)).argsort(axis=1)[:, :k], axis=1).astype(np.int32)
  delta = (0.02 * rng.standard_normal((neurons, k), np.float32)).astype(np.float32)
  return jax.device_put(idx), jax.device_put(delta)


def _layer_cases(shapes, ks, tokens: int) -> tuple[list[dict], dict]:
  """The compiled cases of the sweep, and a runner for each (case index, path)."""
  rng, cases, runs = np.random.default_rng(0), [], {}
  jitted = {name: _fwd_bwd(path) for name, path in PATHS.items()}
  for layer, fan_in, neurons in shapes:
    x, w, dy = _layer_inputs(fan_in, neurons, tokens, rng)
    for k in ks:
      if k > fan_in:
        continue
      idx, delta = _entries(fan_in, neurons, k, rng)
      case = {'layer': layer, 'fan_in': fan_in, 'neurons': neurons, 'tokens': tokens, 'k': k,
              'share': k / fan_in}  # fmt: skip
      for name, fn in jitted.items():
        compiled = fn.lower(x, w, idx, delta, dy).compile()
        case[f'{name}_flops'] = flops(compiled)
        runs[len(cases), name] = _blocking(compiled, (x, w, idx, delta, dy))
      cases.append(case)
  return cases, runs


def _blocking(compiled, args: tuple) -> Callable[[], None]:
  return lambda: jax.block_until_ready(compiled(*args))


def faster_share(rows: list[dict]) -> float:
  """The largest measured K / fan-in up to which the K-entry path is faster on every row."""
  best = 0.0
  for share in sorted({r['share'] for r in rows}):
    if not all(r['k_entry_s'] < r['dense_s'] for r in rows if r['share'] <= share):
      break
    best = share
  return best


def _share(s: float) -> str:
  return f'{s:.4g} (1/{1 / s:,.0f})' if s else 'no measured share'


def layer_table(rows: list[dict], best: float) -> str:
  columns = ('layer', 'F→N', 'K', 'K/fan-in', 'dense ms', 'K-entry ms', 'K-entry / dense',
             'dense GFLOP', 'K-entry GFLOP')  # fmt: skip
  body = [
    [r['layer'], f'{r["fan_in"]}→{r["neurons"]}', str(r['k']), f'{r["share"]:.4g}',
     _num(1e3 * r['dense_s']), _num(1e3 * r['k_entry_s']), _times(r['ratio']),
     _giga(r['dense_flops']), _giga(r['k_entry_flops'])]
    for r in rows
  ]  # fmt: skip
  slower = [r for r in rows if r['k_entry_s'] >= r['dense_s']]
  first = min(slower, key=lambda r: r['share'], default=None)
  verdict = f'the K-entry path is faster on every shape for K/fan-in <= {_share(best)}'
  if first is not None:
    verdict += f'; slower first at {first["layer"]} K={first["k"]} (K/fan-in {first["share"]:.4g})'
  else:
    verdict += ' (every measured share)'
  now = sparse_grad.MAX_K_SHARE
  return '\n'.join([
    markdown(columns, body, 2), '',
    f'{verdict}. gps_jax.sparse_grad.MAX_K_SHARE is {_share(now)}.',
    'Forward + backward (gradients of x and of the delta; W frozen) on random inputs and '
    'K random inputs per neuron; FLOPs: XLA\'s analysis of each compiled case.',
  ])  # fmt: skip


def layer_sweep(args: argparse.Namespace) -> None:
  model = weights.build_model({**args.model_config.to_dict(), 'num_classes': args.classes})
  shapes = args.shapes or default_layer_shapes(model)
  tokens = args.tokens or args.wall_batch * tokens_per_image(model)
  _log(f'[benchmark] --layers: compiling {len(shapes)} shapes x {len(args.k_list)} Ks, T={tokens}')
  cases, runs = _layer_cases(shapes, args.k_list, tokens)
  if not cases:
    raise errors.UserError(f'--ks {args.ks}: every K is larger than every fan-in')
  times = time_rounds({f'{i}/{p}': fn for (i, p), fn in runs.items()}, args.steps, args.rounds)
  for i, case in enumerate(cases):
    case['dense_s'] = statistics.median(times[f'{i}/dense'])
    case['k_entry_s'] = statistics.median(times[f'{i}/k_entry'])
    case['ratio'] = case['k_entry_s'] / case['dense_s']
  best = faster_share(cases)
  extra = f'tokens T {tokens} | Ks {",".join(map(str, args.k_list))}'
  print(header(args, extra) + '\n\n' + layer_table(cases, best))
  if args.json:
    files.write_json(args.json, {'rows': cases, 'faster_up_to_share': best,
                                 'max_k_share': sparse_grad.MAX_K_SHARE})  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
  """The tool's entry point: 0, 1 after a user error (one `error:` line), 2 for bad flags."""
  args = parse_args(argv)
  return errors.run(lambda: (layer_sweep if args.layers else method_table)(args))


if __name__ == '__main__':
  sys.exit(main())
