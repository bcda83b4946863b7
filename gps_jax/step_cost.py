"""What a compiled step costs, and how the cost tools name a backbone and print their tables.

Shared by tools/benchmark.py (every method's train step), tools/layer_sweep.py (one
kernel's forward and backward against K) and tools/fsdp_memory.py: XLA's FLOPs and
compiled memory of a `jax.stages.Compiled`, the bytes of a pytree, round-robin timing,
the ``--model`` / ``--model-override`` flags, and markdown with the numbers' formats.
"""

from __future__ import annotations

import argparse
import ast
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import ml_collections
import numpy as np

from gps_jax import config_defaults
from gps_jax import errors
from gps_jax.models import registry

MIB = 2**20


def log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


class Parser(argparse.ArgumentParser):
  """An argument parser whose errors are one `error:` line (exit status 2), no usage block."""

  def error(self, message: str):
    errors.print_error(f'{message} (see --help)')
    sys.exit(2)


# -- XLA's analysis of a compiled step ---------------------------------------------
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


def time_rounds(
  runs: Mapping[str, Callable[[], None]], steps: int, rounds: int, tag: str = '[benchmark]'
) -> dict[str, list[float]]:
  """Seconds of every timed step: per round, each entry in turn runs one warm-up step and
  `steps` timed steps (round-robin, so that drifts of the machine hit every entry alike)."""
  times: dict[str, list[float]] = {name: [] for name in runs}
  for r in range(rounds):
    log(f'{tag} round {r + 1}/{rounds}')
    for name, run in runs.items():
      run()
      for _ in range(steps):
        t0 = time.perf_counter()
        run()
        times[name].append(time.perf_counter() - t0)
  return times


# -- the backbone flags ------------------------------------------------------------
def add_model_flags(p: argparse.ArgumentParser) -> None:
  backbones = ', '.join(config_defaults.BACKBONES)
  p.add_argument('--model', default='vit_b16', help=f'{backbones}, <family>:<variant> (vit:Ti/16)')
  p.add_argument('--model-override', action='append', default=[], metavar='KEY=VALUE',
                 help='a model config field, e.g. hidden_size=64 (repeatable)')  # fmt: skip
  p.add_argument('--image-size', type=int, default=224)
  p.add_argument('--classes', type=int, default=100, help='classes of the task head')


def _literal(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def model_overrides(items: Sequence[str]) -> dict[str, Any]:
  """--model-override KEY=VALUE pairs, values read as Python literals where they parse."""
  out = {}
  for item in items:
    key, sep, value = item.partition('=')
    if not sep or not key.strip():
      raise ValueError(f'--model-override {item!r}: use KEY=VALUE, e.g. hidden_size=64')
    out[key.strip()] = _literal(value.strip())
  return out


def family_variant(spec: str) -> tuple[str, str]:
  """(family, variant) of a --model spec: a backbone name or <family>:<variant>."""
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
  family, variant = family_variant(spec)
  fields = {'image_size': image_size, **overrides}
  size = fields.pop('image_size')
  try:
    return registry.family(family).config(variant, num_classes=classes, image_size=size, **fields)
  except ValueError as e:
    raise ValueError(f'--model-override: {e}') from None


def ints(text: str, flag: str) -> tuple[int, ...]:
  """Comma-separated positive integers of `flag`."""
  try:
    values = tuple(int(v) for v in text.split(',') if v.strip())
  except ValueError:
    raise ValueError(f'{flag} {text!r}: want comma-separated integers') from None
  if not values or min(values) < 1:
    raise ValueError(f'{flag} {text!r}: want positive integers')
  return values


# -- printing ----------------------------------------------------------------------
def num(x: float | None) -> str:
  if x is None:
    return 'n/a'
  return f'{x:,.1f}' if abs(x) >= 10 else f'{x:.3g}'


def times(r: float | None) -> str:
  if r is None:
    return 'n/a'
  return f'{r:.2f}×' if r >= 0.1 else f'{r:.3g}×'


def mib(b: int | None) -> str:
  return 'n/a' if b is None else num(b / MIB)


def giga(f: float | None) -> str:
  return 'n/a' if f is None else num(f / 1e9)


def markdown(columns: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
  """A markdown table; the first `left` columns left-aligned, the others right-aligned."""
  align = ['---'] * left + ['---:'] * (len(columns) - left)
  lines = [columns, align, *rows]
  return '\n'.join('| ' + ' | '.join(line) + ' |' for line in lines)


def header(
  m: ml_collections.ConfigDict, overrides: Mapping, extra: str, steps: int, rounds: int
) -> str:
  """The first line of a table: device, model, image size, `extra`, timing, jax version."""
  d, n = jax.devices()[0], jax.device_count()
  model = f'{m.name} {m.variant}' + ''.join(f' {k}={v}' for k, v in overrides.items())
  used = f' (1 of {n} used)' if n > 1 else ''
  return (
    f'device {d.platform} ({d.device_kind}){used} | model {model} | '
    f'image {m.image_size} px | {extra} | steps {steps} | rounds {rounds} | '
    f'jax {jax.__version__}'
  )


def share(s: float) -> str:
  """A K / fan-in share with its reciprocal: '0.002604 (1/384)'."""
  return f'{s:.4g} (1/{1 / s:,.0f})' if s else 'no measured share'
