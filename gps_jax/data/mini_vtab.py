"""Mini-VTAB: a small offline VTAB-1k-style suite of 28×28 tasks (configs/mini_vtab.py).

Every task is a fixed pool of uint8 (28, 28) images with int32 labels, cut into
800 train / 200 val / the rest test by a permutation of ``split_seed`` (as
``mnist_5k``); the pool itself is drawn from a fixed per-task seed, so every
run and every process sees the same images.

Natural tasks (real images, never the upstream's training images):

* ``digits8x8``: scikit-learn's 1,797 8×8 handwritten digits (bundled with
  scikit-learn, no download), intensities 0..16 scaled to 0..255, upsampled ×3
  bilinearly to 24×24 and padded by 2 to 28×28; 10 classes; test = 797.
* ``fashion_groups``: Fashion-MNIST TEST images only (the upstream trains on the
  60,000 training images), shrunk to 14..22 px and placed at a random position
  of the 28×28 canvas (a domain shift the upstream never saw), labelled with a
  regrouping of the 10 classes into 4 (:data:`FASHION_GROUPS`).

Structured tasks, drawn with NumPy only (anti-aliased by 4×4 supersampling:
`gps_jax.data.shapes`), in the spirit of VTAB's dSprites / CLEVR: each
generator draws the label first, then drawing parameters consistent with it
(so classes are balanced), and returns ``(images, labels, params)``; the
labels follow from ``params``.

* ``dsprites_loc``: one shape (square / ellipse / triangle, random size,
  rotation, intensity, y); label = x of its centre in 8 bins.
* ``dsprites_ori``: one elongated shape (bar or ellipse, random position, size,
  aspect, intensity); label = its orientation (mod 180°) in 8 bins.
* ``clevr_count``: 1..6 separated objects of random shape, size, intensity;
  label = count - 1.
* ``clevr_dist``: two objects of random shape, size, intensity; label = the
  distance between their centres: near / middle / far (:data:`DIST_BINS`,
  with gaps between the bins).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from gps_jax.data import shapes
from gps_jax.data.shapes import SHAPES, SIZE

TRAIN, VAL = 800, 200
NUM_TEST = 2000  # the generated tasks' pool is TRAIN + VAL + NUM_TEST

# Fashion-MNIST class -> group of ``fashion_groups``.
FASHION_CLASSES = (
  'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
  'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot',
)  # fmt: skip
FASHION_GROUP_NAMES = ('tops', 'bottoms+dresses', 'footwear', 'bags')
FASHION_GROUPS = np.array(
  [
    0,  # T-shirt/top -> tops
    1,  # Trouser -> bottoms+dresses
    0,  # Pullover -> tops
    1,  # Dress -> bottoms+dresses
    0,  # Coat -> tops
    2,  # Sandal -> footwear
    0,  # Shirt -> tops
    2,  # Sneaker -> footwear
    3,  # Bag -> bags
    2,  # Ankle boot -> footwear
  ],
  np.int32,
)

# Drawing ranges of the structured tasks (pixel units, centre of pixel i is i + 0.5).
LOC_RANGE = (6.0, 22.0)  # x of the centre, cut into LOC_BINS equal bins
LOC_BINS = 8
ORI_BINS = 8  # over [0, pi)
COUNT_MAX = 6
# Bins of the distance between two centres (near / middle / far), 2.5 px apart.
DIST_BINS = ((10.0, 13.0), (15.5, 18.5), (21.0, 25.0))
# Least gap between the discs that hold two objects (count, dist): more than
# 2 * sqrt(2) px, so no pixel that one object touches is an 8-neighbour of one that
# the other touches, and the objects are separate 8-connected blobs.
MIN_GAP = 3.0


# ----------------------------------------------------------------------------- generators


def _balanced_labels(rng, n: int, num_classes: int) -> np.ndarray:
  return rng.permutation(np.arange(n) % num_classes).astype(np.int32)


def bin_of(value, edges) -> np.ndarray:
  """Index of the bin [edges[i], edges[i+1]) that value falls in."""
  return np.clip(np.searchsorted(np.asarray(edges), value, side='right') - 1, 0, len(edges) - 2)


def loc_edges() -> np.ndarray:
  return np.linspace(*LOC_RANGE, LOC_BINS + 1)


def ori_edges() -> np.ndarray:
  return np.linspace(0.0, np.pi, ORI_BINS + 1)


def gen_dsprites_loc(n: int, seed: int):
  """One shape; label = bin of its centre's x over LOC_RANGE (LOC_BINS bins)."""
  rng = np.random.default_rng(seed)
  grid = shapes.subpixel_grid()
  labels = _balanced_labels(rng, n, LOC_BINS)
  edges = loc_edges()
  kind = rng.integers(0, len(SHAPES), n)
  radius = rng.uniform(2.5, 4.5, n)
  cx = rng.uniform(edges[labels], edges[labels + 1])
  cy = rng.uniform(6.0, 22.0, n)
  angle = rng.uniform(0, 2 * np.pi, n)
  intensity = rng.uniform(0.35, 1.0, n)
  params = dict(kind=kind, cx=cx, cy=cy, radius=radius, angle=angle, intensity=intensity)
  return shapes.render_each(params, SHAPES, grid), labels, params


