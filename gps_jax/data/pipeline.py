"""The VTAB-style image transform: uint8 -> resized, normalised float32 RGB.

Used by the 'resize' recipe of :mod:`gps_jax.data.input_pipeline` (VTAB-1k and
the demo), which holds the batching, shuffling and sharding for every source.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from gps_jax.data.augment import hide_gpus_from_tf, resize

hide_gpus_from_tf()

Floats = float | Sequence[float]


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


def preprocess(
  image_uint8,
  image_size: int,
  mean: Floats,
  std: Floats,
  interpolation: str = 'bilinear',
  seed: tf.Tensor | None = None,
) -> tf.Tensor:
  """uint8 image -> normalised float32 (S, S, 3) (or (B, S, S, 3) for a batch).

  Accepts (H, W) grayscale, (H, W, C) or a batch (B, H, W, C) with C in {1, 3}.
  Scales to [0, 1], tiles grayscale to RGB, resizes to (image_size, image_size)
  ignoring the aspect ratio (skipped when the size already matches, as PIL does),
  then normalises ``(x - mean) / std`` per channel.

  ``interpolation`` (:func:`gps_jax.data.augment.resize`): 'bilinear' (default,
  no antialiasing), 'bicubic' (PIL's, antialiased when shrinking: the original's
  VTAB resize, ``transforms.Resize((S, S), BICUBIC)``) or 'random' (one draw from
  ``seed`` per call, so per image when called per image).
  """
  x = tf.convert_to_tensor(image_uint8)
  if x.shape.rank == 2:
    x = x[..., None]
  x = _to_float_rgb(x)
  if tuple(x.shape[-3:-1]) != (image_size, image_size):
    x = resize(x, (image_size, image_size), interpolation, seed=seed)
  return _normalise(x, mean, std)
