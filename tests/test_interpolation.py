"""Resize interpolation (config.data.*_interpolation) against PIL / torchvision.

The original GPS code (timm 0.6.5) resizes PIL images with torchvision, i.e. with
PIL's resampling filters: 'bicubic' (the ViT config's interpolation) for VTAB and
FGVC eval, 'random' (bilinear or bicubic per image) for FGVC train crops and the
SupCon views. These tests hold our TF resizes to that reference, check the
per-image 'random' draw, and pin the default ('bilinear') to the old pixels.
"""

import os

import numpy as np
import pytest

torchvision = pytest.importorskip('torchvision')  # Before TF: see conftest.py (triton).
import PIL.Image
import tensorflow as tf
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from gps_jax.config_defaults import experiment_config
from gps_jax.data import augment
from gps_jax.data import input_pipeline as ip
from gps_jax.data.fgvc_augment import fgvc_eval_image, fgvc_train_image
from gps_jax.data.pipeline import preprocess
from gps_jax.data.sources import DEFAULT_FASHION_MNIST_DIR, load_fashion_mnist
from gps_jax.data.splits import memory_split

BICUBIC = InterpolationMode.BICUBIC

# Measured differences, in 0..255 units, of our 'bicubic' (tf.image.resize(method='bicubic',
# antialias=True) on float32, clipped) from PIL's BICUBIC through torchvision:
#
#                                         PIL on float ('F')       PIL on uint8 (what timm sees)
#                                         max     mean             max    mean   99th pct
#   china.jpg 427x640 -> 224x224          0.0031  0.0002           2.24   0.28   0.77
#   china.jpg -> short side 248, crop 224    -       -             7.14   0.28   0.79
#   Fashion-MNIST 28x28 -> 224x224        0.0001  0.0000           23     0.32   3.8
#
# Against PIL on float images the kernel is PIL's (Keys cubic a = -0.5, stretched by
# the shrink factor, renormalised at the borders) up to float32 rounding. On uint8
# images PIL also rounds to uint8 after each of its two 1-D passes and clips the
# intermediate: the mean residual is that rounding, and the rare large maxima are pixels
# next to saturated edges, where PIL clipped the first pass's overshoot. The other TF
# choice, antialias=False (4 taps at any scale), misses PIL by mean 7.8 (max 127) when
# shrinking china.jpg to 224 (same as antialias=True when enlarging).
# Tolerances: the measured values rounded up with margin for other CPUs / TF builds.
KERNEL_TOL = 0.01  # max, against PIL on float images
PHOTO_TOL_MEAN, PHOTO_TOL_P99 = 0.35, 1.0  # against PIL on uint8 photos
DIGIT_TOL_MEAN, DIGIT_TOL_P99 = 0.4, 5.0  # against PIL on uint8 digits (hard edges)


def china():
  datasets = pytest.importorskip('sklearn.datasets')
  return datasets.load_sample_image('china.jpg')  # (427, 640, 3) uint8, a real photo


def fashion_digits(n=3):
  if not os.path.exists(os.path.join(DEFAULT_FASHION_MNIST_DIR, 't10k-images-idx3-ubyte.gz')):
    pytest.skip(f'Fashion-MNIST not installed under {DEFAULT_FASHION_MNIST_DIR}')
  return load_fashion_mnist('test', DEFAULT_FASHION_MNIST_DIR)[0][:n]  # (n, 28, 28) uint8


def per_channel(image, transform):
  """`transform` (PIL image -> PIL image) of each channel as a float ('F') PIL image."""
  image = image[..., None] if image.ndim == 2 else image
  outs = [
    np.asarray(transform(PIL.Image.fromarray(image[..., c].astype(np.float32), 'F')))
    for c in range(image.shape[-1])
  ]
  return np.clip(np.stack(outs, -1), 0.0, 255.0).astype(np.float64)  # ours saturates too


def pil_uint8(image, transform):
  return np.asarray(transform(PIL.Image.fromarray(image)), np.float64)


def resize_to(hw):
  return lambda im: TF.resize(im, list(hw), interpolation=BICUBIC)