def gen_dsprites_ori(n: int, seed: int):
  """One bar or ellipse of aspect 2.5..4; label = bin of its angle mod pi (ORI_BINS bins).

  The angle is counter-clockwise from +x with y pointing up (image rows down).
  """
  rng = np.random.default_rng(seed)
  grid = shapes.subpixel_grid()
  labels = _balanced_labels(rng, n, ORI_BINS)
  edges = ori_edges()
  kind = rng.integers(0, 2, n)  # 0 bar ('square' stretched), 1 ellipse
  radius = rng.uniform(5.0, 8.0, n)
  aspect = rng.uniform(2.5, 4.0, n)
  angle = rng.uniform(edges[labels], edges[labels + 1])
  margin = radius + 1.0
  cx = rng.uniform(margin, SIZE - margin)
  cy = rng.uniform(margin, SIZE - margin)
  intensity = rng.uniform(0.35, 1.0, n)
  params = dict(
    kind=kind, cx=cx, cy=cy, radius=radius, aspect=aspect, angle=angle, intensity=intensity
  )
  return shapes.render_each(params, ('square', 'ellipse'), grid), labels, params


def gen_clevr_count(n: int, seed: int):
  """1..COUNT_MAX objects, MIN_GAP apart; label = count - 1.

  params hold (n, COUNT_MAX) arrays, NaN (kind -1) past the count.
  """
  rng = np.random.default_rng(seed)
  grid = shapes.subpixel_grid()
  labels = _balanced_labels(rng, n, COUNT_MAX)
  shape = (n, COUNT_MAX)
  kind = np.full(shape, -1)
  cx, cy, radius, angle, intensity = (np.full(shape, np.nan) for _ in range(5))
  images = np.zeros((n, SIZE, SIZE), np.uint8)
  for i in range(n):
    k = labels[i] + 1
    while True:
      kinds = rng.integers(0, len(SHAPES), k)
      radii = rng.uniform(1.5, 3.0, k)
      centres = shapes.place_apart(rng, kinds, radii, MIN_GAP)
      if centres is not None:
        break
    angles = rng.uniform(0, 2 * np.pi, k)
    inten = rng.uniform(0.35, 1.0, k)
    kind[i, :k], radius[i, :k], angle[i, :k], intensity[i, :k] = kinds, radii, angles, inten
    cx[i, :k], cy[i, :k] = centres[:, 0], centres[:, 1]
    images[i] = shapes.render(shapes.objects_of(kinds, centres, radii, angles, inten), grid)
  params = dict(kind=kind, cx=cx, cy=cy, radius=radius, angle=angle, intensity=intensity)
  return images, labels, params


