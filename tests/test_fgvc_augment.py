"""Tests for gps_jax.data.fgvc_augment: FGVC train/eval transforms and mixup/cutmix."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow as tf  # Imported at collection so no test pays the import.

from gps_jax.data.fgvc_augment import fgvc_eval_image, fgvc_train_image
from gps_jax.mixup import mix_batch

# ----------------------------------------------------------------------------- train image


def horizontal_ramp(h=120, w=160):
  ramp = np.round(np.linspace(0, 255, w)).astype(np.uint8)
  return np.broadcast_to(ramp[None, :, None], (h, w, 3)).copy()


def train(image, seed, size=32):
  return fgvc_train_image(tf.constant(image), tf.constant(seed, tf.int32), size).numpy()


def test_train_image_shape_range_and_determinism():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)
  out = train(image, [3, 4])
  assert out.shape == (32, 32, 3) and out.dtype == np.float32
  assert out.min() >= 0.0 and out.max() <= 1.0
  np.testing.assert_array_equal(out, train(image, [3, 4]))
  assert not np.array_equal(out, train(image, [3, 5]))
  # uint8 is rescaled to [0, 1]: a white image stays exactly white.
  white = np.full((50, 70, 3), 255, np.uint8)
  np.testing.assert_allclose(train(white, [1, 2]), 1.0, atol=1e-6)


def test_train_image_flips_for_some_seeds():
  image = horizontal_ramp()
  signs, outputs = [], []
  for s in range(20):
    out = train(image, [s, 7])
    outputs.append(out)
    signs.append(np.sign(np.mean(np.diff(out[..., 0], axis=1))))
  assert 1.0 in signs and -1.0 in signs
  assert len({o.tobytes() for o in outputs}) == 20


def test_train_image_inside_tf_data():
  image = horizontal_ramp(40, 60)
  ds = tf.data.Dataset.from_tensors(image).repeat(3).enumerate()
  ds = ds.map(lambda i, x: fgvc_train_image(x, tf.stack([i, tf.constant(0, tf.int64)]), 24))
  outs = [x.numpy() for x in ds]
  assert all(o.shape == (24, 24, 3) for o in outs)


# ----------------------------------------------------------------------------- eval image


def test_eval_image_crop_excludes_border_band():
  image = np.full((300, 400, 3), 100, np.uint8)
  image[:10] = image[-10:] = 250
  image[:, :40] = image[:, -40:] = 250
  out = fgvc_eval_image(tf.constant(image)).numpy()
  assert out.shape == (224, 224, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out, 100 / 255, atol=1e-5)
  # Portrait orientation, and non-default sizes.
  out = fgvc_eval_image(tf.constant(image.transpose(1, 0, 2)), 64, 80).numpy()
  assert out.shape == (64, 64, 3)
  np.testing.assert_allclose(out, 100 / 255, atol=1e-5)
  with pytest.raises(ValueError):
    fgvc_eval_image(tf.constant(image), 300, 248)


def numpy_bilinear(image, out_h, out_w):
  """Half-pixel-centre bilinear resize (no antialiasing) of a (H, W, C) float array."""
  h, w = image.shape[:2]

  def coords(n_out, n_in):
    c = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(c).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, c - lo

  y0, y1, fy = coords(out_h, h)
  x0, x1, fx = coords(out_w, w)
  fy, fx = fy[:, None, None], fx[None, :, None]
  top = image[y0][:, x0] * (1 - fx) + image[y0][:, x1] * fx
  bottom = image[y1][:, x0] * (1 - fx) + image[y1][:, x1] * fx
  return top * (1 - fy) + bottom * fy


def test_eval_image_matches_numpy_resize_and_centre_crop():
  y, x = np.mgrid[0:300, 0:400].astype(np.float64)
  smooth = 0.5 + 0.2 * np.sin(2 * np.pi * x / 200) + 0.2 * np.cos(2 * np.pi * y / 150)
  image = np.stack([smooth, 1 - smooth, smooth**2], -1).astype(np.float32)
  out = fgvc_eval_image(tf.constant(image)).numpy()
  # Shorter side 300 -> 248, longer 400 -> int(248 * 400 / 300) = 330; crop offsets
  # round((248 - 224) / 2) = 12 and round((330 - 224) / 2) = 53.
  expected = numpy_bilinear(image.astype(np.float64), 248, 330)[12:236, 53:277]
  np.testing.assert_allclose(out, expected, atol=3e-3)  # Antialiasing: ~1.4e-3.
  # A one-pixel shift of the crop is detectably worse.
  shifted = numpy_bilinear(image.astype(np.float64), 248, 330)[12:236, 54:278]
  assert np.abs(out - shifted).max() > 8e-3


# ----------------------------------------------------------------------------- mix_batch

B, H, W, C, K = 8, 16, 20, 3, 10
# Only the class count and the alphas are static; prob, switch_prob and label_smoothing are
# always passed, so they are traced. Compiling the Beta sampler takes seconds on CPU, so the
# tests share few compilations (and avoid op-by-op eager calls, which compile too).
_mix_jit = jax.jit(mix_batch, static_argnames=('num_classes', 'mixup_alpha', 'cutmix_alpha'))


def mix(key, images, labels, mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, label_smoothing=0.0):
  return _mix_jit(
    key,
    images,
    labels,
    num_classes=K,
    mixup_alpha=mixup_alpha,
    cutmix_alpha=cutmix_alpha,
    switch_prob=0.5,
    prob=prob,
    label_smoothing=label_smoothing,
  )


@pytest.fixture(scope='module')
def batch():
  rng = np.random.default_rng(1)
  images = jnp.asarray(rng.uniform(size=(B, H, W, C)).astype(np.float32))
  labels = jnp.asarray(np.arange(B) + 1)  # All distinct, so y != y.flip(0) for every row.
  return images, labels


def lam_per_row(targets, labels):
  t = np.asarray(targets)
  lab = np.asarray(labels)
  lam = t[np.arange(B), lab]
  np.testing.assert_allclose(t[np.arange(B), lab[::-1]], 1 - lam, atol=1e-6)
  np.testing.assert_allclose(lam, lam[0], atol=1e-6)  # One lam for the whole batch.
  return float(lam[0])


def test_targets_are_distributions_with_smoothing(batch):
  images, labels = batch
  for seed in range(10):
    _, t = mix(jax.random.PRNGKey(seed), images, labels, label_smoothing=0.1)
    assert t.shape == (B, K) and t.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(t).sum(1), 1.0, atol=1e-6)
    assert np.asarray(t).min() >= 0.1 / K - 1e-7
    # Smoothing each one-hot before mixing == optax.smooth_labels after mixing.
    _, t0 = mix(jax.random.PRNGKey(seed), images, labels)
    np.testing.assert_allclose(t, optax.smooth_labels(t0, 0.1), atol=1e-6)


def test_mixup_pixels_are_lam_blend(batch):
  images, labels = batch
  x, xf = np.asarray(images), np.asarray(images)[::-1]
  lams = []
  for seed in range(5):
    out, t = mix(jax.random.PRNGKey(seed), images, labels, cutmix_alpha=0.0)
    lam = lam_per_row(t, labels)
    lams.append(lam)
    assert 0.0 < lam < 1.0
    np.testing.assert_allclose(out, lam * x + (1 - lam) * xf, atol=1e-6)
  assert len(set(lams)) == 5


def test_cutmix_pixels_come_from_a_box_of_area_one_minus_lam(batch):
  images, labels = batch
  x, xf = np.asarray(images), np.asarray(images)[::-1]
  fractions = []
  for seed in range(20):
    out, t = mix(jax.random.PRNGKey(seed), images, labels, mixup_alpha=0.0)
    out = np.asarray(out)
    lam = lam_per_row(t, labels)
    from_x = np.all(out == x, axis=-1)
    from_f = np.all(out == xf, axis=-1)
    assert np.all(from_x | from_f)
    assert np.all(from_f == from_f[0])  # The same box for every image.
    box = from_f[0]
    np.testing.assert_allclose(box.mean(), 1 - lam, atol=1e-6)
    if box.any():  # A solid rectangle.
      rows, cols = np.flatnonzero(box.any(1)), np.flatnonzero(box.any(0))
      assert box[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()
      assert box.sum() == len(rows) * len(cols)
    fractions.append(box.mean())
  assert len(set(fractions)) > 5


def test_switch_between_mixup_and_cutmix(batch):
  images, labels = batch
  x, xf = np.asarray(images), np.asarray(images)[::-1]
  kinds = set()
  for seed in range(20):
    out, _ = mix(jax.random.PRNGKey(seed), images, labels)
    out = np.asarray(out)
    is_cut = np.all((out == x) | (out == xf))
    kinds.add('cutmix' if is_cut else 'mixup')
  assert kinds == {'cutmix', 'mixup'}


def test_prob_zero_is_identity_with_smoothed_one_hot(batch):
  images, labels = batch
  out, t = mix(jax.random.PRNGKey(0), images, labels, prob=0.0, label_smoothing=0.1)
  np.testing.assert_array_equal(out, images)
  expected = np.full((B, K), 0.01, np.float32)
  expected[np.arange(B), np.asarray(labels)] = 0.91
  np.testing.assert_allclose(t, expected, atol=1e-7)
  # Both alphas zero also disables mixing.
  out, t = mix_batch(jax.random.PRNGKey(0), images, labels, K, mixup_alpha=0.0, cutmix_alpha=0.0)
  np.testing.assert_array_equal(out, images)
  np.testing.assert_array_equal(t, jax.nn.one_hot(labels, K))


def test_jit_and_determinism(batch):
  images, labels = batch
  for seed in range(4):
    key = jax.random.PRNGKey(seed)
    out_1, t_1 = mix(key, images, labels, label_smoothing=0.1)
    out_2, t_2 = mix(key, images, labels, label_smoothing=0.1)
    np.testing.assert_array_equal(out_1, out_2)
    np.testing.assert_array_equal(t_1, t_2)
  out_a, _ = mix(jax.random.PRNGKey(0), images, labels)
  out_b, _ = mix(jax.random.PRNGKey(1), images, labels)
  assert not np.array_equal(out_a, out_b)


def test_integer_images_are_cast_and_bad_rank_rejected(batch):
  _, labels = batch
  images = jnp.full((B, H, W, C), 7, jnp.uint8)
  out, _ = mix_batch(jax.random.PRNGKey(0), images, labels, K, mixup_alpha=0.0, cutmix_alpha=0.0)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, 7.0, atol=1e-5)
  with pytest.raises(ValueError):
    mix_batch(jax.random.PRNGKey(0), images[0], labels, K)
