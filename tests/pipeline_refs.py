"""Test images, splits and batch checks shared by the input-pipeline tests
(tests/test_input_train_order.py, test_input_sharding.py, test_input_recipes.py; tests/ is on
sys.path under pytest; no tests here)."""

import numpy as np

from gps_jax.data import input_pipeline as ip
from gps_jax.data.splits import memory_split

MEAN = (0.1, 0.2, 0.3)
STD = (0.5, 0.25, 2.0)
S = 8  # output side of every test image


def noise_images(n, h=16, w=16, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def id_images(n, h=8, w=8):
  """Constant images of value 10 * id, so a pixel names its example (n <= 26)."""
  return np.ascontiguousarray(
    np.broadcast_to((10 * np.arange(n, dtype=np.uint8))[:, None, None, None], (n, h, w, 3))
  )


def split_of(images, labels=None):
  labels = np.arange(len(images)) if labels is None else np.asarray(labels)
  return memory_split('test', images, labels, int(labels.max()) + 1)


def resize_fns(size=S):
  return ip.recipe_image_fns('resize', size, 0.0, 1.0)


def fgvc_fns(size=S, **kw):
  return ip.recipe_image_fns('fgvc', size, MEAN, STD, **kw)


def take(iterator, k):
  return [next(iterator) for _ in range(k)]


def labels_of(batches):
  return np.concatenate([b['label'] for b in batches])


def check_ids(batches):
  """Constant id images through the 'resize' recipe (mean 0, std 1): pixel = 10 * id / 255."""
  for b in batches:
    keep = b.get('mask', np.ones(len(b['label']), bool))
    want = 10 * b['label'][keep, None, None, None] / 255.0
    assert keep.any()
    np.testing.assert_allclose(b['image'][keep] - want, 0.0, atol=1e-6)