def gen_clevr_dist(n: int, seed: int):
  """Two objects; label = which of the DIST_BINS the distance of their centres is in.

  The bins leave gaps between them, so that no label hangs on a fraction of a pixel.
  """
  rng = np.random.default_rng(seed)
  grid = shapes.subpixel_grid()
  bins = np.asarray(DIST_BINS)
  labels = _balanced_labels(rng, n, len(bins))
  kind = rng.integers(0, len(SHAPES), (n, 2))
  radius = rng.uniform(1.5, 2.5, (n, 2))
  angle = rng.uniform(0, 2 * np.pi, (n, 2))
  intensity = rng.uniform(0.35, 1.0, (n, 2))
  cx, cy = np.zeros((n, 2)), np.zeros((n, 2))
  images = np.zeros((n, SIZE, SIZE), np.uint8)
  for i in range(n):
    ext = np.array([shapes.shape_extent(SHAPES[k], r) for k, r in zip(kind[i], radius[i])])
    lo, hi = bins[labels[i]]
    lo = max(lo, ext.sum() + MIN_GAP)
    while True:
      dist = rng.uniform(lo, hi)
      theta = rng.uniform(0, 2 * np.pi)
      off = dist * np.array([np.cos(theta), np.sin(theta)])
      # first centre such that both discs lie inside the image
      lo_c = np.maximum(ext[0] + 0.5, ext[1] + 0.5 - off)
      hi_c = np.minimum(SIZE - 0.5 - ext[0], SIZE - 0.5 - ext[1] - off)
      if np.all(hi_c > lo_c):
        break
    c0 = rng.uniform(lo_c, hi_c)
    centres = np.stack([c0, c0 + off])
    cx[i], cy[i] = centres[:, 0], centres[:, 1]
    objects = shapes.objects_of(kind[i], centres, radius[i], angle[i], intensity[i])
    images[i] = shapes.render(objects, grid)
  params = dict(kind=kind, cx=cx, cy=cy, radius=radius, angle=angle, intensity=intensity)
  return images, labels, params


def dist_label(dist) -> np.ndarray:
  """The DIST_BINS index of each distance; -1 in the gaps between bins."""
  dist = np.asarray(dist)
  out = np.full(dist.shape, -1)
  for j, (lo, hi) in enumerate(DIST_BINS):
    out[(dist >= lo) & (dist < hi)] = j
  return out


# ----------------------------------------------------------------------------- natural


def resize_bilinear(images: np.ndarray, out: int) -> np.ndarray:
  """Bilinear resize of float (N, h, w) to (N, out, out), half-pixel centres, edge clamp."""
  _, h, w = images.shape

  def axis(src, dst):
    pos = np.clip((np.arange(dst) + 0.5) * src / dst - 0.5, 0, src - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, src - 1)
    return lo, hi, (pos - lo).astype(np.float32)

  y0, y1, fy = axis(h, out)
  x0, x1, fx = axis(w, out)
  rows = images[:, y0] * (1 - fy)[None, :, None] + images[:, y1] * fy[None, :, None]
  return rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx


def load_digits8x8():
  """scikit-learn's 1,797 8×8 digits as uint8 (N, 28, 28): ×3 bilinear + 2 px border."""
  try:
    from sklearn.datasets import load_digits
  except ModuleNotFoundError as e:
    raise ModuleNotFoundError(
      'the digits8x8 task reads the digits bundled with scikit-learn (installed with '
      'mlxtend: `pip install gps_jax[demo]`)'
    ) from e
  d = load_digits()
  small = d.images.astype(np.float32) * (255.0 / 16.0)
  big = resize_bilinear(small, 24)
  images = np.zeros((len(big), SIZE, SIZE), np.uint8)
  images[:, 2:26, 2:26] = np.clip(np.round(big), 0, 255).astype(np.uint8)
  return images, d.target.astype(np.int32)


def fashion_test_indices(seed: int = 0) -> np.ndarray:
  """Indices into the 10,000 Fashion-MNIST test images that fashion_groups uses."""
  return np.random.default_rng(seed).permutation(10000)[: TRAIN + VAL + NUM_TEST]


def gen_fashion_groups(n: int, seed: int, data_dir: str | None = None):
  """n Fashion-MNIST test images shrunk to 14..22 px at a random place; 4 groups.

  params: ``index`` into the test set, ``fashion_label`` (original class),
  ``size``, ``x0``, ``y0`` (top-left corner of the pasted image).
  """
  from gps_jax.data import sources

  test_images, test_labels = sources.load_fashion_mnist(
    'test', data_dir or sources.DEFAULT_FASHION_MNIST_DIR
  )
  rng = np.random.default_rng(seed)
  index = rng.permutation(len(test_images))[:n]
  size = rng.integers(14, 23, n)
  x0 = np.array([rng.integers(0, SIZE - s + 1) for s in size])
  y0 = np.array([rng.integers(0, SIZE - s + 1) for s in size])
  images = np.zeros((n, SIZE, SIZE), np.uint8)
  for s in np.unique(size):
    sel = np.flatnonzero(size == s)
    small = _shrink(test_images[index[sel]].astype(np.float32), int(s))
    for j, i in enumerate(sel):
      images[i, y0[i] : y0[i] + s, x0[i] : x0[i] + s] = small[j]
  fashion_label = test_labels[index]
  params = dict(index=index, fashion_label=fashion_label, size=size, x0=x0, y0=y0)
  return images, FASHION_GROUPS[fashion_label], params


