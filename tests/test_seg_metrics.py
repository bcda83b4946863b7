"""Tests of gps_jax.seg_metrics: Dice / IoU conventions, per-image means, and bce_iou_loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gps_jax import seg_metrics as sm


def enable_x64():
  """float64 JAX inside a `with` block only."""
  if hasattr(jax, 'enable_x64'):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64 as legacy  # older JAX

  return legacy()


B = np.array
loss_fn = jax.jit(sm.bce_iou_loss)
grad_fn = jax.jit(jax.grad(sm.bce_iou_loss))


# ----------------------------------------------------------------------------- dice / iou


def test_dice_and_iou_hand_computed():
  p = B([[1, 1], [0, 0]], bool)
  t = B([[1, 0], [1, 0]], bool)  # |P ∩ T| = 1, |P| = |T| = 2, |P ∪ T| = 3
  assert sm.dice(p, t) == pytest.approx(0.5)
  assert sm.iou(p, t) == pytest.approx(1 / 3)
  p = B([[1, 1, 1], [1, 1, 0], [0, 0, 0]], bool)  # 5 pixels
  t = B([[0, 1, 1], [0, 1, 1], [0, 0, 0]], bool)  # 4 pixels, 3 shared, union 6
  assert sm.dice(p, t) == pytest.approx(6 / 9)
  assert sm.iou(p, t) == pytest.approx(3 / 6)
  assert sm.dice(p, p) == sm.iou(p, p) == 1.0
  assert sm.dice(p, ~p) == sm.iou(p, ~p) == 0.0
  assert isinstance(sm.dice(p, t), float)


def test_empty_conventions():
  empty, some = np.zeros((3, 3), bool), np.eye(3, dtype=bool)
  assert sm.dice(empty, empty) == 1.0 and sm.iou(empty, empty) == 1.0
  for a, b in ((empty, some), (some, empty)):
    assert sm.dice(a, b) == 0.0 and sm.iou(a, b) == 0.0


def test_batch_is_per_image_and_mean_is_not_pooled():
  big = np.zeros((20, 20), bool)
  big[:10, :10] = True  # 100 pixels, predicted perfectly
  small_t = np.zeros((20, 20), bool)
  small_t[15, 15] = True
  small_p = np.zeros((20, 20), bool)
  small_p[18, 18] = True  # one pixel, missed
  preds, targets = np.stack([big, small_p]), np.stack([big, small_t])
  np.testing.assert_allclose(sm.dice(preds, targets), [1.0, 0.0])
  np.testing.assert_allclose(sm.iou(preds, targets), [1.0, 0.0])
  assert sm.mean_dice(preds, targets) == pytest.approx(0.5)
  assert sm.mean_iou(preds, targets) == pytest.approx(0.5)
  pooled_dice = 2 * (preds & targets).sum() / (preds.sum() + targets.sum())
  assert pooled_dice == pytest.approx(200 / 202)  # pooling would hide the missed polyp


def test_dice_iou_relation_on_random_masks_with_leading_axes():
  rng = np.random.default_rng(0)
  p = rng.random((2, 3, 8, 8)) < rng.random((2, 3, 1, 1))
  t = rng.random((2, 3, 8, 8)) < 0.3
  d, j = sm.dice(p, t), sm.iou(p, t)
  assert d.shape == j.shape == (2, 3)
  np.testing.assert_allclose(d, 2 * j / (1 + j), rtol=1e-12)
  for idx in np.ndindex(2, 3):  # each entry is the single image's value
    assert d[idx] == sm.dice(p[idx], t[idx])
  assert sm.mean_iou(p, t) == pytest.approx(j.mean())


def test_jax_arrays_and_01_integers_are_accepted():
  p = jnp.array([[True, False], [True, True]])
  t = jnp.array([[1, 0], [0, 1]], jnp.int32)
  assert sm.dice(p, t) == pytest.approx(4 / 5)
  assert sm.iou(p, t) == pytest.approx(2 / 3)


def test_bad_inputs():
  m = np.zeros((4, 4), bool)
  with pytest.raises(ValueError, match='share one shape'):
    sm.dice(m, np.zeros((4, 5), bool))
  with pytest.raises(ValueError, match='binarize logits first'):
    sm.iou(np.zeros((4, 4)), m)
  with pytest.raises(ValueError, match='bool'):
    sm.dice(np.full((4, 4), 2), m)
  with pytest.raises(ValueError, match='no images'):
    sm.mean_dice(np.zeros((0, 4, 4), bool), np.zeros((0, 4, 4), bool))


def test_binarize_at_zero():
  logits = np.array([-3.0, -1e-7, 0.0, 1e-7, 2.0])
  np.testing.assert_array_equal(sm.binarize(logits), [False, False, False, True, True])
  np.testing.assert_array_equal(sm.binarize(jnp.asarray(logits), 1.0), [0, 0, 0, 0, 1])
  assert sm.binarize(logits).dtype == bool


# ----------------------------------------------------------------------------- loss


def reference_loss(x, t):
  """float64 NumPy: BCE via softplus (log(1 + e^x) - x t) + SAM-Adapter's soft IoU."""
  x, t = np.asarray(x, np.float64), np.asarray(t, np.float64)
  bce = np.mean(np.logaddexp(0.0, x) - x * t)
  p = 1.0 / (1.0 + np.exp(-x))
  axes = tuple(range(1, x.ndim))
  inter = (p * t).sum(axes)
  union = (p + t).sum(axes) - inter
  return bce + np.mean(1.0 - inter / union)


