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

The crop's resize interpolation is a choice (:func:`resize`, :data:`INTERPOLATIONS`):
'bilinear' (our default, no antialiasing), 'bicubic' (PIL-like, which the original
GPS code uses through timm's ViT config) or 'random' (timm's train default: bilinear or
bicubic, drawn per image from the seed).
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

INTERPOLATIONS = ('bilinear', 'bicubic', 'random')
# Folded into an image's seed to draw its 'random' interpolation, so the draw is
# independent of the other uses of that seed (the crop box) and leaves them unchanged.
_INTERPOLATION_SALT = 0x1B1C
# tf.image.resize's bicubic with antialias=True is TF's scale_and_translate with the
# Keys cubic kernel (a = -0.5), stretched by the downscale factor and renormalised at
# the borders: PIL's BICUBIC filter, which torchvision/timm use on PIL images (within
# 0.003 of 255 against PIL on float images; mean 0.28 of 255 against PIL's uint8
# output, which rounds after each pass). Without antialiasing TF samples only 4 taps
# whatever the scale: mean 7.8, max 127 of 255 from PIL shrinking a photo to 224.
# tests/test_interpolation.py holds these numbers.
_BICUBIC_ANTIALIAS = True


def check_interpolation(name: str, *, allow_random: bool = True, key: str = 'interpolation') -> str:
  """Returns ``name`` if it is a known interpolation (``key`` names it in the error)."""
  allowed = INTERPOLATIONS if allow_random else INTERPOLATIONS[:2]
  if name not in allowed:
    raise ValueError(f'{key}={name!r}: use one of {", ".join(allowed)}')
  return name


def resize(
  image: tf.Tensor,
  size,
  interpolation: str = 'bilinear',
  *,
  seed: tf.Tensor | None = None,
  bilinear_antialias: bool = False,
) -> tf.Tensor:
  """``tf.image.resize`` to ``size`` (h, w) with a named interpolation; float32 out.

  * 'bilinear': ``tf.image.resize(method='bilinear', antialias=bilinear_antialias)``,
    exactly what each caller did before the interpolation became a choice.
  * 'bicubic': PIL's bicubic (see ``_BICUBIC_ANTIALIAS``), clipped to the input's
    range (uint8: [0, 255], float: [0, 1]) since the cubic kernel overshoots and PIL
    saturates to uint8.
  * 'random': one of the two above, each with probability 1/2, drawn from ``seed``
    (shape (2,)) folded with a constant: per image, deterministic, like timm's
    ``RandomResizedCropAndInterpolation(interpolation='random')``.
  """
  check_interpolation(interpolation)
  image = tf.convert_to_tensor(image)

  def bilinear():
    return tf.image.resize(image, size, method='bilinear', antialias=bilinear_antialias)

  def bicubic():
    out = tf.image.resize(image, size, method='bicubic', antialias=_BICUBIC_ANTIALIAS)
    top = 255.0 if image.dtype == tf.uint8 else 1.0
    return tf.clip_by_value(tf.cast(out, tf.float32), 0.0, top)

  if interpolation == 'bilinear':
    return bilinear()
  if interpolation == 'bicubic':
    return bicubic()
  if seed is None:
    raise ValueError("interpolation='random' needs a per-image seed")
  return tf.cond(random_is_bicubic(seed), bicubic, bilinear)


def random_is_bicubic(seed: tf.Tensor) -> tf.Tensor:
  """The 'random' interpolation's draw for an image's ``seed``: True = bicubic."""
  seed = tf.convert_to_tensor(seed)
  choice_seed = tf.random.experimental.stateless_fold_in(seed, _INTERPOLATION_SALT)
  return tf.random.stateless_uniform([], choice_seed) < 0.5


def _gray(image: tf.Tensor) -> tf.Tensor:
  """(H, W, 3) -> (H, W, 1) luma, same weights as torchvision."""
  return tf.image.rgb_to_grayscale(image)


def crop_box(image: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """(begin, size) of the random resized crop's box for ``seed``: area 8-100 %, aspect
  3/4-4/3, the whole image when 10 attempts find none."""
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
  return begin, size


def random_resized_crop(
  image: tf.Tensor, seed: tf.Tensor, image_size: int, interpolation: str = 'bilinear'
) -> tf.Tensor:
  """Crops a random box of area 8-100 % and aspect 3/4-4/3, resized to a square.

  The box depends only on ``seed``; ``interpolation`` (see :func:`resize`, 'random'
  drawn from the same seed) changes only how the box is resized.
  """
  begin, size = crop_box(image, seed)
  crop = tf.slice(image, begin, size)
  return resize(crop, (image_size, image_size), interpolation, seed=seed)


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


def supcon_augment(
  image: tf.Tensor, seed: tf.Tensor, image_size: int, interpolation: str = 'bilinear'
) -> tf.Tensor:
  """One SupCon view of ``image`` (float32 RGB in [0, 1], shape (H, W, 3)).

  Args:
    image: float32 (H, W, 3) in [0, 1].
    seed: int32/int64 tensor of shape (2,); the view depends only on it.
    image_size: output side S.
    interpolation: of the crop's resize, see :func:`resize`.

  Returns:
    float32 (S, S, 3) in [0, 1], not yet normalised.
  """
  seeds = tf.random.experimental.stateless_split(seed, _NUM_SUBSEEDS)
  image = tf.convert_to_tensor(image, tf.float32)
  image = random_resized_crop(image, seeds[0], image_size, interpolation)
  image = tf.image.stateless_random_flip_left_right(image, seeds[1])
  apply_jitter = tf.random.stateless_uniform([], seeds[2]) < 0.8
  image = tf.where(apply_jitter, color_jitter(image, seeds[3:7]), image)
  apply_gray = tf.random.stateless_uniform([], seeds[7]) < 0.2
  image = tf.where(apply_gray, tf.image.grayscale_to_rgb(_gray(image)), image)
  image = tf.clip_by_value(image, 0.0, 1.0)
  return tf.ensure_shape(image, (image_size, image_size, 3))