def _shrink(images: np.ndarray, out: int) -> np.ndarray:
  """Area-averaging downscale of float (N, 28, 28) to (N, out, out), as uint8."""
  h = images.shape[1]
  # exact area weights: overlap of source pixel [j, j+1) with target pixel [i, i+1)*h/out
  edges = np.arange(out + 1) * h / out
  src = np.arange(h)
  w = np.clip(
    np.minimum(edges[1:, None], src[None] + 1) - np.maximum(edges[:-1, None], src[None]), 0, None
  )
  w /= w.sum(1, keepdims=True)
  small = np.einsum('ij,njk,lk->nil', w, images, w)
  return np.clip(np.round(small), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- the suite

GENERATORS: dict[str, Callable] = {
  'dsprites_loc': gen_dsprites_loc,
  'dsprites_ori': gen_dsprites_ori,
  'clevr_count': gen_clevr_count,
  'clevr_dist': gen_clevr_dist,
}
# task: (number of classes, generation seed, description)
TASKS: dict[str, tuple[int, int, str]] = {
  'digits8x8': (10, 0, 'scikit-learn 8x8 handwritten digits upsampled to 28x28 (10 digits)'),
  'fashion_groups': (
    4,
    1,
    (
      'Fashion-MNIST test images shrunk and moved, 4 garment groups '
      '(tops / bottoms+dresses / footwear / bags)'
    ),
  ),
  'dsprites_loc': (LOC_BINS, 2, f'x position of one random shape ({LOC_BINS} bins)'),
  'dsprites_ori': (ORI_BINS, 3, f'orientation of one bar or ellipse ({ORI_BINS} bins of 22.5°)'),
  'clevr_count': (COUNT_MAX, 4, f'number of shapes, 1..{COUNT_MAX}'),
  'clevr_dist': (
    len(DIST_BINS),
    5,
    'distance between two shapes: 10-13, 15.5-18.5 or 21-25 px',
  ),
}


@functools.cache
def task_pool(name: str, data_dir: str | None = None):
  """(images, labels, params) of the whole pool of task ``name``; read-only, cached."""
  if name not in TASKS:
    raise ValueError(f'unknown mini-VTAB task {name!r}; valid: {sorted(TASKS)}')
  _, gen_seed, _ = TASKS[name]
  if name == 'digits8x8':
    images, labels = load_digits8x8()
    params = {}
  elif name == 'fashion_groups':
    images, labels, params = gen_fashion_groups(TRAIN + VAL + NUM_TEST, gen_seed, data_dir)
  else:
    images, labels, params = GENERATORS[name](TRAIN + VAL + NUM_TEST, gen_seed)
  for a in (images, labels, *params.values()):
    a.setflags(write=False)
  return images, labels, params


def split_indices(name: str, split: str, seed: int = 0, data_dir: str | None = None) -> np.ndarray:
  """Indices into task_pool(name) of ``split`` (train 800, val 200, trainval, test)."""
  from gps_jax.data import sources

  images, _, _ = task_pool(name, data_dir)
  idx = sources.split_counts(len(images), seed, {'train': TRAIN, 'val': VAL, 'test': None})
  idx['trainval'] = np.concatenate([idx['train'], idx['val']])
  if split not in idx:
    raise ValueError(f'{name}: unknown split {split!r}; valid: {sorted(idx)}')
  return idx[split]


def load_task(name: str, split: str, data_dir: str | None = None, seed: int = 0):
  """(uint8 images (N, 28, 28), int32 labels) of ``split`` of task ``name``."""
  images, labels, _ = task_pool(name, data_dir)
  idx = split_indices(name, split, seed, data_dir)
  return images[idx], labels[idx]