def stats(ours_0_1, reference_0_255):
  d = np.abs(np.asarray(ours_0_1, np.float64) * 255.0 - reference_0_255)
  return d.max(), d.mean(), np.percentile(d, 99)


def assert_kernel_is_pils(ours_0_1, reference_0_255):
  worst = stats(ours_0_1, reference_0_255)[0]
  assert worst <= KERNEL_TOL, worst


def assert_close_to_pil_uint8(ours_0_1, reference_0_255, tol_mean, tol_p99):
  _, mean, p99 = stats(ours_0_1, reference_0_255)
  assert mean <= tol_mean and p99 <= tol_p99, (mean, p99)


# ----------------------------------------------------------------------------- bicubic vs PIL


def test_bicubic_resize_recipe_matches_pil_when_shrinking_a_photo():
  image = china()
  ours = preprocess(image, 224, 0.0, 1.0, 'bicubic').numpy()
  assert_kernel_is_pils(ours, per_channel(image, resize_to((224, 224))))
  reference = pil_uint8(image, resize_to((224, 224)))
  assert_close_to_pil_uint8(ours, reference, PHOTO_TOL_MEAN, PHOTO_TOL_P99)
  # Why antialias=True: TF's 4-tap bicubic without it is far from PIL when shrinking.
  plain = tf.image.resize(tf.cast(image, tf.float32) / 255.0, (224, 224), 'bicubic').numpy()
  assert stats(np.clip(plain, 0, 1), reference)[1] > 10 * PHOTO_TOL_MEAN
  # And bicubic is not our bilinear (the test tells them apart).
  bilinear = preprocess(image, 224, 0.0, 1.0, 'bilinear').numpy()
  assert stats(bilinear, reference)[1] > 2 * PHOTO_TOL_MEAN


def test_bicubic_resize_recipe_matches_pil_when_enlarging_a_digit():
  for digit in fashion_digits():
    ours = preprocess(digit, 224, 0.0, 1.0, 'bicubic').numpy()
    assert ours.shape == (224, 224, 3)
    np.testing.assert_array_equal(ours[..., 0], ours[..., 2])  # grayscale tiled to RGB
    assert_kernel_is_pils(ours[..., :1], per_channel(digit, resize_to((224, 224))))
    reference = pil_uint8(digit, resize_to((224, 224)))
    assert_close_to_pil_uint8(ours[..., 0], reference, DIGIT_TOL_MEAN, DIGIT_TOL_P99)


def test_bicubic_fgvc_eval_matches_torchvision_resize_and_centre_crop():
  eval_transform = T.Compose([T.Resize(248, interpolation=BICUBIC), T.CenterCrop(224)])
  image = china()
  for img in (image, np.ascontiguousarray(image.transpose(1, 0, 2))):  # landscape, portrait
    ours = fgvc_eval_image(tf.constant(img), 224, 248, 'bicubic').numpy()
    assert_kernel_is_pils(ours, per_channel(img, eval_transform))
    reference = pil_uint8(img, eval_transform)
    assert_close_to_pil_uint8(ours, reference, PHOTO_TOL_MEAN, PHOTO_TOL_P99)


def crop_box(image, seed):
  """The box random_resized_crop draws for `seed` (the library's own box: what is tested
  here is the resize of that box)."""
  begin, size = augment.crop_box(image, seed)
  return begin.numpy(), size.numpy()


def test_bicubic_random_resized_crop_matches_pil_on_the_same_box():
  image = china()
  for s in range(3):
    seed = tf.constant([s, 11], tf.int64)
    (top, left, _), (h, w, _) = crop_box(image, seed)

    def crop(im, top=top, left=left, h=h, w=w):
      # timm's RandomResizedCropAndInterpolation: F.resized_crop = PIL crop, then resize.
      return TF.resized_crop(im, top, left, h, w, [64, 64], BICUBIC)

    ours = augment.random_resized_crop(tf.constant(image), seed, 64, 'bicubic').numpy() / 255.0
    assert_kernel_is_pils(ours, per_channel(image, crop))
    assert_close_to_pil_uint8(ours, pil_uint8(image, crop), PHOTO_TOL_MEAN, PHOTO_TOL_P99)


