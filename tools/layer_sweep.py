"""Where K-entry weight gradients beat the dense ones: one kernel's forward and backward against K.

  .venv/bin/python tools/layer_sweep.py --model vit_b16 --batch 8 --ks 1,2,4,8 --rounds 3
  .venv/bin/python tools/layer_sweep.py --layer-shapes fc1=768x3072,fc2=3072x768 --tokens 6304

The sweep behind `gps_jax.sparse_grad.MAX_K_SHARE` (README "The cost of a step"). For
every kernel shape (default: the model's MLP fc1 and fc2, q/k/v and attention out) on T
tokens (default: --batch x tokens per image) and every K of --ks, the forward and
backward (gradients of the layer input and of the delta; the base kernel frozen) of the
dense path ``x @ scatter_add(W, idx, delta)`` against the K-entry path
``sparse_grad.delta_matmul(x, W, idx, delta)``, timed round-robin over --rounds, with
XLA's FLOPs of both, and the largest K / fan-in share up to which the K-entry path is
faster on every shape. Random inputs, K random fan-in indices per neuron; the times are
one run's on this machine, not a fixed property.
"""

from __future__ import annotations

from gps_jax import quiet

quiet.import_tensorflow()  # gps_jax.weights imports it: no C++ start-up lines on stderr

import argparse
import statistics
import sys
from typing import Callable, Sequence

import jax
import numpy as np

from gps_jax import errors
from gps_jax import files
from gps_jax import sparse
from gps_jax import sparse_grad
from gps_jax import step_cost
from gps_jax import weights

DEFAULT_KS = (1, 2, 4, 8, 16, 32, 64)


# -- command line ----------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
  p = step_cost.Parser(
    description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter
  )
  step_cost.add_model_flags(p)
  p.add_argument('--batch', type=int, default=8, help='images whose tokens make T (see --tokens)')
  p.add_argument('--ks', default=','.join(map(str, DEFAULT_KS)), help='the Ks')
  p.add_argument('--layer-shapes', default='', metavar='NAME=FxN,...',
                 help="kernels (fan-in x neurons); default: the model's")  # fmt: skip
  p.add_argument('--tokens', type=int, default=0, help='T (0: --batch x tokens per image)')
  p.add_argument('--steps', type=int, default=3, help='timed runs per case per round')
  p.add_argument('--rounds', type=int, default=3, help='rounds, cases interleaved')
  p.add_argument('--json', default='', metavar='FILE', help='also write the numbers as JSON')
  return p


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
  for flag in ('image_size', 'classes', 'batch', 'steps', 'rounds'):
    if getattr(args, flag) < 1:
      parser.error(f'--{flag.replace("_", "-")}={getattr(args, flag)}: want a positive integer')
  if args.tokens < 0:
    parser.error('--tokens: want 0 (the default) or a positive integer')
  try:
    args.overrides = step_cost.model_overrides(args.model_override)
    args.model_config = step_cost.model_config(
      args.model, args.image_size, args.classes, args.overrides
    )
    args.k_list = step_cost.ints(args.ks, '--ks')
    args.shapes = _layer_shapes(args.layer_shapes)
  except ValueError as e:
    parser.error(str(e))
  return args


# -- the two paths ---------------------------------------------------------------
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
      'this model has no hidden_size / mlp_dim / num_heads; give --layer-shapes'
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
    raise errors.UserError('tokens per image unknown for this model; give --tokens')
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
        case[f'{name}_flops'] = step_cost.flops(compiled)
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


def layer_table(rows: list[dict], best: float) -> str:
  columns = ('layer', 'F→N', 'K', 'K/fan-in', 'dense ms', 'K-entry ms', 'K-entry / dense',
             'dense GFLOP', 'K-entry GFLOP')  # fmt: skip
  body = [
    [r['layer'], f'{r["fan_in"]}→{r["neurons"]}', str(r['k']), f'{r["share"]:.4g}',
     step_cost.num(1e3 * r['dense_s']), step_cost.num(1e3 * r['k_entry_s']), step_cost.times(r['ratio']),
     step_cost.giga(r['dense_flops']), step_cost.giga(r['k_entry_flops'])]
    for r in rows
  ]  # fmt: skip
  slower = [r for r in rows if r['k_entry_s'] >= r['dense_s']]
  first = min(slower, key=lambda r: r['share'], default=None)
  verdict = f'the K-entry path is faster on every shape for K/fan-in <= {step_cost.share(best)}'
  if first is not None:
    verdict += f'; slower first at {first["layer"]} K={first["k"]} (K/fan-in {first["share"]:.4g})'
  else:
    verdict += ' (every measured share)'
  now = sparse_grad.MAX_K_SHARE
  return '\n'.join([
    step_cost.markdown(columns, body, 2), '',
    f'{verdict}. gps_jax.sparse_grad.MAX_K_SHARE is {step_cost.share(now)}.',
    'Forward + backward (gradients of x and of the delta; W frozen) on random inputs and '
    'K random inputs per neuron; FLOPs: XLA\'s analysis of each compiled case.',
  ])  # fmt: skip


def layer_sweep(args: argparse.Namespace) -> None:
  model = weights.build_model({**args.model_config.to_dict(), 'num_classes': args.classes})
  shapes = args.shapes or default_layer_shapes(model)
  tokens = args.tokens or args.batch * tokens_per_image(model)
  step_cost.log(f'[layer_sweep] compiling {len(shapes)} shapes x {len(args.k_list)} Ks, T={tokens}')
  cases, runs = _layer_cases(shapes, args.k_list, tokens)
  if not cases:
    raise errors.UserError(f'--ks {args.ks}: every K is larger than every fan-in')
  times = step_cost.time_rounds(
    {f'{i}/{p}': fn for (i, p), fn in runs.items()}, args.steps, args.rounds, '[layer_sweep]'
  )
  for i, case in enumerate(cases):
    case['dense_s'] = statistics.median(times[f'{i}/dense'])
    case['k_entry_s'] = statistics.median(times[f'{i}/k_entry'])
    case['ratio'] = case['k_entry_s'] / case['dense_s']
  best = faster_share(cases)
  extra = f'tokens T {tokens} | Ks {",".join(map(str, args.k_list))}'
  head = step_cost.header(args.model_config, args.overrides, extra, args.steps, args.rounds)
  print(head + '\n\n' + layer_table(cases, best))
  if args.json:
    files.write_json(args.json, {'rows': cases, 'faster_up_to_share': best,
                                 'max_k_share': sparse_grad.MAX_K_SHARE})  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
  """The tool's entry point: 0, 1 after a user error (one `error:` line), 2 for bad flags."""
  args = parse_args(argv)
  return errors.run(lambda: layer_sweep(args))


if __name__ == '__main__':
  sys.exit(main())
