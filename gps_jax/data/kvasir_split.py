"""Kvasir-SEG as a `gps_jax.data.splits.Split`: image files and their masks as labels.

The examples are {'image': image path, 'label': mask path}; the split's ``decode_label`` is
`decode_kvasir_mask`. Which files form a split is `gps_jax.data.kvasir` (the fixed seeded
80 / 10 / 10 split); `gps_jax.data.splits.open_split` calls `open_kvasir` for source
'kvasir'.
"""

from __future__ import annotations

import os

import tensorflow as tf

from gps_jax.data import folders
from gps_jax.data import kvasir
from gps_jax.data.splits import Split, decode_bytes
from gps_jax.errors import UserError


def _pil_grey(rgb: tf.Tensor) -> tf.Tensor:
  """PIL's ``convert('L')`` of uint8 RGB, int32: (19595 R + 38470 G + 7471 B + 2^15) >> 16."""
  x = tf.cast(rgb, tf.int32)
  return (x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 32768) // 65536


def decode_kvasir_mask(path: tf.Tensor) -> tf.Tensor:
  """uint8 (H, W) of 0 / 1: the mask file at `path`, grey >= kvasir.MASK_THRESHOLD.

  Decodes as :func:`gps_jax.data.kvasir.load_pair` does (PIL), bit for bit:
  JPEG with the accurate integer DCT (TF's default, the fast DCT, moves grey
  values by up to about 15 levels, so edge pixels near the threshold could
  flip), then RGB to grey with PIL's weights (decoding a colour JPEG to one
  channel would take libjpeg's luma instead, which rounds differently).
  """
  data = tf.io.read_file(path)
  rgb = tf.cond(
    tf.io.is_jpeg(data),
    lambda: tf.io.decode_jpeg(data, channels=3, dct_method='INTEGER_ACCURATE'),
    lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
  )
  rgb.set_shape([None, None, 3])
  return tf.cast(_pil_grey(rgb) >= kvasir.MASK_THRESHOLD, tf.uint8)


def open_kvasir(data, role: str, n_cls: int) -> Split:
  """The split `role` of the Kvasir-SEG folder config.data.data_dir (`splits.open_split`)."""
  root = data.data_dir
  if not root:
    raise UserError(
      'config.data.data_dir must name the Kvasir-SEG folder (images/ and masks/) for source '
      '"kvasir"'
    )
  if data.get('synthetic_images', 0):  # the offline set (configs/polyp.py:synthetic)
    kvasir.ensure_synthetic(root, int(data.synthetic_images), int(data.split_seed))
  image_paths, mask_paths = kvasir.split_paths(root, role, seed=data.split_seed)
  kvasir.check_sizes(image_paths, mask_paths)
  ds = tf.data.Dataset.from_tensor_slices(
    {'image': tf.constant(image_paths, tf.string), 'label': tf.constant(mask_paths, tf.string)}
  )
  decode = decode_bytes()

  def find_bad_example():
    for pair in zip(image_paths, mask_paths):
      for path in pair:
        error = folders.image_error(path)
        if error is not None:
          return error
    return None

  name = f'{os.path.basename(os.path.normpath(root))}:{role}'
  return Split(
    name,
    ds,
    len(image_paths),
    n_cls,
    lambda p: decode(tf.io.read_file(p)),
    find_bad_example,
    decode_kvasir_mask,
  )
