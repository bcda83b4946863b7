"""Segmentation predictions and their picture: test images, ground truth and predicted masks.

`predict_masks` runs a segmentation model (SAM) with a run's parameters over a split with
the run's eval preprocessing and returns the images, the ground-truth masks and the
predicted masks (logits > 0 after the bilinear upsampling of `gps_jax.tasks`);
`overlay_figure` draws one row per image: the image, the ground truth, then each model's
prediction, each mask overlaid in colour with its Dice in the title.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import matplotlib
import ml_collections
import numpy as np
from matplotlib.figure import Figure

from gps_jax import seg_metrics
from gps_jax import tree as tree_lib
from gps_jax.tasks import upsample_logits

matplotlib.use('Agg')

GT_COLOUR = (0.1, 0.9, 0.2)  # green
PRED_COLOUR = (1.0, 0.85, 0.0)  # yellow
ALPHA = 0.45


def predict_masks(
  config: ml_collections.ConfigDict,
  model,
  params: Mapping[str, Any],
  batches,
  limit: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(images float32 [N, S, S, 3] in [0, 1], targets bool [N, S, S], predictions bool
  [N, S, S]) of the flat `params` on the eval `batches` (padding left out); `limit` > 0
  stops after that many images."""
  variables = {'params': tree_lib.unflat({p: np.asarray(v) for p, v in params.items()})}

  @jax.jit
  def masks(variables, images):
    logits = model.apply(variables, images, train=False)[0]
    return upsample_logits(logits, images.shape[1:3]) > 0

  mean = np.asarray(config.model.mean, np.float32)
  std = np.asarray(config.model.std, np.float32)
  images, targets, preds = [], [], []
  for batch in batches:
    keep = np.asarray(batch['mask'], bool)
    images.append(np.clip(np.asarray(batch['image'])[keep] * std + mean, 0.0, 1.0))
    targets.append(np.asarray(batch['label'])[keep] > 0)
    preds.append(np.asarray(masks(variables, batch['image']))[keep])
    if limit and sum(len(i) for i in images) >= limit:
      break
  n = limit or None
  return np.concatenate(images)[:n], np.concatenate(targets)[:n], np.concatenate(preds)[:n]


def _overlay(image: np.ndarray, mask: np.ndarray, colour) -> np.ndarray:
  out = image.copy()
  out[mask] = (1 - ALPHA) * out[mask] + ALPHA * np.asarray(colour, np.float32)
  return out


def overlay_figure(
  images: np.ndarray,
  targets: np.ndarray,
  predictions: Mapping[str, np.ndarray],
  title: str = '',
  order: Sequence[str] | None = None,
) -> Figure:
  """One row per image: the image, its ground truth (green) and each model's prediction
  (yellow; {name: [N, S, S] bool}), with the per-image Dice of each prediction."""
  names = list(order or predictions)
  rows, cols = len(images), 2 + len(names)
  fig = Figure(figsize=(2.1 * cols, 2.1 * rows + (0.4 if title else 0)), dpi=100)
  axes = fig.subplots(rows, cols, squeeze=False)
  for i in range(rows):
    panels = [('image', images[i]), ('ground truth', _overlay(images[i], targets[i], GT_COLOUR))]
    for name in names:
      dice = seg_metrics.dice(predictions[name][i], targets[i])
      panels.append((f'{name}: Dice {dice:.2f}', _overlay(images[i], predictions[name][i], PRED_COLOUR)))
    for ax, (label, picture) in zip(axes[i], panels):
      ax.imshow(picture, interpolation='nearest')
      ax.set_title(label, fontsize=8)
      ax.set_xticks([])
      ax.set_yticks([])
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return fig
