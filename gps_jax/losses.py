"""Losses: supervised contrastive (selection) and cross-entropy (fine-tuning)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """Divides `x` by its L2 norm along `axis` (as torch.nn.functional.normalize)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(norm, eps)


def supcon_loss(
  features: jax.Array, labels: jax.Array, temperature: float = 0.07, base_temperature: float = 0.07
) -> jax.Array:
  """Supervised contrastive loss (Khosla et al. 2020), contrast mode "all".

  Args:
    features: L2-normalised features, either (N, D) — every row is an anchor —
      or (B, V, D) with V views per image, flattened view-major (all first
      views, then all second views) as the reference implementation does.
    labels: (N,) or (B,) integer class labels.
    temperature: softmax temperature τ.
    base_temperature: the loss is scaled by τ / base_temperature (1 by default).

  Returns:
    The mean over anchors that have at least one positive (another sample of
    the same class) of  -1/|P(i)| Σ_{p∈P(i)} log softmax_{a≠i}(z_i·z_a/τ)_p.
    Anchors without a positive are excluded; 0 if no anchor has one.
  """
  if features.ndim == 3:
    b, v, d = features.shape
    features = jnp.swapaxes(features, 0, 1).reshape(v * b, d)
    labels = jnp.tile(labels, v)
  elif features.ndim != 2:
    raise ValueError(f'supcon_loss: features must be (N, D) or (B, V, D), got {features.shape}')
  n = features.shape[0]
  if labels.shape != (n,):
    raise ValueError(f'supcon_loss: labels shape {labels.shape} does not match {n} features')
  features = features.astype(jnp.float32)
  logits = features @ features.T / temperature
  self_mask = jnp.eye(n, dtype=bool)
  # log-sum-exp over every other sample (the anchor itself is excluded).
  logits_others = jnp.where(self_mask, -jnp.inf, logits)
  log_denominator = jax.nn.logsumexp(logits_others, axis=1, keepdims=True)
  log_prob = logits - log_denominator
  positives = (labels[:, None] == labels[None, :]) & ~self_mask
  num_pos = positives.sum(axis=1)
  sum_log_prob_pos = jnp.sum(jnp.where(positives, log_prob, 0.0), axis=1)
  has_pos = num_pos > 0
  mean_log_prob_pos = sum_log_prob_pos / jnp.maximum(num_pos, 1)
  per_anchor = -(temperature / base_temperature) * mean_log_prob_pos
  num_anchors = has_pos.sum()
  return jnp.sum(jnp.where(has_pos, per_anchor, 0.0)) / jnp.maximum(num_anchors, 1)


def cross_entropy(
  logits: jax.Array, labels: jax.Array, num_classes: int, label_smoothing: float = 0.0
) -> jax.Array:
  """Per-example softmax cross-entropy against (optionally smoothed) one-hot labels.

  `labels` are integer classes (B,) or already soft targets (B, num_classes)
  (mixup/cutmix); smoothing is applied to either.
  """
  if labels.ndim == 1:
    targets = jax.nn.one_hot(labels, num_classes)
  else:
    targets = labels
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
