"""Bytes of a GPS delta of ViT-B/16 against the dense model, at K = 1, 2 and 20.

  python tools/delta_bytes.py [--ks 1,2,20] [--num-classes 100]

For ViT-B/16 at 224 (gps_jax.models.vit_config) with the GPS roles, on abstract
shapes (jax.eval_shape: no dense weights are made):

* counted: int32 indices + float32 values of every selected neuron's K
  entries + the float32 trained leaves (head, biases);
* on disk: a delta with random values saved by gps_jax.checkpoint.save_delta
  (the orbax directory, every file in it, plus its manifest) and exported by
  gps_jax.delta.export_delta to .safetensors, in a temporary folder;

against the dense model's float32 bytes, with the ratio.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from gps_jax import checkpoint
from gps_jax import delta as delta_lib
from gps_jax import roles as roles_lib
from gps_jax import tree as tree_lib
from gps_jax.models import build_vit, vit_config


def _dir_bytes(path: str) -> int:
  total = 0
  for root, _, files in os.walk(path):
    total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
  return total


def _distinct_indices(rng, fan_in: int, neurons: int, k: int) -> np.ndarray:
  """(neurons, k) int32: k distinct random inputs per neuron, in random order (as top-K)."""
  idx = rng.integers(0, fan_in, size=(neurons, k))
  while True:
    ordered = np.sort(idx, axis=1)
    bad = np.nonzero(np.any(ordered[:, 1:] == ordered[:, :-1], axis=1))[0]
    if not bad.size:
      return idx.astype(np.int32)
    idx[bad] = rng.integers(0, fan_in, size=(bad.size, k))


def _random_result(select, trained, k: int, seed: int) -> dict:
  rng = np.random.default_rng(seed)
  indices, values = {}, {}
  for p, r in select.items():
    indices[p] = _distinct_indices(rng, r.fan_in, r.num_neurons, k)
    values[p] = rng.normal(size=(r.num_neurons, k)).astype(np.float32)
  train = {p: rng.normal(size=r.shape).astype(np.float32) for p, r in trained.items()}
  return {'indices': indices, 'delta': values, 'train': train}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--ks', default='1,2,20', help='comma-separated K values')
  parser.add_argument('--num-classes', type=int, default=100)
  args = parser.parse_args(argv)
  ks = [int(k) for k in args.ks.split(',')]

  model_config = vit_config('B/16', num_classes=args.num_classes, image_size=224)
  model = build_vit(model_config)
  shapes = jax.eval_shape(
    lambda r: model.init(r, jnp.zeros((1, 224, 224, 3)), train=False)['params'],
    jax.random.PRNGKey(0),
  )
  roles = roles_lib.assign_roles(shapes)
  select = roles_lib.leaves_with_role(roles, 'select')
  trained = roles_lib.leaves_with_role(roles, 'train')
  dense = 4 * sum(math.prod(r.shape) for r in tree_lib.flat(roles).values())
  neurons = sum(r.num_neurons for r in select.values())
  train_bytes = 4 * sum(r.size for r in trained.values())
  print(
    f'ViT-B/16, 224, {args.num_classes} classes: dense float32 {dense:,} bytes; '
    f'{neurons:,} selected neurons in {len(select)} leaves; '
    f'{len(trained)} trained leaves of {train_bytes:,} bytes'
  )
  header = (
    f'{"K":>3}{"indices B":>13}{"values B":>13}{"trained B":>12}{"counted B":>13}'
    f'{"ratio":>9}{"orbax dir B":>14}{"ratio":>9}{"safetensors B":>15}{"ratio":>9}'
  )
  print(header)
  with tempfile.TemporaryDirectory() as tmp:
    for k in ks:
      result = _random_result(select, trained, k, seed=k)
      idx_b = sum(v.nbytes for v in result['indices'].values())
      val_b = sum(v.nbytes for v in result['delta'].values())
      assert idx_b == val_b == 4 * neurons * k
      counted = idx_b + val_b + train_bytes
      path = os.path.join(tmp, f'k{k}')
      manifest = checkpoint.make_manifest(
        method='gps',
        k=k,
        model=model_config.to_dict(),
        base_path=None,
        base_sha256=None,
        select_roles=select,
      )
      checkpoint.save_delta(path, result, manifest)
      on_disk = _dir_bytes(path) + os.path.getsize(checkpoint.manifest_path(path))
      export = os.path.join(tmp, f'k{k}.safetensors')
      delta_lib.export_delta(delta_lib.load(path), export)
      exported = os.path.getsize(export)
      print(
        f'{k:>3}{idx_b:>13,}{val_b:>13,}{train_bytes:>12,}{counted:>13,}{counted / dense:>9.4f}'
        f'{on_disk:>14,}{on_disk / dense:>9.4f}{exported:>15,}{exported / dense:>9.4f}'
      )


if __name__ == '__main__':
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
  main()
