"""NumPy references and a tiny run stage shared by the selection ablation tests
(tests/test_selection_levels.py, test_selection_scores.py, test_selection_training.py;
tests/ is on sys.path under pytest)."""

import jax
import jax.numpy as jnp
import numpy as np
from tiny import TINY, random_params, tiny_shapes

from gps_jax import backbone as backbone_lib
from gps_jax import select_stage as select_stage_lib
from gps_jax import roles as roles_lib
from gps_jax import tree as tree_lib
from gps_jax.checkpoint import file_sha256
from gps_jax.config_defaults import experiment_config
from gps_jax.data import splits as splits_lib
from gps_jax.models import ViT
from gps_jax.vit_npz import save_vit_npz

# The tiny ViT (width 16, MLP 32, 2 blocks): 16 patch-embedding neurons and 112 per block
# (q, k, v: 3 x 16, out: 16, MLP: 32 + 16), as tests/test_mask_stats.py counts by hand.
NEURONS = 16 + 2 * 112
BLOCK0 = 'Transformer/encoderblock_0/'


def tiny_selection():
  """(params, roles, the `select` leaves) of the tiny ViT: the tests' `tiny` fixture."""
  shapes = tiny_shapes()
  params = random_params(shapes)
  roles = roles_lib.assign_roles(shapes)
  select = roles_lib.leaves_with_role(roles, 'select')
  return params, roles, select


def distinct_scores(select, seed=0):
  """Signed scores whose magnitudes are all different over the whole net (no ties)."""
  rng = np.random.default_rng(seed)
  total = sum(r.size for r in select.values())
  mags = (rng.permutation(total) + 1).astype(np.float32) / total
  out, at = {}, 0
  for p, r in select.items():
    m = mags[at : at + r.size].reshape(r.shape)
    out[p] = np.where(rng.random(r.shape) < 0.5, -m, m).astype(np.float32)
    at += r.size
  return out


def ref_layer(score, n):
  """The n flattened positions of the largest |score| (NumPy, ascending)."""
  return np.sort(np.argsort(-np.abs(score).ravel(), kind='stable')[:n])


def ref_net(scores, n):
  """{path: positions}: the global top n of |score| over all leaves (NumPy)."""
  paths = sorted(scores)
  values = np.concatenate([np.abs(scores[p]).ravel() for p in paths])
  owner = np.concatenate([np.full(scores[p].size, i) for i, p in enumerate(paths)])
  pos = np.concatenate([np.arange(scores[p].size) for p in paths])
  top = np.argsort(-values, kind='stable')[:n]
  return {p: np.sort(pos[top][owner[top] == i]) for i, p in enumerate(paths)}


def ref_neuron(score, fan_in_ndim, k):
  fan_in = int(np.prod(score.shape[:fan_in_ndim]))
  rows = np.abs(score).reshape(fan_in, -1).T
  return np.sort(np.argsort(-rows, axis=1, kind='stable')[:, :k], axis=1)


def count(indices):
  return sum(int(np.size(v)) for v in indices.values())


def np_masks(roles, indices):
  """Element masks from the indices, by NumPy scatter into the (fan_in, neurons) view."""
  out = {}
  for p, r in tree_lib.flat(roles).items():
    if r.role == 'select':
      fan_in = int(np.prod(r.shape[: r.fan_in_ndim]))
      m = np.zeros((fan_in, int(np.prod(r.shape[r.fan_in_ndim :]))), bool)
      idx = np.asarray(indices[p])
      m[idx, np.arange(idx.shape[0])[:, None]] = True
      out[p] = m.reshape(r.shape)
    else:
      out[p] = np.full(r.shape, r.role == 'train')
  return out


# ----------------------------------------------------------------------------- run stages


def make_stage(root):
  """A tiny backbone (its base on disk, under `root`), a 16-image split and a config for
  the stages: the tests' `stage` fixture."""
  shapes = tiny_shapes()
  params = random_params(shapes)
  base_file = str(root / 'base.npz')
  save_vit_npz(base_file, tree_lib.unflat({p: v for p, v in params.items() if 'head/' not in p}))
  model_config = {'name': 'vit', 'variant': '', **TINY, 'mean': (0.5,) * 3, 'std': (0.5,) * 3}
  model = ViT(**TINY)
  roles = roles_lib.assign_roles(shapes)
  bb = backbone_lib.Backbone(
    model,
    model_config,
    5,
    {p: jnp.asarray(v) for p, v in params.items()},
    roles,
    None,
    base_file,
    file_sha256(base_file),
  )
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(16, 8, 8, 3), dtype=np.uint8)
  split = splits_lib.memory_split('toy:train', images, np.arange(16) % 5, 5)
  return {'root': root, 'bb': bb, 'split': split, 'base_file': base_file, 'params': params}


def stage_config(**gps):
  c = experiment_config()
  c.model.image_size = 8
  c.data.name = 'toy'
  c.data.batch_size = 8
  c.gps.batch_size = 8
  c.gps.update(gps)
  return c


def select_stage(stage, config, workdir=None, bb=None):
  return select_stage_lib.select_indices(
    config, bb or stage['bb'], stage['split'], jax.random.PRNGKey(1), 7, workdir
  )
