"""Per-device memory of the sharded train step: data parallel against FSDP, on simulated devices.

Compiles (never runs) `MaskedFinetuner`'s train step of each method on a
(data=N) and an (fsdp=N) mesh of N simulated CPU devices at the same global
batch, and prints XLA's per-device live peak (arguments + temporaries + outputs
- aliased) and the all-gathers of the compiled step: how many, and those of a
batch-sized array (activations moved between devices, which FSDP should never
need). Random weights, K = 1 random inputs per neuron for GPS.

  .venv/bin/python tools/fsdp_memory.py --model S/16 --batch 64
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--model', default='S/16', help='ViT variant (Ti/16, S/16, B/16, ...)')
  p.add_argument('--image-size', type=int, default=224)
  p.add_argument('--batch', type=int, default=64, help='global batch')
  p.add_argument('--devices', type=int, default=8, help='simulated CPU devices')
  p.add_argument('--classes', type=int, default=100)
  p.add_argument(
    '--set', action='append', default=[], metavar='KEY=VALUE',
    help='a ViT config field, e.g. hidden_size=64 (repeatable)',
  )  # fmt: skip
  p.add_argument('--json', default='', metavar='FILE', help='also write the numbers as JSON')
  p.add_argument(
    '--runs', default='gps:off,gps:on,full:off',
    help='method:sparse_grad pairs (config.method, config.train.sparse_grad)',
  )  # fmt: skip
  return p


ALL_GATHER = re.compile(r'= [a-z0-9]+\[([\d,]*)\][^=]*? all-gather\(')


def measure(args, method: str, grad: str, mesh_spec: dict) -> tuple[float, list]:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from gps_jax import methods
  from gps_jax import roles as roles_lib
  from gps_jax import sharding as shard_lib
  from gps_jax import step_cost
  from gps_jax import tree as tree_lib
  from gps_jax.config_defaults import experiment_config
  from gps_jax.models import build_vit, vit_config
  from gps_jax.trainer import MaskedFinetuner

  size = args.image_size
  overrides = {k: int(v) for k, v in (kv.split('=', 1) for kv in args.set)}
  model = build_vit(vit_config(args.model, num_classes=args.classes, image_size=size, **overrides))
  shapes = jax.eval_shape(
    lambda r: model.init(r, jnp.zeros((1, size, size, 3)), train=False), jax.random.PRNGKey(0)
  )['params']
  roles = roles_lib.assign_roles(shapes, methods.get(method).rules)
  indices = {
    p: np.zeros((r.num_neurons, 1), np.int32)
    for p, r in roles_lib.leaves_with_role(roles, 'select').items()
  }
  cfg = experiment_config()
  cfg.train.sparse_grad = grad
  mesh = shard_lib.make_mesh(mesh_spec)
  tuner = MaskedFinetuner(
    model.apply, roles, indices, cfg, num_classes=args.classes, total_steps=10, mesh=mesh
  )
  parts = jax.eval_shape(tuner._parts, tree_lib.flat(shapes))
  batch = {
    'image': jax.ShapeDtypeStruct((args.batch, size, size, 3), jnp.float32),
    'label': jax.ShapeDtypeStruct((args.batch,), jnp.int32),
  }
  compiled = tuner.train_step.lower(*parts, batch, jax.random.PRNGKey(0)).compile()
  gathers = [
    tuple(int(d) for d in s.split(',') if d) for s in ALL_GATHER.findall(compiled.as_text())
  ]
  return step_cost.memory(compiled)['peak'] / step_cost.MIB, gathers


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  runs = [r.split(':') for r in args.runs.split(',')]
  if any(len(r) != 2 or r[1] not in ('off', 'on', 'auto') for r in runs):
    print(f'error: --runs={args.runs!r}: give method:off|on|auto pairs', file=sys.stderr)
    return 2
  if any('=' not in kv or not kv.split('=', 1)[1].isdigit() for kv in args.set):
    print(f'error: --set {args.set}: give KEY=INTEGER fields of the ViT config', file=sys.stderr)
    return 2
  if args.batch % args.devices:
    print(
      f'error: --batch={args.batch} must be a multiple of --devices={args.devices}', file=sys.stderr
    )
    return 2
  flags = os.environ.get('XLA_FLAGS', '')
  os.environ['XLA_FLAGS'] = f'{flags} --xla_force_host_platform_device_count={args.devices}'
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  print(
    f'ViT {args.model}, {args.image_size} px, global batch {args.batch} on {args.devices} '
    'simulated devices; per-device compiled live peak (MiB) and all-gathers of the train step'
  )
  print('\n| method | sparse_grad | mesh | live peak MiB | all-gathers | batch-sized all-gathers |')
  print('|---|---|---|---:|---:|---|')
  n = args.devices
  out = {}
  for method, grad in runs:
    for name, spec in (
      (f'data={n}', {'data': n, 'fsdp': 1}),
      (f'fsdp={n}', {'data': 1, 'fsdp': n}),
    ):
      try:
        live, gathers = measure(args, method, grad, spec)
      except ValueError as e:  # an unknown variant or method, a field that does not fit
        print(f'error: {e}', file=sys.stderr)
        return 2
      out[f'{method}:{grad}:{name}'] = {'live_mib': live, 'all_gathers': gathers}
      batchy = [s for s in gathers if s and s[0] in (args.batch, 2 * args.batch)]
      shown = ', '.join('x'.join(map(str, s)) for s in batchy[:3]) + (
        ' ...' if len(batchy) > 3 else ''
      )
      print(
        f'| {method} | {grad} | {name} | {live:,.1f} | {len(gathers)} | {len(batchy)} {shown} |'
      )
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(out, f)
  return 0


if __name__ == '__main__':
  sys.exit(main())
