"""FGVC fine-tuning augmentation: per-image TF transforms and batch mixup/cutmix in JAX.

The recipe (reference README section 2) is timm's ImageNet-style pipeline at 224:

* train (per image, ``tf.data``, stateless): ``RandomResizedCrop(224, scale=(0.08, 1),
  ratio=(3/4, 4/3))`` + ``RandomHorizontalFlip(0.5)`` -> :func:`fgvc_train_image`;
* eval (per image): resize the shorter side to 248 (aspect kept), centre crop
  224 -> :func:`fgvc_eval_image` (timm's eval transform with ``crop_pct = 224 / 248``);
* train (per batch, on device): timm ``Mixup(mixup_alpha=0.8, cutmix_alpha=1.0,
  switch_prob=0.5, prob=1.0, mode='batch', correct_lam=True, label_smoothing=0.1)``
  -> :func:`gps_jax.mixup.mix_batch`, applied inside the jitted train step.

Label smoothing: like timm, :func:`gps_jax.mixup.mix_batch` smooths each one-hot *before* mixing
(off = s / C, on = 1 - s + off). That equals ``optax.smooth_labels`` applied to the mixed
targets, so smooth exactly once: either pass ``label_smoothing`` here and call
``losses.cross_entropy(..., label_smoothing=0)``, or the other way round — not both.

Differences from torchvision/timm:

* The random resized crop is :func:`gps_jax.data.augment.random_resized_crop`
  (``tf.image.stateless_sample_distorted_bounding_box``; when no valid box is found in
  10 attempts the whole image is used, torchvision uses a central crop).
* Interpolation is a choice (:func:`gps_jax.data.augment.resize`). The original (timm
  0.6.5 with the ViT config) crops with 'random' (bilinear or bicubic per image) and
  evaluates with 'bicubic'; configs/fgvc.py sets those. Our 'bicubic' is PIL's kernel
  (antialiased when shrinking) up to float rounding. Our 'bilinear' (the default) crops
  without antialiasing (PIL antialiases when shrinking) and evaluates with TF's
  antialiased triangle kernel, so it differs slightly from PIL's bilinear.
"""

from __future__ import annotations

import tensorflow as tf

# Also hides GPUs from TF.
from gps_jax.data.augment import check_interpolation, random_resized_crop, resize


def _to_unit_float(resized: tf.Tensor, input_dtype: tf.DType) -> tf.Tensor:
  """``tf.image.resize`` output (float32 on the input's scale) -> float32 in [0, 1]."""
  resized = tf.cast(resized, tf.float32)
  if input_dtype == tf.uint8:
    resized = resized / 255.0
  return tf.clip_by_value(resized, 0.0, 1.0)


def fgvc_train_image(
  image: tf.Tensor, seed: tf.Tensor, image_size: int = 224, interpolation: str = 'bilinear'
) -> tf.Tensor:
  """Random resized crop + horizontal flip (p = 0.5), deterministic in ``seed``.

  Args:
    image: (H, W, 3) RGB, uint8 in [0, 255] (or float in [0, 1]).
    seed: int32/int64 tensor of shape (2,); the output depends only on (image, seed).
    image_size: output side S.
    interpolation: 'bilinear' | 'bicubic' | 'random' (per image, from ``seed``).

  Returns:
    float32 (S, S, 3) in [0, 1], not yet normalised.
  """
  image = tf.convert_to_tensor(image)
  seeds = tf.random.experimental.stateless_split(seed, 2)
  # Crop the raw image (cheap slice) and let the resize produce float32.
  crop = random_resized_crop(image, seeds[0], image_size, interpolation)
  crop = _to_unit_float(crop, image.dtype)
  crop = tf.image.stateless_random_flip_left_right(crop, seeds[1])
  return tf.ensure_shape(crop, (image_size, image_size, 3))


def fgvc_eval_image(
  image: tf.Tensor, image_size: int = 224, resize_size: int = 248, interpolation: str = 'bilinear'
) -> tf.Tensor:
  """Shorter side -> ``resize_size`` (aspect kept), then centre crop ``image_size``.

  This is torchvision's ``Resize(resize_size)`` + ``CenterCrop(image_size)`` (timm's eval
  transform with ``crop_pct = image_size / resize_size``): the longer side becomes
  ``int(resize_size * long / short)`` (truncated), and the crop offsets are
  ``round((side - image_size) / 2)`` with round-half-to-even, as torchvision computes them.

  Args:
    image: (H, W, 3) RGB, uint8 in [0, 255] (or float in [0, 1]).
    image_size: output side S (must not exceed ``resize_size``).
    resize_size: length of the shorter side after the resize.
    interpolation: 'bilinear' (TF's antialiased triangle kernel) or 'bicubic' (PIL's);
      no 'random': evaluation has no seed.

  Returns:
    float32 (S, S, 3) in [0, 1], not yet normalised.
  """
  if image_size > resize_size:
    raise ValueError(f'fgvc_eval_image: image_size {image_size} > resize_size {resize_size}')
  check_interpolation(interpolation, allow_random=False, key='fgvc_eval_image: interpolation')
  image = tf.convert_to_tensor(image)
  shape = tf.shape(image)
  h = tf.cast(shape[0], tf.float64)
  w = tf.cast(shape[1], tf.float64)
  short = tf.minimum(h, w)
  size = tf.constant(float(resize_size), tf.float64)
  new_h = tf.where(h <= w, size, tf.floor(size * h / short))
  new_w = tf.where(h <= w, tf.floor(size * w / short), size)
  new_hw = tf.cast(tf.stack([new_h, new_w]), tf.int32)
  resized = resize(image, new_hw, interpolation, bilinear_antialias=True)
  offsets = tf.cast(tf.round(tf.cast(new_hw - image_size, tf.float64) / 2.0), tf.int32)
  crop = tf.slice(resized, tf.concat([offsets, [0]], 0), [image_size, image_size, 3])
  crop = _to_unit_float(crop, image.dtype)
  return tf.ensure_shape(crop, (image_size, image_size, 3))
