"""Tests of gps_jax.losses against float64 NumPy references written from the definitions."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gps_jax.losses import cross_entropy, l2_normalize
from gps_jax.losses import supcon_loss as _supcon_loss

# Jitted once per shape and temperature: far fewer compilations than op by op.
supcon_loss = jax.jit(_supcon_loss, static_argnums=(2, 3))


# ----------------------------------------------------------------------------
# Independent references
# ----------------------------------------------------------------------------
def supcon_ref(z, labels, tau=0.07, base_tau=0.07, stable=True):
  """SupCon (Khosla et al. 2020), contrast mode 'all', written from the definition.

  For anchor i with positives P(i) = {p != i : y_p = y_i}:
      l_i = -(tau / base_tau) / |P(i)| * sum_{p in P(i)} log( exp(z_i.z_p/tau) /
                                                             sum_{a != i} exp(z_i.z_a/tau) )
  The loss is the mean of l_i over the anchors with |P(i)| > 0 (0 if there is none).
  `stable` computes the log of the denominator as a float64 log-sum-exp.
  """
  z = np.asarray(z, np.float64)
  labels = np.asarray(labels)
  n = z.shape[0]
  total, anchors = 0.0, 0
  for i in range(n):
    others = [a for a in range(n) if a != i]
    positives = [p for p in others if labels[p] == labels[i]]
    if not positives:
      continue
    s = np.array([z[i] @ z[a] / tau for a in others])
    if stable:
      m = s.max()
      log_den = m + math.log(np.exp(s - m).sum())
    else:
      log_den = math.log(np.exp(s).sum())
    terms = [z[i] @ z[p] / tau - log_den for p in positives]
    total += -(tau / base_tau) * sum(terms) / len(positives)
    anchors += 1
  return total / anchors if anchors else 0.0


def normalized(rng, n, d):
  x = rng.normal(size=(n, d))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def log_softmax_ref(x):
  x = np.asarray(x, np.float64)
  m = x.max(axis=-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


# ----------------------------------------------------------------------------
# The reference itself on hand-computed cases (so that it can be trusted)
# ----------------------------------------------------------------------------
def test_reference_on_hand_computed_case():
  # a = b = e1 (class 0), c = e2 (class 1), tau = base = 1:
  # anchor a: positives {b}: -log(e^1 / (e^1 + e^0)) = log(1 + e^-1); same for b;
  # c has no positive and is excluded.
  z = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  expected = math.log(1 + math.exp(-1))
  assert supcon_ref(z, [0, 0, 1], 1.0, 1.0) == pytest.approx(expected, rel=1e-12)
  assert supcon_ref(z, [0, 0, 1], 1.0, 1.0, stable=False) == pytest.approx(expected, rel=1e-12)


# ----------------------------------------------------------------------------
# supcon_loss
# ----------------------------------------------------------------------------
def test_supcon_hand_computed():
  z = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  got = supcon_loss(z, jnp.array([0, 0, 1]), temperature=1.0, base_temperature=1.0)
  np.testing.assert_allclose(float(got), math.log(1 + math.exp(-1)), rtol=1e-6)
  # Two samples of one class: the only other sample is the positive, loss 0.
  got = supcon_loss(jnp.array([[1.0, 0.0], [0.6, 0.8]]), jnp.array([3, 3]))
  np.testing.assert_allclose(float(got), 0.0, atol=1e-6)


@pytest.mark.parametrize('tau,base', [(0.07, 0.07), (0.1, 0.07), (0.5, 1.0)])
def test_supcon_matches_reference_random(tau, base):
  rng = np.random.default_rng(0)
  z = normalized(rng, 24, 8)
  labels = rng.integers(0, 4, size=24)
  got = float(supcon_loss(jnp.asarray(z), jnp.asarray(labels), tau, base))
  want = supcon_ref(z, labels, tau, base)
  # At these temperatures the naive formula is exact too: checks the reference.
  assert want == pytest.approx(supcon_ref(z, labels, tau, base, stable=False), rel=1e-10)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # The temperature scaling tau / base_tau is applied.
  got_base1 = float(supcon_loss(jnp.asarray(z), jnp.asarray(labels), tau, tau))
  np.testing.assert_allclose(got, got_base1 * tau / base, rtol=1e-5)


def test_supcon_three_dim_is_view_major():
  rng = np.random.default_rng(1)
  b, v, d = 6, 2, 5
  z3 = normalized(rng, b * v, d).reshape(b, v, d)
  labels = np.array([0, 1, 0, 2, 1, 3])  # class 3 has one image but two views
  # View-major flattening written out by hand: all first views, then all second views.
  flat = np.stack([z3[i, j] for j in range(v) for i in range(b)])
  flat_labels = np.array([labels[i] for j in range(v) for i in range(b)])
  got3 = float(supcon_loss(jnp.asarray(z3), jnp.asarray(labels)))
  got2 = float(supcon_loss(jnp.asarray(flat), jnp.asarray(flat_labels)))
  np.testing.assert_allclose(got3, got2, rtol=1e-6)
  np.testing.assert_allclose(got3, supcon_ref(flat, flat_labels), rtol=1e-5)
  # The image-major order is a different problem here (it pairs other samples):
  # the test would catch a wrong flattening only if the two orders differ.
  image_major = z3.reshape(b * v, d)
  assert abs(supcon_ref(image_major, flat_labels) - supcon_ref(flat, flat_labels)) > 1e-3


def test_supcon_singletons_excluded_but_in_denominator():
  rng = np.random.default_rng(2)
  z = normalized(rng, 9, 6)
  labels = np.array([0, 0, 1, 1, 1, 2, 2, 0, 1])
  base = float(supcon_loss(jnp.asarray(z), jnp.asarray(labels)))
  np.testing.assert_allclose(base, supcon_ref(z, labels), rtol=1e-5)

  # Add one sample of a new class: it is no anchor (no positive) but it is a
  # negative in every other anchor's denominator, so the loss changes exactly
  # as the reference says.
  extra = normalized(np.random.default_rng(3), 1, 6)
  z2 = np.concatenate([z, extra])
  labels2 = np.append(labels, 7)
  with_single = float(supcon_loss(jnp.asarray(z2), jnp.asarray(labels2)))
  want = supcon_ref(z2, labels2)
  np.testing.assert_allclose(with_single, want, rtol=1e-5)
  assert abs(with_single - base) > 1e-4  # the singleton does change the loss
  # Counting the singleton as an anchor with a zero term would give 9/10 of it.
  assert abs(with_single - want * 9 / 10) > 1e-3


def test_supcon_all_singletons_is_zero():
  rng = np.random.default_rng(4)
  z = normalized(rng, 5, 4)
  got = supcon_loss(jnp.asarray(z), jnp.arange(5))
  assert np.isfinite(float(got))
  assert float(got) == 0.0
  assert supcon_ref(z, np.arange(5)) == 0.0
  g = jax.jit(jax.grad(lambda f: supcon_loss(f, jnp.arange(5))))(jnp.asarray(z))
  assert np.all(np.isfinite(np.asarray(g)))


def test_supcon_numerically_stable_small_temperature():
  rng = np.random.default_rng(5)
  # Unnormalised features of norm ~10: dot products ~100, logits ~1e4 at tau 0.01;
  # exp overflows float32 (and float64 above ~709) without a log-sum-exp.
  z = (normalized(rng, 12, 6) * 10.0).astype(np.float32)
  labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 3, 4])
  tau = 0.01
  with np.errstate(over='ignore', divide='ignore', invalid='ignore'):
    naive = supcon_ref(z, labels, tau, 0.07, stable=False)
  assert not np.isfinite(naive)  # the problem really is unstable
  want = supcon_ref(z, labels, tau, 0.07)
  got = float(supcon_loss(jnp.asarray(z), jnp.asarray(labels), tau, 0.07))
  assert np.isfinite(got)
  np.testing.assert_allclose(got, want, rtol=1e-4)

  # Normalised features at tau 0.01 (logits up to 100).
  zn = normalized(rng, 12, 6)
  got = float(supcon_loss(jnp.asarray(zn), jnp.asarray(labels), tau, 0.07))
  np.testing.assert_allclose(got, supcon_ref(zn, labels, tau, 0.07), rtol=1e-5)


def test_supcon_gradient_finite_and_matches_finite_differences():
  rng = np.random.default_rng(6)
  labels = np.array([0, 1, 0, 1, 2, 3])  # 2 and 3 singletons
  z = (normalized(rng, 6, 4) * 10.0).astype(np.float32)
  g = jax.grad(lambda f: supcon_loss(f, jnp.asarray(labels), 0.01, 0.07))(jnp.asarray(z))
  assert np.all(np.isfinite(np.asarray(g)))

  # Central differences of the float64 reference at a moderate temperature.
  zs = normalized(rng, 6, 4).astype(np.float64)
  tau = 0.2
  g = np.asarray(
    jax.grad(lambda f: supcon_loss(f, jnp.asarray(labels), tau, 0.07))(
      jnp.asarray(zs, jnp.float32)
    ),
    np.float64,
  )
  eps = 1e-6
  num = np.zeros_like(zs)
  for idx in np.ndindex(zs.shape):
    zp, zm = zs.copy(), zs.copy()
    zp[idx] += eps
    zm[idx] -= eps
    num[idx] = (supcon_ref(zp, labels, tau, 0.07) - supcon_ref(zm, labels, tau, 0.07)) / (2 * eps)
  np.testing.assert_allclose(g, num, rtol=1e-3, atol=1e-4)
  # Singleton rows still get a gradient (they are negatives of other anchors).
  assert np.abs(num[4]).max() > 1e-3


def test_supcon_rejects_bad_shapes():
  with pytest.raises(ValueError):
    supcon_loss(jnp.zeros((2, 3, 4, 5)), jnp.zeros((2,), jnp.int32))
  with pytest.raises(ValueError):
    supcon_loss(jnp.zeros((4, 3)), jnp.zeros((5,), jnp.int32))


def test_l2_normalize():
  x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-3, 0.0]], np.float32)
  got = np.asarray(l2_normalize(jnp.asarray(x)))
  np.testing.assert_allclose(got, [[0.6, 0.8], [0.0, 0.0], [1.0, 0.0]], rtol=1e-6)


# ----------------------------------------------------------------------------
# cross_entropy
# ----------------------------------------------------------------------------
def ce_ref(logits, targets, smoothing):
  """-sum_c t_c log softmax(x)_c with t = (1 - a) * target + a / C."""
  logits = np.asarray(logits, np.float64)
  c = logits.shape[-1]
  t = np.asarray(targets)
  t = np.eye(c)[t] if t.ndim == 1 else t.astype(np.float64)
  t = (1 - smoothing) * t + smoothing / c
  return -(t * log_softmax_ref(logits)).sum(-1)


@pytest.mark.parametrize('smoothing', [0.0, 0.1, 0.3])
def test_cross_entropy_hard_labels(smoothing):
  rng = np.random.default_rng(7)
  logits = rng.normal(size=(8, 5)).astype(np.float32) * 3
  labels = rng.integers(0, 5, size=8)
  got = np.asarray(cross_entropy(jnp.asarray(logits), jnp.asarray(labels), 5, smoothing))
  assert got.shape == (8,)
  np.testing.assert_allclose(got, ce_ref(logits, labels, smoothing), rtol=1e-5, atol=1e-6)


def test_cross_entropy_hand_value():
  # Uniform logits over 4 classes: log 4 whatever the (smoothed) target.
  got = cross_entropy(jnp.zeros((1, 4)), jnp.array([2]), 4, 0.1)
  np.testing.assert_allclose(np.asarray(got), [math.log(4)], rtol=1e-6)
  # logits (0, log 3): p = (1/4, 3/4); label 1 smoothed by 0.2 over 2 classes:
  # t = (0.1, 0.9); CE = -0.1 log(1/4) - 0.9 log(3/4).
  got = cross_entropy(jnp.array([[0.0, math.log(3.0)]]), jnp.array([1]), 2, 0.2)
  want = -0.1 * math.log(0.25) - 0.9 * math.log(0.75)
  np.testing.assert_allclose(np.asarray(got), [want], rtol=1e-6)


def test_cross_entropy_soft_targets():
  rng = np.random.default_rng(8)
  logits = rng.normal(size=(6, 4)).astype(np.float32)
  t = rng.random(size=(6, 4))
  t = (t / t.sum(-1, keepdims=True)).astype(np.float32)
  for smoothing in (0.0, 0.1):
    got = np.asarray(cross_entropy(jnp.asarray(logits), jnp.asarray(t), 4, smoothing))
    np.testing.assert_allclose(got, ce_ref(logits, t, smoothing), rtol=1e-5, atol=1e-6)
