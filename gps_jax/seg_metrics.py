"""Binary segmentation metrics (per image, then averaged) and the BCE + IoU training loss.

Metrics (NumPy, on host arrays; JAX arrays are converted with ``np.asarray``),
for a predicted mask P and a ground-truth mask T of one image:

* Dice = 2 |P ∩ T| / (|P| + |T|);  IoU = |P ∩ T| / |P ∪ T|.
* Both are 1.0 when P and T are both empty (a correct empty prediction) and
  0.0 when exactly one of them is empty.
* mDice / mIoU (`mean_dice`, `mean_iou`) are the means over images of the
  per-image values, not ratios of pixel counts pooled over the data set.
* A prediction is ``logits > 0`` (`binarize`): SAM's mask threshold is 0 on logits.

`bce_iou_loss` (JAX) is the ``loss: iou`` objective of SAM-Adapter, which the
original GPS segmentation code trains and selects with.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _masks(pred, target) -> tuple[np.ndarray, np.ndarray]:
  """Both as bool arrays of one shape [..., H, W]; rejects float (un-thresholded) input."""
  pred, target = np.asarray(pred), np.asarray(target)
  if pred.shape != target.shape or pred.ndim < 2:
    raise ValueError(
      f'masks must share one shape [..., H, W]; got pred {pred.shape}, target {target.shape}'
    )
  for name, m in (('pred', pred), ('target', target)):
    if m.dtype != bool and not (np.issubdtype(m.dtype, np.integer) and np.isin(m, (0, 1)).all()):
      raise ValueError(f'{name} must be a bool (or 0/1) mask, got {m.dtype}; binarize logits first')
  return pred.astype(bool), target.astype(bool)


def _counts(pred, target) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per-image |P ∩ T|, |P|, |T| (int64, shape [...])."""
  p, t = _masks(pred, target)
  return (p & t).sum((-2, -1)), p.sum((-2, -1)), t.sum((-2, -1))


def _per_image(values: np.ndarray) -> float | np.ndarray:
  return float(values) if values.ndim == 0 else values


def dice(pred, target) -> float | np.ndarray:
  """Per-image Dice of bool masks [..., H, W]: a float for one [H, W] mask, else [...]."""
  inter, p, t = _counts(pred, target)
  total = p + t
  return _per_image(np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0))


def iou(pred, target) -> float | np.ndarray:
  """Per-image IoU of bool masks [..., H, W]: a float for one [H, W] mask, else [...]."""
  inter, p, t = _counts(pred, target)
  union = p + t - inter
  return _per_image(np.where(union > 0, inter / np.maximum(union, 1), 1.0))


def _mean(values: float | np.ndarray) -> float:
  values = np.asarray(values, np.float64)
  if values.size == 0:
    raise ValueError('no images to average')
  return float(values.mean())


def mean_dice(preds, targets) -> float:
  """mDice: the mean over images [N, H, W] of the per-image Dice."""
  return _mean(dice(preds, targets))


def mean_iou(preds, targets) -> float:
  """mIoU: the mean over images [N, H, W] of the per-image IoU."""
  return _mean(iou(preds, targets))


def binarize(logits, threshold: float = 0.0) -> np.ndarray:
  """The predicted mask ``logits > threshold`` (bool, host array)."""
  return np.asarray(logits) > threshold


def bce_iou_loss(logits: jax.Array, target: jax.Array) -> jax.Array:
  """BCE-with-logits (mean over pixels) + soft IoU loss (mean over images).

  The ``loss: iou`` objective of SAM-Adapter-PyTorch (``models/iou_loss.py``,
  ``_iou_loss``, added to ``BCEWithLogitsLoss``): for logits x and targets t in
  {0, 1} of shape [B, ...],

    bce = mean(max(x, 0) - x t + log1p(exp(-|x|)))   (stable for any |x|)
    p = sigmoid(x); inter_b = sum p t; union_b = sum p + sum t - inter_b
    iou = mean_b(1 - inter_b / union_b)

  summed over every axis but the first per image. Only where union_b is exactly
  0 (an empty target and every sigmoid underflowed to 0, where the reference
  gives NaN) the image's IoU term is taken as 0: a perfect empty prediction.
  """
  x = jnp.asarray(logits)
  x = x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)
  t = jnp.asarray(target).astype(x.dtype)
  bce = jnp.mean(jnp.maximum(x, 0) - x * t + jnp.log1p(jnp.exp(-jnp.abs(x))))
  axes = tuple(range(1, x.ndim))
  p = jax.nn.sigmoid(x)
  inter = jnp.sum(p * t, axis=axes)
  union = jnp.sum(p, axis=axes) + jnp.sum(t, axis=axes) - inter
  safe = jnp.where(union > 0, union, 1.0)
  iou_loss = jnp.where(union > 0, 1.0 - inter / safe, 0.0)
  return bce + jnp.mean(iou_loss)
