"""tf.data pipelines over in-memory arrays, yielding numpy dicts for JAX steps.

Inputs are uint8 images, (N, H, W) grayscale or (N, H, W, 3) RGB, and integer
labels (N,). Outputs are float32 images (B, S, S, 3) normalised per channel as
``(x - mean) / std`` with x in [0, 1], and int32 labels. Grayscale images are
tiled to three channels (VTAB style). All randomness is stateless and derived
from the ``seed`` argument, so two iterators with the same seed yield the same
batches whatever the global TF seed.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import tensorflow as tf

from gps_jax.data.augment import hide_gpus_from_tf, supcon_augment

hide_gpus_from_tf()

Batch = dict[str, np.ndarray]
Floats = float | Sequence[float]
_AUTO = tf.data.AUTOTUNE


def _to_float_rgb(x: tf.Tensor) -> tf.Tensor:
  """uint8 (..., H, W, C), C in {1, 3} -> float32 (..., H, W, 3) in [0, 1]."""
  x = tf.cast(x, tf.float32) / 255.0
  if x.shape[-1] == 1:
    x = tf.tile(x, [1] * (x.shape.rank - 1) + [3])
  elif x.shape[-1] != 3:
    raise ValueError(f'expected 1 or 3 channels, got image shape {x.shape}')
  return x


def _normalise(x: tf.Tensor, mean: Floats, std: Floats) -> tf.Tensor:
  return (x - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def preprocess(image_uint8, image_size: int, mean: Floats, std: Floats) -> tf.Tensor:
  """uint8 image -> normalised float32 (S, S, 3) (or (B, S, S, 3) for a batch).

  Accepts (H, W) grayscale, (H, W, C) or a batch (B, H, W, C) with C in {1, 3}.
  Scales to [0, 1], tiles grayscale to RGB, resizes bilinearly to
  (image_size, image_size) ignoring the aspect ratio (skipped when the size
  already matches), then normalises ``(x - mean) / std`` per channel.
  """
  x = tf.convert_to_tensor(image_uint8)
  if x.shape.rank == 2:
    x = x[..., None]
  x = _to_float_rgb(x)
  if tuple(x.shape[-3:-1]) != (image_size, image_size):
    x = tf.image.resize(x, (image_size, image_size), method='bilinear')
  return _normalise(x, mean, std)


def _arrays(images, labels) -> tuple[tf.Tensor, tf.Tensor, int]:
  """Validates the arrays; returns (uint8 NHWC tensor, int32 labels, N)."""
  images, labels = np.asarray(images), np.asarray(labels)
  if images.dtype != np.uint8:
    raise ValueError(f'images must be uint8, got {images.dtype}')
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f'images must be (N, H, W) or (N, H, W, 3), got {images.shape}')
  if labels.shape != (len(images),):
    raise ValueError(f'labels must have shape ({len(images)},), got {labels.shape}')
  return tf.constant(images), tf.constant(labels, tf.int32), len(images)


def _base_seed(seed: int) -> tf.Tensor:
  return tf.constant([seed, 0], tf.int64)


def epoch_permutation(seed: int, n: int, epoch, batch_size: int) -> tf.Tensor:
  """Epoch `epoch`'s shuffled indices, cut to whole batches: a stateless
  permutation drawn from (seed, epoch), so the same seed gives the same order."""
  perm = tf.random.experimental.stateless_shuffle(
    tf.range(n, dtype=tf.int64),
    seed=tf.random.experimental.stateless_fold_in(_base_seed(seed), epoch),
  )
  return perm[: (n // batch_size) * batch_size]


def padded_positions(n: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(indices, mask) of one in-order pass padded to whole batches with example 0."""
  if batch_size < 1:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  pos = np.arange(-(-n // batch_size) * batch_size)
  mask = pos < n
  return np.where(mask, pos, 0).astype(np.int64), mask


def _check_batch(n: int, batch_size: int) -> None:
  if batch_size < 1 or n < batch_size:
    raise ValueError(f'batch_size={batch_size} needs 1 <= batch_size <= {n} examples')


def train_batches(
  images,
  labels,
  *,
  batch_size: int,
  image_size: int,
  mean: Floats,
  std: Floats,
  seed: int,
  num_epochs: int | None = None,
) -> Iterator[Batch]:
  """Shuffled training batches {'image': (B, S, S, 3) f32, 'label': (B,) i32}.

  Each epoch is a fresh permutation drawn from (seed, epoch); the incomplete
  last batch of every epoch is dropped, so an epoch has N // B batches.
  ``num_epochs=None`` repeats forever. No augmentation (VTAB recipe).
  """
  images_t, labels_t, n = _arrays(images, labels)
  _check_batch(n, batch_size)
  steps = n // batch_size

  def epoch_batches(epoch):
    perm = epoch_permutation(seed, n, epoch, batch_size)
    return tf.data.Dataset.from_tensor_slices(tf.reshape(perm, [steps, batch_size]))

  def load(idx):
    image = preprocess(tf.gather(images_t, idx), image_size, mean, std)
    return {'image': image, 'label': tf.gather(labels_t, idx)}

  epochs = tf.data.Dataset.counter() if num_epochs is None else tf.data.Dataset.range(num_epochs)
  ds = epochs.flat_map(epoch_batches).map(load, num_parallel_calls=_AUTO)
  return ds.prefetch(_AUTO).as_numpy_iterator()


def eval_batches(
  images,
  labels,
  *,
  batch_size: int,
  image_size: int,
  mean: Floats,
  std: Floats,
) -> Iterator[Batch]:
  """One in-order pass in fixed-size batches with a boolean 'mask'.

  The last batch is padded to ``batch_size`` with copies of example 0 whose
  'mask' is False; every other entry of every batch has 'mask' True.
  """
  images_t, labels_t, n = _arrays(images, labels)
  idx, mask = padded_positions(n, batch_size)
  num_batches = len(idx) // batch_size
  idx = idx.reshape(num_batches, batch_size)

  def load(idx, mask):
    image = preprocess(tf.gather(images_t, idx), image_size, mean, std)
    return {'image': image, 'label': tf.gather(labels_t, idx), 'mask': mask}

  ds = tf.data.Dataset.from_tensor_slices((idx, mask.reshape(num_batches, batch_size)))
  return ds.map(load, num_parallel_calls=_AUTO).prefetch(_AUTO).as_numpy_iterator()


def two_view_batches(
  images,
  labels,
  *,
  batch_size: int,
  image_size: int,
  mean: Floats,
  std: Floats,
  seed: int,
) -> Iterator[Batch]:
  """One shuffled pass of SupCon two-view batches (drops the last partial one).

  Yields {'image': (2B, S, S, 3) f32, 'label': (B,) i32} where rows [0, B) are
  the first views of the B images and rows [B, 2B) the second views, in the same
  order (view-major, as ``torch.cat(torch.unbind(features, dim=1))``). The view
  v of example i uses seed fold_in(fold_in(fold_in(seed, 1), i), v), so no two
  views or images share a seed; the shuffle uses fold_in(seed, 0).
  """
  images_t, labels_t, n = _arrays(images, labels)
  _check_batch(n, batch_size)
  fold_in = tf.random.experimental.stateless_fold_in
  base = _base_seed(seed)
  perm = tf.random.experimental.stateless_shuffle(
    tf.range(n, dtype=tf.int64), seed=fold_in(base, 0)
  )
  aug_base = fold_in(base, 1)

  def views(i):
    image = _to_float_rgb(tf.gather(images_t, i))
    example_seed = fold_in(aug_base, i)
    pair = tf.stack([supcon_augment(image, fold_in(example_seed, v), image_size) for v in (0, 1)])
    return _normalise(pair, mean, std), tf.gather(labels_t, i)

  def view_major(pairs, label):  # (B, 2, S, S, 3) -> (2B, S, S, 3)
    image = tf.reshape(
      tf.transpose(pairs, [1, 0, 2, 3, 4]), [2 * batch_size, image_size, image_size, 3]
    )
    return {'image': image, 'label': label}

  ds = tf.data.Dataset.from_tensor_slices(perm).map(views, num_parallel_calls=_AUTO)
  ds = ds.batch(batch_size, drop_remainder=True).map(view_major, num_parallel_calls=_AUTO)
  return ds.prefetch(_AUTO).as_numpy_iterator()
