"""SupCon ("SimCLR") view augmentation built only from stateless TF ops.

Each random draw takes a sub-seed split from the caller's ``seed`` (shape (2,)),
so an augmented view is a deterministic function of (image, seed). The recipe
follows the SupCon reference implementation's torchvision transform::

    RandomResizedCrop(size, scale=(0.08, 1.0))   # ratio (3/4, 4/3)
    RandomHorizontalFlip()
    RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)
    RandomGrayscale(p=0.2)

Differences from torchvision: the colour-jitter steps always run in the fixed
order brightness, contrast, saturation, hue (torchvision draws a random order per
image); when no valid crop is found in 10 attempts the whole image is used
(torchvision falls back to a central crop).
"""

from __future__ import annotations

import tensorflow as tf


def hide_gpus_from_tf() -> None:
  """Keeps TF (used only for input pipelines) off the GPUs that JAX owns."""
  try:
    tf.config.set_visible_devices([], 'GPU')
  except (RuntimeError, ValueError):  # Devices already initialised.
    pass


hide_gpus_from_tf()

_NUM_SUBSEEDS = 8


def _gray(image: tf.Tensor) -> tf.Tensor:
  """(H, W, 3) -> (H, W, 1) luma, same weights as torchvision."""
  return tf.image.rgb_to_grayscale(image)


def random_resized_crop(image: tf.Tensor, seed: tf.Tensor, image_size: int) -> tf.Tensor:
  """Crops a random box of area 8-100 % and aspect 3/4-4/3, resized to a square."""
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
    tf.shape(image),
    bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
    seed=seed,
    min_object_covered=0.0,
    aspect_ratio_range=(3.0 / 4.0, 4.0 / 3.0),
    area_range=(0.08, 1.0),
    max_attempts=10,
    use_image_if_no_bounding_boxes=True,
  )
  crop = tf.slice(image, begin, size)
  return tf.image.resize(crop, (image_size, image_size), method='bilinear')


def color_jitter(
  image: tf.Tensor,
  seeds: tf.Tensor,
  brightness: float = 0.4,
  contrast: float = 0.4,
  saturation: float = 0.4,
  hue: float = 0.1,
) -> tf.Tensor:
  """torchvision-style ColorJitter in fixed order; ``seeds`` has shape (4, 2).

  Brightness/contrast/saturation factors are uniform in [1 - x, 1 + x] and blend
  with black, the mean grey level and the grey image respectively (clipped to
  [0, 1] after each step); hue shifts by a uniform delta in [-hue, hue].
  """

  def factor(seed, x):
    return tf.random.stateless_uniform([], seed, 1.0 - x, 1.0 + x)

  image = tf.clip_by_value(image * factor(seeds[0], brightness), 0.0, 1.0)
  c = factor(seeds[1], contrast)
  image = tf.clip_by_value(c * image + (1.0 - c) * tf.reduce_mean(_gray(image)), 0.0, 1.0)
  s = factor(seeds[2], saturation)
  image = tf.clip_by_value(s * image + (1.0 - s) * _gray(image), 0.0, 1.0)
  delta = tf.random.stateless_uniform([], seeds[3], -hue, hue)
  return tf.clip_by_value(tf.image.adjust_hue(image, delta), 0.0, 1.0)


def supcon_augment(image: tf.Tensor, seed: tf.Tensor, image_size: int) -> tf.Tensor:
  """One SupCon view of ``image`` (float32 RGB in [0, 1], shape (H, W, 3)).

  Args:
    image: float32 (H, W, 3) in [0, 1].
    seed: int32/int64 tensor of shape (2,); the view depends only on it.
    image_size: output side S.

  Returns:
    float32 (S, S, 3) in [0, 1], not yet normalised.
  """
  seeds = tf.random.experimental.stateless_split(seed, _NUM_SUBSEEDS)
  image = tf.convert_to_tensor(image, tf.float32)
  image = random_resized_crop(image, seeds[0], image_size)
  image = tf.image.stateless_random_flip_left_right(image, seeds[1])
  apply_jitter = tf.random.stateless_uniform([], seeds[2]) < 0.8
  image = tf.where(apply_jitter, color_jitter(image, seeds[3:7]), image)
  apply_gray = tf.random.stateless_uniform([], seeds[7]) < 0.2
  image = tf.where(apply_gray, tf.image.grayscale_to_rgb(_gray(image)), image)
  image = tf.clip_by_value(image, 0.0, 1.0)
  return tf.ensure_shape(image, (image_size, image_size, 3))
