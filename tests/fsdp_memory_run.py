"""Run in a subprocess by tests/test_fsdp_memory.py on 8 simulated devices: the compiled train
step of gps and full on a (data 8) and an (fsdp 8) mesh; per-device live memory and the
shapes of its all-gathers, as JSON on stdout.

XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/fsdp_memory_run.py
"""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np

from gps_jax import methods
from gps_jax import roles as roles_lib
from gps_jax import sharding as shard_lib
from gps_jax import tree as tree_lib
from gps_jax.config_defaults import experiment_config
from gps_jax.models import ViT
from gps_jax.trainer import MaskedFinetuner

# A batch size that is no dimension of any weight (64 wide, 256 MLP, 4 x 16 heads, 192
# patch inputs, 10 classes), so that a batch-sized gather is never a weight.
BATCH, IMAGE, CLASSES = 48, 64, 10
MESHES = {'data8': {'data': 8, 'fsdp': 1}, 'fsdp8': {'data': 1, 'fsdp': 8}}
ALL_GATHER = re.compile(r'= [a-z0-9]+\[([\d,]*)\][^=]*? all-gather\(')


def compiled_step(method, grad, mesh_spec):
  model = ViT(
    num_classes=CLASSES, patch_size=8, hidden_size=64, num_layers=4, num_heads=4, mlp_dim=256,
    image_size=IMAGE,
  )  # fmt: skip
  shapes = jax.eval_shape(
    lambda r: model.init(r, jnp.zeros((1, IMAGE, IMAGE, 3)), train=False), jax.random.PRNGKey(0)
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
    model.apply, roles, indices, cfg, num_classes=CLASSES, total_steps=10, mesh=mesh
  )
  parts = jax.eval_shape(tuner._parts, tree_lib.flat(shapes))
  batch = {
    'image': jax.ShapeDtypeStruct((BATCH, IMAGE, IMAGE, 3), jnp.float32),
    'label': jax.ShapeDtypeStruct((BATCH,), jnp.int32),
  }
  return tuner.train_step.lower(*parts, batch, jax.random.PRNGKey(0)).compile()


def main():
  out = {}
  for method, grad in (('gps', 'off'), ('gps', 'on'), ('full', 'off')):
    for name, spec in MESHES.items():
      c = compiled_step(method, grad, spec)
      m = c.memory_analysis()
      live = m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes
      gathers = [[int(d) for d in s.split(',') if d] for s in ALL_GATHER.findall(c.as_text())]
      out[f'{method}_{grad}:{name}'] = {
        'live': live - m.alias_size_in_bytes,
        'all_gathers': gathers,
      }
  print(json.dumps(out))


if __name__ == '__main__':
  main()