def test_loss_hand_computed():
  x, t = jnp.zeros((1, 2, 2)), jnp.ones((1, 2, 2))  # p = 0.5: inter 2, union 4 + 2 - 2
  assert float(loss_fn(x, t)) == pytest.approx(np.log(2) + 0.5, rel=1e-6)


def test_loss_matches_float64_reference_including_large_logits():
  rng = np.random.default_rng(1)
  x = rng.normal(0, 4, (3, 1, 8, 8)).astype(np.float32)
  x[0, 0, :2] = 50.0
  x[1, 0, :2] = -50.0
  x[2, 0, 0, :3] = (90.0, -90.0, 120.0)
  t = rng.random((3, 1, 8, 8)) < 0.4
  t[0, 0, 0, :4] = (False, True, False, True)
  t[1, 0, 0, :4] = (True, False, True, False)
  with np.errstate(divide='ignore', over='ignore', invalid='ignore'):
    s = 1 / (1 + np.exp(-x))  # naive float32 BCE breaks on these logits
    naive = -(t * np.log(s) + (1 - t) * np.log(1 - s))
  assert not np.isfinite(naive).all()
  got = loss_fn(jnp.asarray(x), jnp.asarray(t))
  assert got.dtype == jnp.float32 and np.isfinite(float(got))
  assert float(got) == pytest.approx(reference_loss(x, t), rel=1e-5)
  # [B, 1, H, W] and [B, H, W] give the same loss; a bool or float target too
  got2 = loss_fn(jnp.asarray(x[:, 0]), jnp.asarray(t[:, 0], jnp.float32))
  assert float(got2) == pytest.approx(float(got), rel=1e-6)


def test_loss_empty_target_with_underflowed_sigmoid_is_zero_not_nan():
  x = jnp.full((2, 4, 4), -1000.0)
  t = jnp.zeros((2, 4, 4))
  assert float(loss_fn(x, t)) == 0.0
  assert np.isfinite(np.asarray(grad_fn(x, t))).all()


def test_loss_gradient_matches_central_difference_in_float64():
  rng = np.random.default_rng(2)
  x0 = rng.normal(0, 2, (2, 3, 3))
  x0[0, 0, 0] = 30.0  # a saturated logit
  t = (rng.random((2, 3, 3)) < 0.5).astype(np.float64)
  eps = 1e-6
  with enable_x64():
    x, tt = jnp.asarray(x0), jnp.asarray(t)
    assert x.dtype == jnp.float64
    loss = jax.jit(sm.bce_iou_loss)  # fresh: traced under x64
    grad = np.asarray(jax.jit(jax.grad(sm.bce_iou_loss))(x, tt))
    fd = np.zeros_like(x0)
    for idx in np.ndindex(x0.shape):
      step = np.zeros_like(x0)
      step[idx] = eps
      hi, lo = loss(jnp.asarray(x0 + step), tt), loss(jnp.asarray(x0 - step), tt)
      fd[idx] = (float(hi) - float(lo)) / (2 * eps)
    assert float(loss(x, tt)) == pytest.approx(reference_loss(x0, t), rel=1e-12)
  np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)
  assert jnp.zeros(1).dtype == jnp.float32  # x64 is off again
