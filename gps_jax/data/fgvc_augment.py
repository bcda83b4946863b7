"""FGVC fine-tuning augmentation: per-image TF transforms and batch mixup/cutmix in JAX.

The recipe (reference README section 2) is timm's ImageNet-style pipeline at 224:

* train (per image, ``tf.data``, stateless): ``RandomResizedCrop(224, scale=(0.08, 1),
  ratio=(3/4, 4/3))`` + ``RandomHorizontalFlip(0.5)`` -> :func:`fgvc_train_image`;
* eval (per image): resize the shorter side to 248 (aspect kept, bilinear), centre crop
  224 -> :func:`fgvc_eval_image` (timm's eval transform with ``crop_pct = 224 / 248``);
* train (per batch, on device): timm ``Mixup(mixup_alpha=0.8, cutmix_alpha=1.0,
  switch_prob=0.5, prob=1.0, mode='batch', correct_lam=True, label_smoothing=0.1)``
  -> :func:`mix_batch`.

Label smoothing: like timm, :func:`mix_batch` smooths each one-hot *before* mixing
(off = s / C, on = 1 - s + off). That equals ``optax.smooth_labels`` applied to the mixed
targets, so smooth exactly once: either pass ``label_smoothing`` here and call
``losses.cross_entropy(..., label_smoothing=0)``, or the other way round — not both.

Differences from torchvision/timm:

* The random resized crop is :func:`gps_jax.data.augment.random_resized_crop`
  (``tf.image.stateless_sample_distorted_bounding_box``; when no valid box is found in
  10 attempts the whole image is used, torchvision uses a central crop) and it resizes
  without antialiasing (torchvision on PIL images antialiases when shrinking).
* The eval resize antialiases when shrinking (like PIL / torchvision), but uses TF's
  triangle kernel rather than PIL's, so values differ slightly from torchvision's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import tensorflow as tf

from gps_jax.data.augment import random_resized_crop  # Also hides GPUs from TF.


def _to_unit_float(resized: tf.Tensor, input_dtype: tf.DType) -> tf.Tensor:
  """``tf.image.resize`` output (float32 on the input's scale) -> float32 in [0, 1]."""
  resized = tf.cast(resized, tf.float32)
  if input_dtype == tf.uint8:
    resized = resized / 255.0
  return tf.clip_by_value(resized, 0.0, 1.0)


def fgvc_train_image(image: tf.Tensor, seed: tf.Tensor, image_size: int = 224) -> tf.Tensor:
  """Random resized crop + horizontal flip (p = 0.5), deterministic in ``seed``.

  Args:
    image: (H, W, 3) RGB, uint8 in [0, 255] (or float in [0, 1]).
    seed: int32/int64 tensor of shape (2,); the output depends only on (image, seed).
    image_size: output side S.

  Returns:
    float32 (S, S, 3) in [0, 1], not yet normalised.
  """
  image = tf.convert_to_tensor(image)
  seeds = tf.random.experimental.stateless_split(seed, 2)
  # Crop the raw image (cheap slice) and let the resize produce float32.
  crop = random_resized_crop(image, seeds[0], image_size)
  crop = _to_unit_float(crop, image.dtype)
  crop = tf.image.stateless_random_flip_left_right(crop, seeds[1])
  return tf.ensure_shape(crop, (image_size, image_size, 3))


def fgvc_eval_image(image: tf.Tensor, image_size: int = 224, resize_size: int = 248) -> tf.Tensor:
  """Shorter side -> ``resize_size`` (aspect kept, bilinear), then centre crop ``image_size``.

  This is torchvision's ``Resize(resize_size)`` + ``CenterCrop(image_size)`` (timm's eval
  transform with ``crop_pct = image_size / resize_size``): the longer side becomes
  ``int(resize_size * long / short)`` (truncated), and the crop offsets are
  ``round((side - image_size) / 2)`` with round-half-to-even, as torchvision computes them.

  Args:
    image: (H, W, 3) RGB, uint8 in [0, 255] (or float in [0, 1]).
    image_size: output side S (must not exceed ``resize_size``).
    resize_size: length of the shorter side after the resize.

  Returns:
    float32 (S, S, 3) in [0, 1], not yet normalised.
  """
  if image_size > resize_size:
    raise ValueError(f'fgvc_eval_image: image_size {image_size} > resize_size {resize_size}')
  image = tf.convert_to_tensor(image)
  shape = tf.shape(image)
  h = tf.cast(shape[0], tf.float64)
  w = tf.cast(shape[1], tf.float64)
  short = tf.minimum(h, w)
  size = tf.constant(float(resize_size), tf.float64)
  new_h = tf.where(h <= w, size, tf.floor(size * h / short))
  new_w = tf.where(h <= w, tf.floor(size * w / short), size)
  new_hw = tf.cast(tf.stack([new_h, new_w]), tf.int32)
  resized = tf.image.resize(image, new_hw, method='bilinear', antialias=True)
  offsets = tf.cast(tf.round(tf.cast(new_hw - image_size, tf.float64) / 2.0), tf.int32)
  crop = tf.slice(resized, tf.concat([offsets, [0]], 0), [image_size, image_size, 3])
  crop = _to_unit_float(crop, image.dtype)
  return tf.ensure_shape(crop, (image_size, image_size, 3))


def _smoothed_one_hot(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
  off = smoothing / num_classes
  on = 1.0 - smoothing + off
  return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * (on - off) + off


def mix_batch(
  rng: jax.Array,
  images: jax.Array,
  labels: jax.Array,
  num_classes: int,
  *,
  mixup_alpha: float = 0.8,
  cutmix_alpha: float = 1.0,
  switch_prob: float = 0.5,
  prob: float = 1.0,
  label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
  """timm ``Mixup`` (mode 'batch', ``correct_lam=True``) as a jittable JAX function.

  With probability ``prob`` one of mixup / cutmix is applied to the whole batch (cutmix
  with probability ``switch_prob`` when both alphas are positive, otherwise whichever
  alpha is positive), with lam ~ Beta(alpha, alpha); each image is mixed with the image
  at the mirrored batch position (``x.flip(0)``; with an odd batch the middle image mixes
  with itself, timm asks for an even batch). Mixup: ``lam * x + (1 - lam) * x_flipped``.
  Cutmix (timm ``rand_bbox``): a box of side ``int(side * sqrt(1 - lam))`` centred at a
  uniform pixel, its half-sides ``cut // 2`` clipped to the image, is pasted from
  ``x_flipped`` and lam is recomputed as ``1 - box_area / (H * W)``.

  Args:
    rng: a JAX PRNG key; the result is a deterministic function of it.
    images: (B, H, W, C) float images (integer inputs are cast to float32).
    labels: (B,) integer class labels.
    num_classes: C for the one-hot targets (static).
    mixup_alpha, cutmix_alpha: Beta parameters; 0 disables that mode (static).
    switch_prob: probability of cutmix when both modes are enabled.
    prob: probability that any mixing is applied to the batch.
    label_smoothing: smoothing s applied to each one-hot before mixing (timm); do not
      smooth again in the loss. ``switch_prob``, ``prob`` and ``label_smoothing`` may be
      traced; ``num_classes`` and the alphas must be static under ``jax.jit``.

  Returns:
    (mixed images, same shape/dtype as ``images`` (float32 for integer inputs),
     soft targets float32 (B, num_classes), rows summing to one:
     ``lam * smooth(onehot(y)) + (1 - lam) * smooth(onehot(y.flip(0)))``).
  """
  if images.ndim != 4:
    raise ValueError(f'mix_batch: images must be (B, H, W, C), got {images.shape}')
  if not jnp.issubdtype(images.dtype, jnp.floating):
    images = images.astype(jnp.float32)
  _, h, w, _ = images.shape
  k_apply, k_switch, k_mix, k_cut, k_cy, k_cx = jax.random.split(rng, 6)

  use_mixup = mixup_alpha > 0
  use_cutmix = cutmix_alpha > 0
  apply = jax.random.uniform(k_apply) < prob
  if use_mixup and use_cutmix:
    is_cutmix = jax.random.uniform(k_switch) < switch_prob
  else:
    is_cutmix = jnp.asarray(use_cutmix)
  if not (use_mixup or use_cutmix):
    apply = jnp.asarray(False)

  flipped = images[::-1]
  out = images
  lam = jnp.float32(1.0)

  if use_mixup:
    lam_mix = jax.random.beta(k_mix, mixup_alpha, mixup_alpha).astype(jnp.float32)
    lam_mix_x = lam_mix.astype(images.dtype)
    mixed = images * lam_mix_x + flipped * (1 - lam_mix_x)
    do_mix = apply & ~is_cutmix
    out = jnp.where(do_mix, mixed, out)
    lam = jnp.where(do_mix, lam_mix, lam)

  if use_cutmix:
    lam_cut = jax.random.beta(k_cut, cutmix_alpha, cutmix_alpha).astype(jnp.float32)
    ratio = jnp.sqrt(1.0 - lam_cut)
    half_h = jnp.floor(h * ratio).astype(jnp.int32) // 2
    half_w = jnp.floor(w * ratio).astype(jnp.int32) // 2
    cy = jax.random.randint(k_cy, (), 0, h)
    cx = jax.random.randint(k_cx, (), 0, w)
    y0, y1 = jnp.clip(cy - half_h, 0, h), jnp.clip(cy + half_h, 0, h)
    x0, x1 = jnp.clip(cx - half_w, 0, w), jnp.clip(cx + half_w, 0, w)
    rows = jnp.arange(h)[:, None]
    cols = jnp.arange(w)[None, :]
    box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)  # (H, W)
    cut = jnp.where(box[None, :, :, None], flipped, images)
    lam_box = 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (h * w)
    do_cut = apply & is_cutmix
    out = jnp.where(do_cut, cut, out)
    lam = jnp.where(do_cut, lam_box, lam)

  y_a = _smoothed_one_hot(labels, num_classes, label_smoothing)
  targets = lam * y_a + (1.0 - lam) * y_a[::-1]
  return out, targets