def test_bicubic_output_stays_in_range():
  # The cubic kernel overshoots at sharp edges; PIL saturates, so do we.
  image = np.zeros((20, 20, 3), np.uint8)
  image[:, 10:] = 255
  out = preprocess(image, 57, 0.0, 1.0, 'bicubic').numpy()
  assert out.min() == 0.0 and out.max() == 1.0
  raw = tf.image.resize(tf.constant(image, tf.float32) / 255.0, (57, 57), 'bicubic', antialias=True)
  assert raw.numpy().max() > 1.0  # the clip is needed


# ----------------------------------------------------------------------------- 'random'


def noise(h=40, w=60, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


RANDOM_FNS = {
  'fgvc_train_image': lambda x, seed, m: fgvc_train_image(x, seed, 16, m),
  'supcon_augment': lambda x, seed, m: augment.supcon_augment(
    tf.cast(x, tf.float32) / 255.0, seed, 16, m
  ),
  'preprocess': lambda x, seed, m: preprocess(x, 16, 0.0, 1.0, m, seed),
}


@pytest.mark.parametrize('name', sorted(RANDOM_FNS))
def test_random_picks_bilinear_or_bicubic_per_image(name):
  fn = RANDOM_FNS[name]
  image = tf.constant(noise())
  picks = []
  for s in range(48):
    seed = tf.constant([s, 3], tf.int64)
    out = fn(image, seed, 'random').numpy()
    bilinear, bicubic = (fn(image, seed, m).numpy() for m in ('bilinear', 'bicubic'))
    assert not np.array_equal(bilinear, bicubic)
    is_bilinear, is_bicubic = np.array_equal(out, bilinear), np.array_equal(out, bicubic)
    assert is_bilinear != is_bicubic, s  # exactly one of the two deterministic resizes
    if name == 'preprocess':  # the others draw from their crop's sub-seed
      assert is_bicubic == bool(augment.random_is_bicubic(seed))
    np.testing.assert_array_equal(out, fn(image, seed, 'random').numpy())  # same seed, same pick
    picks.append(is_bicubic)
  assert 12 <= sum(picks) <= 36, sum(picks)  # both, about half each (binomial sd ~3.5)


def test_random_draw_is_about_fair():
  draws = [bool(augment.random_is_bicubic(tf.constant([s, 0], tf.int64))) for s in range(400)]
  assert 160 <= sum(draws) <= 240
  # int32 seeds (as tests and callers may pass) work too.
  assert isinstance(bool(augment.random_is_bicubic(tf.constant([1, 2], tf.int32))), bool)
  # Every mode keeps a flat image flat (weights sum to 1, no bias from the clip). That
  # 'random' resizes the very same box as the fixed modes is checked above: its output
  # equals one of theirs exactly.
  image = tf.constant(np.full((30, 50, 3), 77, np.uint8))
  for m in augment.INTERPOLATIONS:
    out = augment.random_resized_crop(image, tf.constant([5, 6], tf.int64), 12, m).numpy()
    np.testing.assert_allclose(out, 77.0, atol=1e-3)


def split_of(images):
  labels = np.arange(len(images))
  return memory_split('test', images, labels, len(images))


def test_random_through_the_pipeline_is_deterministic_and_resumable():
  images = np.stack([noise(24, 30, seed=i) for i in range(6)])
  train_fn, _ = ip.recipe_image_fns('fgvc', 8, 0.0, 1.0, train_interpolation='random')
  split = split_of(images)

  def batches(start_step, k):
    it = ip.train_batches(split, batch_size=2, image_fn=train_fn, seed=7, start_step=start_step)
    return [next(it) for _ in range(k)]

  full = batches(0, 7)  # 3 steps per epoch: crosses two epoch boundaries
  again = batches(0, 7)
  resumed = batches(4, 3)
  for a, b in zip(full, again):
    np.testing.assert_array_equal(a['image'], b['image'])
  for a, b in zip(full[4:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  # The SupCon views: same seed, same views; 'random' differs from all-bilinear somewhere.
  views = {
    m: next(
      ip.two_view_batches(
        split, batch_size=6, image_size=8, mean=0.0, std=1.0, seed=3, interpolation=m
      )
    )['image']
    for m in ('random', 'bilinear', 'bicubic')
  }
  again = next(
    ip.two_view_batches(
      split, batch_size=6, image_size=8, mean=0.0, std=1.0, seed=3, interpolation='random'
    )
  )['image']
  np.testing.assert_array_equal(views['random'], again)
  per_view = [
    [np.array_equal(views['random'][i], views[m][i]) for m in ('bilinear', 'bicubic')]
    for i in range(12)
  ]
  assert all(sum(p) == 1 for p in per_view), per_view
  assert any(p[0] for p in per_view) and any(p[1] for p in per_view)


def test_invalid_interpolations_name_the_config_key():
  with pytest.raises(ValueError, match=r"data.train_interpolation='nearest'"):
    ip.recipe_image_fns('resize', 8, 0.0, 1.0, train_interpolation='nearest')
  with pytest.raises(ValueError, match=r"data.eval_interpolation='random'"):
    ip.recipe_image_fns('fgvc', 8, 0.0, 1.0, eval_interpolation='random')
  with pytest.raises(ValueError, match=r"data.select_interpolation='area'"):
    ip.two_view_batches(
      split_of(noise(8, 8)[None].repeat(2, 0)),
      batch_size=2,
      image_size=8,
      mean=0.0,
      std=1.0,
      seed=0,
      interpolation='area',
    )
  with pytest.raises(ValueError, match='needs a per-image seed'):
    preprocess(noise(), 8, 0.0, 1.0, 'random')
  with pytest.raises(ValueError, match="interpolation='random'"):
    fgvc_eval_image(tf.constant(noise()), 8, 9, 'random')  # evaluation has no seed


# ----------------------------------------------------------------------------- default = old pixels


def test_defaults_are_bilinear():
  data = experiment_config().data
  assert (data.train_interpolation, data.eval_interpolation, data.select_interpolation) == (
    'bilinear',
    'bilinear',
    'bilinear',
  )


def test_default_bilinear_gives_exactly_the_old_pixels():
  """The defaults reproduce, bit for bit, the TF calls the code made before the choice."""
  mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
  image = noise(30, 44)
  seed = tf.constant([9, 1], tf.int64)
  # 'resize' recipe: bilinear, no antialiasing, on [0, 1] floats.
  train_fn, eval_fn = ip.recipe_image_fns('resize', 16, mean, std)
  old = (tf.image.resize(tf.constant(image, tf.float32) / 255.0, (16, 16), 'bilinear') - mean) / std
  np.testing.assert_array_equal(eval_fn(tf.constant(image)).numpy(), old.numpy())
  np.testing.assert_array_equal(train_fn(tf.constant(image), seed).numpy(), old.numpy())
  # The random resized crop: bilinear, no antialiasing, on the raw crop.
  (top, left, _), (h, w, _) = crop_box(image, seed)
  crop = tf.constant(image[top : top + h, left : left + w])
  np.testing.assert_array_equal(
    augment.random_resized_crop(tf.constant(image), seed, 16).numpy(),
    tf.image.resize(crop, (16, 16), method='bilinear').numpy(),
  )
  # FGVC eval: shorter side 18 (30x44 -> 18x26), antialiased bilinear, centre crop 16.
  _, fgvc_eval = ip.recipe_image_fns('fgvc', 16, mean, std, resize_size=18)
  resized = tf.image.resize(tf.constant(image), (18, 26), method='bilinear', antialias=True)
  old = (tf.clip_by_value(resized[1:17, 5:21] / 255.0, 0.0, 1.0) - mean) / std
  np.testing.assert_array_equal(fgvc_eval(tf.constant(image)).numpy(), old.numpy())
