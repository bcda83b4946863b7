"""What a model's outputs are trained and evaluated against: the task of a run.

The trainer (`gps_jax.trainer.MaskedFinetuner`) is the same for every task; a task says

* ``loss(outputs, batch)`` — the training loss (a scalar) and the training metrics of a
  step, from the model's outputs (the first element of what it returns) and the batch
  ('label': the class per image, or soft targets after mixup; the mask per image for
  segmentation; 'hard_label' where mixup replaced 'label');
* ``eval_sums(outputs, batch)`` — per metric, the sum over the batch's real examples
  (the padding has ``batch['mask']`` False) and their count: evaluation adds them over
  the batches and divides once;
* ``metric`` — the metric an evaluation reports first (and the run's headline).

`Classification` is cross-entropy and top-1 accuracy. `Segmentation` is the original
GPS SAM experiment's loss — BCE with logits plus SAM-Adapter's soft IoU, on the mask
logits upsampled bilinearly to the target's size as SAM's ``postprocess_masks`` does —
and per-image Dice and IoU of the logits > 0 (`gps_jax.seg_metrics`), averaged over
images (mDice, mIoU).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from gps_jax.losses import cross_entropy
from gps_jax.seg_metrics import bce_iou_loss


@dataclasses.dataclass(frozen=True)
class Classification:
  num_classes: int
  label_smoothing: float = 0.0
  metric: str = 'accuracy'

  def loss(self, outputs, batch):
    logits = outputs[0]
    soft = batch['label'].ndim == 2  # mixup's targets carry their own smoothing
    loss = cross_entropy(logits, batch['label'], self.num_classes, 0.0 if soft else self.label_smoothing)
    hard = batch.get('hard_label', batch['label'])
    return loss.mean(), {'accuracy': jnp.mean(logits.argmax(-1) == hard)}

  def eval_sums(self, outputs, batch):
    valid = batch.get('mask', jnp.ones(batch['label'].shape, bool))
    correct = (outputs[0].argmax(-1) == batch['label']) & valid
    return {'accuracy': (correct.sum(), valid.sum())}


def upsample_logits(logits: jax.Array, size: tuple[int, int]) -> jax.Array:
  """[B, h, w] mask logits resized bilinearly to [B, *size] (half-pixel centres, no
  antialiasing: ``F.interpolate(mode='bilinear', align_corners=False)`` for upsampling)."""
  if logits.shape[1:] == tuple(size):
    return logits
  return jax.image.resize(logits, (logits.shape[0], *size), 'linear', antialias=False)


def _dice_iou(pred: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-image Dice and IoU of boolean [B, H, W] masks (1 where both are empty)."""
  p, t = pred.astype(jnp.float32), target.astype(jnp.float32)
  inter = (p * t).sum((1, 2))
  total = p.sum((1, 2)) + t.sum((1, 2))
  union = total - inter
  dice = jnp.where(total > 0, 2 * inter / jnp.maximum(total, 1), 1.0)
  iou = jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0)
  return dice, iou


@dataclasses.dataclass(frozen=True)
class Segmentation:
  metric: str = 'dice'

  def loss(self, outputs, batch):
    target = batch['label']
    logits = upsample_logits(outputs[0], target.shape[1:])
    dice, _ = _dice_iou(logits > 0, target > 0)
    return bce_iou_loss(logits, target.astype(jnp.float32)), {'dice': dice.mean()}

  def eval_sums(self, outputs, batch):
    target = batch['label'] > 0
    valid = batch.get('mask', jnp.ones(target.shape[:1], bool))
    dice, iou = _dice_iou(upsample_logits(outputs[0], target.shape[1:]) > 0, target)
    n = valid.sum()
    return {'dice': (jnp.where(valid, dice, 0).sum(), n), 'iou': (jnp.where(valid, iou, 0).sum(), n)}


# The task of a model family's output (`gps_jax.models.registry.Family.task`).
KINDS = ('classification', 'segmentation')


def make(kind: str, num_classes: int = 0, label_smoothing: float = 0.0):
  """The task a model of output kind `kind` is trained and evaluated on."""
  if kind == 'segmentation':
    return Segmentation()
  if kind == 'classification':
    return Classification(num_classes, label_smoothing)
  raise ValueError(f'unknown task {kind!r}; use one of {", ".join(KINDS)}')
