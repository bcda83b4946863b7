"""The tiny ViT run that the trainer tests share: its optimizer settings, K random inputs per
neuron, batches, and a NumPy copy of the base (tests/test_sparse_trainer.py,
tests/test_ema_mixup.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from gps_jax import roles as roles_lib
from gps_jax.config_defaults import experiment_config
from gps_jax.models import ViT

from tiny import TINY, random_params

K = 2
STEPS = 10
# Adam eps 1e-4: the key bias has an exactly-zero true gradient (softmax is shift-invariant),
# and with eps 1e-8 Adam would blow its rounding noise (~1e-9) up to full-size steps.
LR, WD, EPS, B1, B2, SMOOTHING = 1e-2, 0.1, 1e-4, 0.9, 0.999, 0.1


def random_indices(rng, fan_in, neurons, k):
  return np.stack([np.sort(rng.choice(fan_in, k, replace=False)) for _ in range(neurons)]).astype(
    np.int32
  )


def make_config(method='gps', mode='sparse'):
  cfg = experiment_config()
  cfg.method = method
  cfg.optim.name = 'adamw'
  cfg.optim.lr = LR
  cfg.optim.weight_decay = WD
  cfg.optim.eps = EPS
  cfg.optim.b1 = B1
  cfg.optim.b2 = B2
  cfg.optim.end_lr = 0.0
  cfg.optim.grad_clip_norm = 0.0
  cfg.train.update_mode = mode
  cfg.train.label_smoothing = SMOOTHING
  return cfg


def make_batches(num, b, seed=0):
  rng = np.random.default_rng(seed)
  return [
    {
      'image': rng.normal(size=(b, 8, 8, 3)).astype(np.float32),
      'label': rng.integers(0, 5, size=b).astype(np.int32),
    }
    for _ in range(num)
  ]


def build_setup():
  """(model, base params, roles, K random indices per neuron, STEPS batches of 8)."""
  model = ViT(**TINY)
  shapes = jax.eval_shape(
    lambda r: model.init(r, jnp.zeros((1, 8, 8, 3)), train=False), jax.random.PRNGKey(0)
  )['params']
  base = random_params(shapes)
  roles = roles_lib.assign_roles(shapes)
  rng = np.random.default_rng(1)
  indices = {
    p: random_indices(rng, r.fan_in, r.num_neurons, K)
    for p, r in roles_lib.leaves_with_role(roles, 'select').items()
  }
  return model, base, roles, indices, make_batches(STEPS, 8)


def copy_of(base):
  return {p: np.array(v, copy=True) for p, v in base.items()}
