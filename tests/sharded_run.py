"""Run in a subprocess by tests/test_sharding.py: selection + 20 train steps, sharded or not.

XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharded_run.py OUT.npz
"""

import sys

import jax
import numpy as np

from gps_jax import methods
from gps_jax import roles as roles_lib
from gps_jax import updates
from gps_jax import tree as tree_lib
from gps_jax import scoring
from gps_jax import selection
from gps_jax import sharding as shard_lib
from gps_jax.config_defaults import experiment_config
from gps_jax.models import ViT
from gps_jax.trainer import MaskedFinetuner

from tiny import TINY, random_params, tiny_shapes

K, STEPS, B = 2, 20, 8
MESHES = {'single': None, 'data4_fsdp2': {'data': 4, 'fsdp': 2}, 'fsdp8': {'data': 1, 'fsdp': 8}}
# GPS trains with K-entry weight gradients everywhere ('on'); 'single_off' is the same run
# with effective kernels and autodiff's dense weight gradients.
RUNS = {**{name: (spec, 'on') for name, spec in MESHES.items()}, 'single_off': (None, 'off')}


def batches(seed):
  rng = np.random.default_rng(seed)
  two_view = [
    {
      'image': rng.normal(size=(2 * B, 8, 8, 3)).astype(np.float32),
      'label': rng.integers(0, 3, size=B).astype(np.int32),
    }
    for _ in range(3)
  ]
  train = [
    {
      'image': rng.normal(size=(B, 8, 8, 3)).astype(np.float32),
      'label': rng.integers(0, 5, size=B).astype(np.int32),
    }
    for _ in range(STEPS)
  ]
  return two_view, train


def run(mesh_spec, params, two_view, train, sparse_grad='on'):
  model = ViT(**TINY)
  mesh = None if mesh_spec is None else shard_lib.make_mesh(mesh_spec)
  roles = roles_lib.assign_roles(tree_lib.unflat(params))
  scores, _ = scoring.accumulate_scores(
    model.apply, params, roles, two_view, jax.random.PRNGKey(0), mesh=mesh
  )
  indices = selection.select_neuron_indices(scores, K, roles)
  cfg = experiment_config()
  cfg.optim.lr, cfg.optim.warmup_steps = 1e-2, 0
  # The key bias has an exactly-zero true gradient (softmax is shift-invariant): with
  # Adam's eps 1e-8 the rounding noise of any reduction order becomes full-size steps.
  cfg.optim.eps = 1e-4
  cfg.train.sparse_grad = sparse_grad
  tuner = MaskedFinetuner(
    model.apply, roles, indices, cfg, num_classes=5, total_steps=STEPS, mesh=mesh
  )
  state, frozen, aux = tuner.init(params)
  sharded = sorted(p for p, v in frozen.items() if 'fsdp' in str(getattr(v.sharding, 'spec', '')))
  losses = []
  for b in train:
    state, m = tuner.train_step(state, frozen, aux, b, jax.random.PRNGKey(1))
    losses.append(float(m['loss']))
  final = tuner.compose_jit(frozen, aux, state.trainable)
  acc = tuner.evaluate(frozen, aux, state, [{**train[0], 'mask': np.ones(B, bool)}])
  out = {f'indices/{p}': np.asarray(v) for p, v in indices.items()}
  out.update({f'final/{p}': np.asarray(v) for p, v in final.items()})
  out['losses'] = np.asarray(losses)
  out['accuracy'] = np.asarray(acc)
  out['num_sharded_frozen'] = np.asarray(len(sharded))
  out['devices'] = np.asarray(1 if mesh is None else mesh.size)
  if sparse_grad == 'off':
    return out
  # The selection pass again with its backward in two chunks of the 16 views (GradCache).
  out.update({f'scores/{p}': np.asarray(v) for p, v in scores.items()})
  chunked, _ = scoring.accumulate_scores(
    model.apply, params, roles, two_view, jax.random.PRNGKey(0), mesh=mesh, chunks=2
  )
  out.update({f'chunked/{p}': np.asarray(v) for p, v in chunked.items()})
  for rule in ('lora', 'ssf'):  # the factored rules on the same mesh
    out.update({f'{rule}_{k}': v for k, v in factored(rule, model, params, cfg, mesh, train).items()})
  return out


def factored(rule, model, params, cfg, mesh, train):
  """20 steps of LoRA or SSF (head and factors trained, base frozen): losses, final params."""
  roles = roles_lib.assign_roles(tree_lib.unflat(params), methods.HEAD_RULES)
  update = updates.make(rule, roles, {}, cfg, seed=0)
  tuner = MaskedFinetuner(
    model.apply, roles, {}, cfg, num_classes=5, total_steps=STEPS, mesh=mesh, update=update
  )
  state, frozen, aux = tuner.init(params)
  losses = []
  for b in train:
    state, m = tuner.train_step(state, frozen, aux, b, jax.random.PRNGKey(1))
    losses.append(float(m['loss']))
  final = tuner.compose_jit(frozen, aux, state.trainable)
  out = {f'final/{p}': np.asarray(v) for p, v in final.items()}
  out['losses'] = np.asarray(losses)
  return out


def main(path):
  params = random_params(tiny_shapes())
  two_view, train = batches(0)
  results = {}
  for name, (spec, grad) in RUNS.items():
    for k, v in run(spec, params, two_view, train, grad).items():
      results[f'{name}:{k}'] = v
  np.savez(path, **results)


if __name__ == '__main__':
  main(sys.argv[1])
